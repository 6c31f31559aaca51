"""The checks of ``promtool check metrics``, for a scraped exposition text.

promtool (a Go binary) ships in no PyPI or npm package this project can install, so its
checks are written out here, rule for rule, from client_golang's ``testutil/promlint``
(help, units, counter suffix, histogram/summary reserved names and labels, type in the name,
reserved ``:``, camelCase, abbreviated units, ``_timestamp_seconds`` on non-gauges), plus what
promtool's text parser refuses before it lints: a second HELP/TYPE for one family, a sample of
a family whose TYPE came earlier under another name, a duplicate series, invalid metric or
label names, and histogram buckets that are not cumulative or lack ``le="+Inf"``.

A family is taken as promtool's parser sees it: the name on its ``# TYPE`` line.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_CAMEL = re.compile(r"[a-z][A-Z]")
_SAMPLE = re.compile(r"^([^\s{]+)(?:\{(.*)\})?\s+(\S+)(?:\s+(\S+))?$")
_PAIR = re.compile(r'\s*([^=\s,]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNITS = {
    **{u: u for u in ("amperes", "bytes", "celsius", "grams", "joules", "kelvin")},
    **{u: u for u in ("meters", "metres", "seconds", "volts")},
    **dict.fromkeys(("minutes", "hours", "days", "weeks"), "seconds"),
    "kelvins": "kelvin",
    "fahrenheit": "celsius",
    "rankine": "celsius",
    **dict.fromkeys(("inches", "yards", "miles"), "meters"),
    "bits": "bytes",
    "calories": "joules",
    **dict.fromkeys(("pounds", "ounces"), "grams"),
}
_PREFIXES = [
    "pico",
    "nano",
    "micro",
    "milli",
    "centi",
    "deci",
    "deca",
    "hecto",
    "kilo",
    "kibi",
    "mega",
    "mibi",
    "giga",
    "gibi",
    "tera",
    "tebi",
    "peta",
    "pebi",
]
_ABBREVIATIONS = ["s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d"]
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _labels(text: str) -> dict[str, str]:
    pairs = _PAIR.findall(text or "")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"a label repeated in {{{text}}}")
    return dict(pairs)


def _owner(families: dict[str, Family], current: Family | None, name: str) -> Family:
    """The family a sample belongs to: the current one when its name is one of its own."""
    if current is not None and (
        name == current.name
        or any(name == current.name + s for s in _SUFFIXES.get(current.type, ()))
    ):
        return current
    if name in families:
        raise ValueError(f"sample {name} after its family's block ended")
    return families.setdefault(name, Family(name))


def parse(text: str) -> dict[str, Family]:
    """The exposition's families, or ValueError for what promtool's parser refuses."""
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
                continue
            name = parts[2]
            rest = parts[3] if len(parts) > 3 else ""
            family = families.get(name)
            if family is None:
                family = families[name] = Family(name)
            elif (
                family is not current
                or (parts[1] == "HELP" and family.help is not None)
                or (parts[1] == "TYPE" and (family.type != "untyped" or family.samples))
            ):
                raise ValueError(f"second {parts[1]} line for metric {name}")
            if parts[1] == "HELP":
                family.help = rest
            else:
                family.type = rest.strip()
            current = family
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"unparsable sample line: {line!r}")
        name, labels, value = match.group(1), _labels(match.group(2) or ""), match.group(3)
        current = _owner(families, current, name)
        current.samples.append((name, labels, float(value)))
    return families


def _unit_problem(name: str) -> str | None:
    for token in name.split("_"):
        if token in _UNITS:
            base = _UNITS[token]
            return None if base == token else f'use base unit "{base}" instead of "{token}"'
        for prefix in _PREFIXES:
            if token.startswith(prefix) and token[len(prefix) :] in _UNITS:
                return f'use base unit "{_UNITS[token[len(prefix) :]]}" instead of "{token}"'
    return None


def _name_problems(family: Family) -> list[str]:
    name, kind = family.name, family.type
    problems = []
    if not family.help:
        problems.append("no help text")
    if (unit := _unit_problem(name)) is not None:
        problems.append(unit)
    if kind == "counter" and not name.endswith("_total"):
        problems.append('counter metrics should have "_total" suffix')
    if kind not in ("untyped", "counter") and name.endswith("_total"):
        problems.append('non-counter metrics should not have "_total" suffix')
    if kind not in ("untyped", "histogram") and name.endswith("_bucket"):
        problems.append('non-histogram metrics should not have "_bucket" suffix')
    for suffix in ("_count", "_sum"):
        if kind not in ("untyped", "histogram", "summary") and name.endswith(suffix):
            problems.append(
                f'non-histogram and non-summary metrics should not have "{suffix}" suffix'
            )
    if kind not in ("untyped", "gauge") and name.endswith("_timestamp_seconds"):
        problems.append('non-gauge metrics should not have "_timestamp_seconds" suffix')
    for typename in ("counter", "gauge", "summary", "histogram", "gaugehistogram"):
        if f"_{typename}_" in name.lower() or name.lower().endswith(f"_{typename}"):
            problems.append(f"metric name should not include type '{typename}'")
    if ":" in name:
        problems.append("metric names should not contain ':'")
    if _CAMEL.search(name):
        problems.append("metric names should be written in 'snake_case' not 'camelCase'")
    for short in _ABBREVIATIONS:
        if f"_{short}_" in name.lower() or name.lower().endswith(f"_{short}"):
            problems.append("metric names should not contain abbreviated units")
    return problems


def _series_problems(family: Family) -> list[str]:
    problems = []
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for name, labels, _ in family.samples:
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            problems.append(f"duplicate series {name}{labels}")
        seen.add(key)
        if not _NAME.match(name):
            problems.append(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__"):
                problems.append(f"invalid label name {label!r}")
            if _CAMEL.search(label):
                problems.append("label names should be written in 'snake_case' not 'camelCase'")
            if label == "le" and family.type not in ("untyped", "histogram", "gaugehistogram"):
                problems.append('non-histogram metrics should not have "le" label')
            if label == "quantile" and family.type not in ("untyped", "summary"):
                problems.append('non-summary metrics should not have "quantile" label')
    if family.type == "histogram":
        problems += _bucket_problems(family)
    return problems


def _bucket_problems(family: Family) -> list[str]:
    """Per series: buckets cumulative in ``le`` order, ending at +Inf equal to _count."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for name, labels, value in family.samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        if name.endswith("_bucket"):
            series.setdefault(rest, []).append((float(labels["le"]), value))
        elif name.endswith("_count"):
            counts[rest] = value
    problems = []
    for key, buckets in series.items():
        buckets.sort()
        if not buckets or not math.isinf(buckets[-1][0]):
            problems.append(f'{family.name}{dict(key)}: no le="+Inf" bucket')
            continue
        if any(b[1] > a[1] for b, a in itertools.pairwise(buckets)):
            problems.append(f"{family.name}{dict(key)}: buckets not cumulative")
        if key in counts and counts[key] != buckets[-1][1]:
            problems.append(f'{family.name}{dict(key)}: le="+Inf" differs from _count')
    return problems


def lint(text: str) -> list[str]:
    """promtool's findings for ``text``, one ``name: problem`` line each (empty: clean)."""
    try:
        families = parse(text)
    except ValueError as exc:
        return [f"error while linting: {exc}"]
    return [
        f"{family.name}: {problem}"
        for family in families.values()
        for problem in _name_problems(family) + _series_problems(family)
    ]
