"""docs/configuration.md and examples/config.yaml agree with the settings tree in the code.

Each setting is one table row under its section's ``## <section>`` heading:
``| `field` | type | `default` | `STREAMTRAIN_SECTION__FIELD` | read by | meaning |``, with the
default spelled as it would be in YAML.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel
from typer.core import TyperGroup

import streamtrain.cli  # noqa: F401  (registers every subcommand)
from streamtrain.cli.command import app
from streamtrain.config import Settings, load_settings
from streamtrain.sample.spec import spec_for_model
from streamtrain.train.models import build_model

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "examples" / "config.yaml"
_ROW = re.compile(r"^\|\s*`(\w+)`\s*\|[^|]*\|\s*`([^`]*)`\s*\|\s*`(STREAMTRAIN_\w+)`\s*\|")
_FLAG_ROW = re.compile(r"^\|\s*`([a-z, `]+)`\s*\|\s*`(--[a-z-]+)`")
# Variables the doc names on purpose as examples of what is refused or ignored.
_WRONG_ON_PURPOSE = [
    "STREAMTRAIN_ADMIN_TOKEN",  # read by `streamtrain admin`, not a setting
    "STREAMTRAIN_KAFKA__SASL_PASSWRD",
    "STREAMTRAIN_MODLE__NAME",
    "STREAMTRAIN_TANSU_BINARY",  # read by the embedded broker, not a setting
    "STREAMTRAIN_TEST_",
    "STREAMTRAIN_TRAIN__MAXSAMPLES",
]


@pytest.fixture(autouse=True)
def _no_streamtrain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings come from the environment too; the documented defaults are without it.
    for name in list(os.environ):
        if name.upper().startswith("STREAMTRAIN_"):
            monkeypatch.delenv(name)


def _sections() -> dict[str, type[BaseModel]]:
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        assert isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        sections[name] = field.annotation
    return sections


def _doc_rows() -> dict[tuple[str, str], tuple[str, str]]:
    """(section, field) -> (documented default, documented env var)."""
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        match = _ROW.match(line)
        if match:
            field, default, env = match.groups()
            assert (section, field) not in rows, f"{section}.{field} is documented twice"
            rows[(section, field)] = (default, env)
    return rows


def _yaml_spelling(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return str(value)
    if isinstance(value, tuple | list | dict):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return repr(value)


def test_every_setting_is_documented_with_its_env_var_and_default() -> None:
    rows = _doc_rows()
    defaults = load_settings()
    missing = []
    for section, model in _sections().items():
        for field in model.model_fields:
            if (section, field) not in rows:
                missing.append(f"{section}.{field}")
                continue
            default, env = rows[(section, field)]
            assert env == f"STREAMTRAIN_{section.upper()}__{field.upper()}", (
                f"{section}.{field}: documented env var {env} is not its name"
            )
            actual = _yaml_spelling(getattr(getattr(defaults, section), field))
            assert default == actual, (
                f"{section}.{field}: docs/configuration.md says default `{default}`, "
                f"the code's default is `{actual}`"
            )
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_every_documented_setting_exists() -> None:
    sections = _sections()
    unknown = [
        f"{section}.{field}"
        for section, field in _doc_rows()
        if section not in sections or field not in sections[section].model_fields
    ]
    assert not unknown, f"docs/configuration.md documents settings the code lacks: {unknown}"


def test_every_env_var_the_doc_names_exists() -> None:
    sections = _sections()
    wrong = []
    for name in set(re.findall(r"STREAMTRAIN_\w+", DOC.read_text())):
        section, sep, field = name.removeprefix("STREAMTRAIN_").partition("__")
        model = sections.get(section.lower())
        if not sep or model is None or field.lower() not in model.model_fields:
            wrong.append(name)
    assert sorted(wrong) == _WRONG_ON_PURPOSE, (
        f"docs/configuration.md names variables that set nothing: {sorted(wrong)}"
    )


def test_documented_flags_exist_on_their_commands() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    checked = 0
    for line in DOC.read_text().splitlines():
        match = _FLAG_ROW.match(line)
        if not match:
            continue
        commands, flag = re.findall(r"[a-z]+", match.group(1)), match.group(2)
        for name in commands:
            command = group.commands[name]
            options = {opt for param in command.params for opt in param.opts + param.secondary_opts}
            assert flag in options, f"`streamtrain {name}` has no {flag}; it has {sorted(options)}"
            checked += 1
    assert checked >= 15, f"only {checked} documented flags found; is the table's format intact?"


def test_example_config_loads_and_builds_its_model() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.kafka.security_protocol == "SASL_SSL"
    # the password is not in the file: it comes from STREAMTRAIN_KAFKA__SASL_PASSWORD
    assert settings.kafka.sasl_password is None
    assert settings.train.autocast == "off"
    model = build_model(settings.model.name, spec_for_model(settings.model), settings.model.params)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_example_config_takes_its_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMTRAIN_KAFKA__SASL_PASSWORD", "hunter2")
    settings = load_settings(EXAMPLE)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()
