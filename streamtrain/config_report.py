"""What is wrong with a configuration, in the user's words: one line per problem, naming the
source that gave the bad value, and STREAMTRAIN_* variables that set nothing.

pydantic reports a problem by field path with its own wording ("Value error, ...", "Input
should be a valid dictionary or instance of ModelSettings"); a user needs to know *where* the
value came from (which flag, which file and line, which variable) and how to write it instead.
Sources are searched in the order settings are merged, highest priority first: flags, then
environment variables, then the YAML file.

>>> sources = SettingsSources(flags={"kafka.bootstrap_servers": "--bootstrap-servers"})
>>> sources.source_of(("kafka", "bootstrap_servers"))
'flag --bootstrap-servers'
>>> nearest_variable("STREAMTRAIN_MODLE__NAME", ["STREAMTRAIN_MODEL__NAME"])
'STREAMTRAIN_MODEL__NAME'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

ENV_PREFIX = "STREAMTRAIN_"
# STREAMTRAIN_* variables read by something other than the settings tree.
OTHER_VARIABLES = ("STREAMTRAIN_ADMIN_TOKEN", "STREAMTRAIN_TANSU_BINARY")
OTHER_PREFIXES = ("STREAMTRAIN_TEST_",)  # the test suite's own switches
_YAML_BOOLEAN_WORDS = "off, on, yes, no, true or false"

Loc = tuple[str | int, ...]


class ConfigError(ValueError):
    """Configuration that cannot be used: one line per problem in ``problems``, each naming the
    field, what was wrong, how to write it and the source that gave the value."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# A settings file is a few kilobytes; reading more than this means a wrong path (a device such
# as /dev/zero, a data file), which would otherwise be read into memory whole.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def read_yaml_file(path: Path) -> tuple[dict[str, Any], str]:
    """The mapping in a YAML settings file and its text; ConfigError naming the file."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
        text = raw.decode()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason})") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is over {MAX_CONFIG_BYTES // 1024**2} MiB: not a settings "
            "file; give --config the YAML file of settings (examples/config.yaml)"
        )
    try:
        data = yaml.safe_load(text)
    except RecursionError as exc:
        raise ConfigError(
            f"config file {path} nests too deeply to read; settings are at most a few levels "
            "deep (examples/config.yaml)"
        ) from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f", line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config file {path}{line} is not valid YAML: {problem}") from exc
    if data is None:
        return {}, text
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping such as 'kafka: {{...}}'")
    if _over(data, MAX_CONFIG_VALUES):
        raise ConfigError(
            f"config file {path} expands to more than {MAX_CONFIG_VALUES} values (YAML aliases "
            "repeating aliases, a 'billion laughs'); write the settings out without them"
        )
    return data, text


# YAML aliases let a small file stand for a huge tree (each alias repeats its anchor's whole
# subtree, ten levels of ten make 10^10 values) that validating or hashing would walk in full.
MAX_CONFIG_VALUES = 100_000


def _over(tree: Any, limit: int) -> bool:
    """Whether ``tree`` holds more than ``limit`` values counted as expanded (aliases each
    time they appear); stops counting at the limit, so the check itself stays cheap."""
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


@dataclass(frozen=True)
class SettingsSources:
    """Where each value may have come from: flags by dotted field, the environment, the file."""

    flags: Mapping[str, str] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    config_file: Path | None = None
    yaml_text: str = ""

    def source_of(self, loc: Loc) -> str:
        """The highest-priority source that sets ``loc`` (or a section above it)."""
        for depth in range(len(loc), 0, -1):
            flag = self.flags.get(".".join(str(p) for p in loc[:depth]))
            if flag is not None:
                return f"flag {flag}"
        if _holds(self.overrides, loc):
            return "given by the caller"  # load_settings(overrides=...) from Python
        upper = {name.upper(): name for name in self.environ}
        for depth in range(len(loc), 0, -1):
            name = ENV_PREFIX + "__".join(str(p) for p in loc[:depth]).upper()
            if name in upper:
                return f"env var {upper[name]}"
        if self.config_file is not None:
            line = yaml_line(self.yaml_text, loc)
            if line is not None:
                return f"config file {self.config_file}, line {line}"
        return self.sources_below(loc)

    def sources_below(self, loc: Loc) -> str:
        """For a check across fields (``serve``: tls_certfile needs tls_keyfile), every source
        that set something under ``loc``."""
        dotted = ".".join(str(p) for p in loc) + "."
        variable = ENV_PREFIX + "__".join(str(p) for p in loc).upper() + "__"
        found = [f"flag {flag}" for name, flag in self.flags.items() if name.startswith(dotted)]
        found += [f"env var {n}" for n in sorted(self.environ) if n.upper().startswith(variable)]
        if self.config_file is not None and yaml_line(self.yaml_text, loc[:1]) is not None:
            found.append(f"config file {self.config_file}")
        return ", ".join(found) if found else "the defaults"

    def from_file(self, loc: Loc) -> bool:
        return self.source_of(loc).startswith("config file")


def _holds(tree: Mapping[str, Any], loc: Loc) -> bool:
    node: Any = tree
    for part in loc:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list | tuple) and isinstance(part, int) and part < len(node)
        if not (in_mapping or in_list):
            return False
        node = node[part]
    return bool(loc)


def yaml_line(text: str, loc: Loc) -> int | None:
    """1-based line of the deepest key of ``loc`` present in the YAML ``text``."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                line, node = key.start_mark.line + 1, value
                break
        else:
            break
    return line


