"""docs/metrics.md documents every metric the code defines, as the code defines it.

Each metric is one table row: ``| `name` | type | labels | unit | meaning |``, under the
section of the process that exports it. Counters are listed by their scraped ``_total`` name,
the name users query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

import streamtrain.metrics as metrics
from streamtrain.metrics import JOIN_REGISTRY, SERVER_REGISTRY, TRAINER_REGISTRY

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
REGISTRIES = {"Trainer": TRAINER_REGISTRY, "Server": SERVER_REGISTRY, "Join": JOIN_REGISTRY}
_SAMPLE_SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")
_UNITS = ("_seconds", "_bytes", "_records", "_samples", "_rows", "_ratio", "_per_second")
# Dimensionless by nature; a new metric joins this list only when no unit applies.
_UNITLESS = {
    "streamtrain_train_loss",
    "streamtrain_train_prequential_mae",
    "streamtrain_train_learning_rate",
    "streamtrain_snapshot_version",
    "streamtrain_train_step",
    "streamtrain_serve_model_version",
    "streamtrain_serve_pinned_version",
    "streamtrain_serve_retained_versions",
    "streamtrain_kafka_reachable",
    "streamtrain_join_assigned_partitions",
    # served quality over a window: figures of the label's own unit, or none
    "streamtrain_quality_window_log_loss",
    "streamtrain_quality_window_accuracy",
    "streamtrain_quality_window_auc",
    "streamtrain_quality_window_mae",
    "streamtrain_quality_window_rmse",
}


@dataclass(frozen=True)
class Row:
    name: str
    type: str
    labels: frozenset[str]
    section: str


def _doc_rows() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split()[0]
        match = re.match(r"\|\s*`(streamtrain_\w+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if match:
            name, kind, labels = match.groups()
            assert name not in rows, f"{name} is documented twice"
            rows[name] = Row(name, kind.strip(), frozenset(re.findall(r"`(\w+)`", labels)), section)
    return rows


def _documented_name(name: str, kind: str) -> str:
    return name + {"counter": "_total", "info": "_info"}.get(kind, "")


def _families() -> dict[str, tuple[str, frozenset[str], str]]:
    """Family name -> (type, label names, section) for both registries, plus the metrics only a
    CUDA trainer registers and those registered on their first value. A family in both
    registries belongs under "Both". prometheus_client's standard process_* and python_*
    collectors are documented as a group, not row by row."""
    found: dict[str, tuple[str, frozenset[str], str]] = {}
    collected = [(s, f) for s, registry in REGISTRIES.items() for f in registry.collect()]
    late = (*metrics.CUDA_ONLY, *metrics.ON_FIRST_VALUE)  # registered on demand
    collected += [("Trainer", f) for metric in late for f in metric.collect()]
    for section, family in collected:
        if not family.name.startswith("streamtrain_"):
            continue
        if family.name in found and found[family.name][2] != section:
            section = "Both"
        labels = frozenset(_label_names(family.name)) | _info_labels(family.name)
        found[family.name] = (family.type, labels, section)
    return found


def _info_labels(family: str) -> frozenset[str]:
    """An info metric's labels are its value: read them off the sample (the model's are set at
    start-up, so they come from the function that makes them)."""
    if family == "streamtrain_model":
        return frozenset(metrics.model_info_labels({}, ""))
    for registry in REGISTRIES.values():
        for collected in registry.collect():
            if collected.name == family and collected.type == "info":
                return frozenset(label for s in collected.samples for label in s.labels)
    return frozenset()


def _label_names(family: str) -> frozenset[str]:
    # A family with no children yet has no samples to read labels from; ask the metric object.
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase) and getattr(obj, "_name", None) == family:
            return frozenset(getattr(obj, "_labelnames", ()))
    # A custom collector (metrics/quality.py) has no metric object: it names its labels.
    if family.startswith("streamtrain_quality_"):
        return frozenset(metrics.SERVED_QUALITY.label_names)
    raise AssertionError(f"{family} is registered but not defined in streamtrain/metrics/")


def test_every_metric_is_documented_with_its_type_labels_and_process() -> None:
    rows = _doc_rows()
    for family, (kind, labels, section) in _families().items():
        name = _documented_name(family, kind)
        assert name in rows, f"{name} ({kind}) is missing from docs/metrics.md"
        row = rows[name]
        assert row.type == kind, f"{name}: doc says {row.type}, code says {kind}"
        assert row.labels == labels, f"{name}: doc labels {set(row.labels)}, code {set(labels)}"
        assert row.section == section, f"{name} belongs under '## {section}'"


def test_every_name_in_the_doc_exists() -> None:
    families = _families()
    known = {n + s for n in families for s in ("", "_info", *_SAMPLE_SUFFIXES)}
    mentioned = set(re.findall(r"streamtrain_[a-z0-9_]+", DOC.read_text()))
    assert not mentioned - known, f"doc names unknown metrics: {sorted(mentioned - known)}"
    documented = {_documented_name(n, kind) for n, (kind, _, _) in families.items()}
    assert set(_doc_rows()) == documented, "table rows and code disagree"


def test_names_have_prefix_and_unit() -> None:
    for family, (kind, _, _) in _families().items():
        assert family.startswith("streamtrain_"), family
        assert not family.endswith(_SAMPLE_SUFFIXES), f"{family} ends in a reserved suffix"
        if kind not in ("counter", "info") and family not in _UNITLESS:
            assert family.endswith(_UNITS), (
                f"{family} ({kind}) needs a unit suffix such as {', '.join(_UNITS)}; "
                "if it truly has none, add it to _UNITLESS in this test"
            )
