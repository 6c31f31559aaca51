"""Config errors in the user's words: one line per problem naming its source (flag, file and
line, variable), no pydantic wording, a hint for YAML booleans; a warning with the nearest name
for a STREAMTRAIN_* variable that sets nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamtrain.config import ConfigError, load_settings, unknown_env_warnings

PYDANTIC_WORDING = ("Value error,", "valid dictionary or instance of", "Input should be")


@pytest.fixture(autouse=True)
def _no_streamtrain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("STREAMTRAIN_"):
            monkeypatch.delenv(name)


def _problems(*args: object, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(*args, **kwargs)  # type: ignore[arg-type]
    problems = caught.value.problems
    assert str(caught.value) == "\n".join(problems)
    for line in problems:
        assert "\n" not in line
        assert not any(words in line for words in PYDANTIC_WORDING), line
    return problems


def test_each_problem_is_one_line_naming_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "prod.yaml"
    config.write_text("train:\n  autocast: off\n  device: cuda:x\nmodel: 3\n")
    monkeypatch.setenv("STREAMTRAIN_SERVE__PORT", "abc")
    problems = _problems(
        config,
        {"kafka": {"bootstrap_servers": "nohost"}},
        {"kafka.bootstrap_servers": "--bootstrap-servers"},
    )
    by_field = {line.split(":", 1)[0]: line for line in problems}
    assert set(by_field) == {
        "kafka.bootstrap_servers",
        "train.autocast",
        "train.device",
        "model",
        "serve.port",
    }
    assert by_field["kafka.bootstrap_servers"].endswith("(flag --bootstrap-servers)")
    assert "STREAMTRAIN_KAFKA" not in by_field["kafka.bootstrap_servers"]
    assert by_field["train.autocast"].endswith(f"(config file {config}, line 2)")
    assert 'quote it, e.g. autocast: "off"' in by_field["train.autocast"]
    assert "got false" in by_field["train.autocast"]
    assert by_field["train.device"].endswith(f"(config file {config}, line 3)")
    assert "expected a mapping" in by_field["model"]
    assert by_field["model"].endswith(f"(config file {config}, line 4)")
    assert by_field["serve.port"].endswith("(env var STREAMTRAIN_SERVE__PORT)")
    assert "got 'abc'" in by_field["serve.port"]


def test_a_flag_beats_the_variable_in_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS", "also-bad")
    (line,) = _problems(
        None,
        {"kafka": {"bootstrap_servers": "x"}},
        {"kafka.bootstrap_servers": "--bootstrap-servers"},
    )
    assert line.endswith("(flag --bootstrap-servers)")


def test_unknown_section_and_field_suggest_the_nearest(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("modle:\n  name: cnn\ntrain:\n  max_sample: 3\n")
    problems = _problems(config)
    assert any(
        line.startswith("modle: unknown section") and "did you mean 'model'?" in line
        for line in problems
    )
    assert any(
        line.startswith("train.max_sample: unknown setting")
        and "did you mean 'max_samples'?" in line
        and "line 4" in line
        for line in problems
    )


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("train:\n  device: [cpu\n")
    (line,) = _problems(config)
    assert line.startswith(f"config file {config}, line ") and "not valid YAML" in line


def test_secrets_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRAIN_KAFKA__EXTRA", '{"sasl.oauthbearer.client.secret": [1]}')
    problems = _problems()
    assert problems and all("client.secret" not in p or "not shown" in p for p in problems)


def test_unknown_variables_are_warned_with_the_nearest_name() -> None:
    environ = {
        "STREAMTRAIN_MODLE__NAME": "cnn",
        "STREAMTRAIN_TRIAN__DEVICE": "cpu",
        "STREAMTRAIN_MODEL__NAME": "mlp",  # valid
        "STREAMTRAIN_KAFKA": "{}",  # a whole section as JSON: valid
        "STREAMTRAIN_ADMIN_TOKEN": "t",  # read by `streamtrain admin`
        "STREAMTRAIN_TEST_BOOTSTRAP": "x",  # the test suite's own
        "PATH": "/bin",
    }
    warnings = unknown_env_warnings(environ)
    assert warnings == [
        "environment variable STREAMTRAIN_MODLE__NAME sets nothing and is ignored; did you "
        "mean STREAMTRAIN_MODEL__NAME?",
        "environment variable STREAMTRAIN_TRIAN__DEVICE sets nothing and is ignored; did you "
        "mean STREAMTRAIN_TRAIN__DEVICE?",
    ]


def test_a_check_across_fields_names_every_source_under_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("serve:\n  tls_certfile: /etc/cert.pem\n")
    monkeypatch.setenv("STREAMTRAIN_SERVE__SIGNATURE_POLICY", "require")
    problems = _problems(config)
    tls = next(line for line in problems if "tls_keyfile go together" in line)
    assert tls.startswith("serve: ")
    assert tls.endswith(f"(env var STREAMTRAIN_SERVE__SIGNATURE_POLICY, config file {config})")


@pytest.mark.parametrize(
    "servers", ["kafka:\u0669\u0660\u0669\u0662", "kafka:\u00b2", "kafka:70000", "kafka:+1"]
)
def test_bootstrap_ports_are_ascii_numbers_in_range(servers: str) -> None:
    (line,) = _problems(None, {"kafka": {"bootstrap_servers": servers}})
    assert line.startswith("kafka.bootstrap_servers: bootstrap server") and "host:port" in line


def test_union_and_list_items_are_one_line_each_with_their_source(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  sparse:\n    - nme: user\njoin:\n  default_label: x\n")
    problems = _problems(config)
    assert len(problems) == 3, problems
    by_field = {line.split(":", 1)[0]: line for line in problems}
    assert by_field["model.sparse.0.nme"].endswith(
        f"did you mean 'name'? (config file {config}, line 3)"
    )
    assert by_field["model.sparse.0.name"].startswith("model.sparse.0.name: required")
    label = by_field["join.default_label"]
    assert "got 'x', expected a valid integer or a valid number or a valid tuple" in label
    assert label.endswith(f"(config file {config}, line 5)")
    (line,) = _problems(None, {"optimizer": {"lrr": 1}})
    assert line.endswith("did you mean 'lr'? (given by the caller)")