def describe_problems(
    exc: ValidationError, sources: SettingsSources, root: type[BaseModel]
) -> list[str]:
    """One line per problem: ``<field>: <what is wrong>[; <hint>] (<source>)``."""
    lines = []
    for loc, errors in _by_field(exc.errors()):
        where = ".".join(str(p) for p in loc) or "(settings)"
        err = errors[0]
        if len(errors) > 1:  # a union: one line listing what each member expected
            wanted = " or ".join(
                str(e["msg"]).removeprefix("Input should be ").split(",")[0] for e in errors
            )
            problem = f"got {_shown(err, loc)}, expected {wanted}"
        else:
            problem = _problem(err, loc, sources, root)
        # A section's own check (a model_validator) concerns several of its fields.
        across = err["type"] == "value_error" and len(loc) == 1
        # A missing field was not given anywhere: name where its parent came from.
        given = loc[:-1] if err["type"] == "missing" and len(loc) > 1 else loc
        source = sources.sources_below(loc) if across else sources.source_of(given)
        lines.append(f"{where}: {problem} ({source})")
    return lines


# pydantic ends the location of a union member's error with the member's type ("str",
# "tuple[float, ...]"): one problem of the field, reported once.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|list|dict|tuple|set|literal)(\[.*\])?$")


def _by_field(errors: Sequence[Any]) -> list[tuple[Loc, list[Any]]]:
    groups: dict[Loc, list[Any]] = {}
    for err in errors:
        loc: Loc = tuple(err["loc"])
        if len(loc) > 1 and isinstance(loc[-1], str) and _UNION_MEMBER.match(loc[-1]):
            loc = loc[:-1]
        groups.setdefault(loc, []).append(err)
    return list(groups.items())


def _problem(err: Any, loc: Loc, sources: SettingsSources, root: type[BaseModel]) -> str:
    kind, message = err["type"], str(err["msg"])
    if kind == "extra_forbidden":
        known = sorted(_fields_at(root, loc[:-1]))
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"known: {', '.join(known)}"
        what = "section" if len(loc) == 1 else "setting"
        return f"unknown {what} (its value is not shown); {hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"got {_shown(err, loc)}, expected a mapping of its fields, e.g. {_example(loc)}"
    if kind == "missing":
        return "required, but not set"
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        return f"got {_shown(err, loc)}, expected text matching {pattern}"
    text = message.removeprefix("Value error, ")
    if text.startswith("Input should be "):
        text = "expected " + text.removeprefix("Input should be ")
        text = f"got {_shown(err, loc)}, {text}"
    if isinstance(err.get("input"), bool) and sources.from_file(loc):
        text += (
            f"; YAML reads a bare {_YAML_BOOLEAN_WORDS} as a boolean: quote it, e.g. "
            f'{loc[-1]}: "off"'
        )
    return text


def _shown(err: Any, loc: Loc) -> str:
    # kafka.extra may hold an OAuth client secret and a password field its password: never
    # echo either.
    if any("password" in str(p) or p == "extra" for p in loc):
        return "a value (not shown)"
    value = err.get("input")
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _example(loc: Loc) -> str:
    if len(loc) == 1:
        return f"'{loc[0]}: {{field: value}}'"
    return f"'{loc[-1]}: {{name: value}}'"


def _fields_at(root: type[BaseModel], path: Loc) -> list[str]:
    model: Any = root
    for part in path:
        if isinstance(part, int):  # an item of a list of sections (model.sparse.0)
            model = next(iter(get_args(model)), None)
            continue
        info = getattr(model, "model_fields", {}).get(str(part))
        if info is None:
            return []
        model = info.annotation
    return list(getattr(model, "model_fields", {}))


# --- STREAMTRAIN_* variables that set nothing -----------------------------------------------


def valid_variables(root: type[BaseModel]) -> list[str]:
    """Every variable that sets a section or a field of the settings tree."""
    names = []
    for section, info in root.model_fields.items():
        names.append(ENV_PREFIX + section.upper())
        for name in getattr(info.annotation, "model_fields", {}):
            names.append(f"{ENV_PREFIX}{section.upper()}__{name.upper()}")
    return names


def nearest_variable(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate spelled most like ``name``, compared without the shared prefix (which
    would make every pair look alike); None when none is close."""
    tails = {c.removeprefix(ENV_PREFIX): c for c in candidates}
    tail = name.upper().removeprefix(ENV_PREFIX)
    guess = difflib.get_close_matches(tail, list(tails), n=1, cutoff=0.7)
    return tails[guess[0]] if guess else None


def unknown_variables(environ: Iterable[str], root: type[BaseModel]) -> list[str]:
    """A warning for each STREAMTRAIN_* variable whose section is not a section of the tree
    (pydantic-settings ignores those silently; an unknown *field* of a known section is already
    an error), with the nearest valid name."""
    sections = {ENV_PREFIX + s.upper() for s in root.model_fields}
    valid = valid_variables(root)
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_VARIABLES:
            continue
        if upper.startswith(OTHER_PREFIXES) or upper.partition("__")[0] in sections:
            continue
        guess = nearest_variable(upper, valid)
        hint = f"did you mean {guess}?" if guess else "see docs/configuration.md for the names"
        warnings.append(f"environment variable {name} sets nothing and is ignored; {hint}")
    return warnings
