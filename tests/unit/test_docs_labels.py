"""docs/labels.md names the settings and metrics the code has, and links to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamtrain.config import JoinSettings, ServeSettings
from streamtrain.metrics import JOIN_REGISTRY, SERVER_REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "labels.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _families(*registries: CollectorRegistry) -> set[str]:
    return {family.name for registry in registries for family in registry.collect()}


def test_settings_section_lists_every_delayed_label_setting_and_no_other() -> None:
    named = set(re.findall(r"`([a-z_.]+)`", _section("Settings")))
    join = set(JoinSettings.model_fields)
    log = {f for f in ServeSettings.model_fields if f.startswith("prediction_log")}
    topics = {"topics.predictions", "topics.labels", "topics.labels_dead_letter"}
    assert join <= named, f"join settings missing from labels.md: {join - named}"
    assert log <= named, f"prediction-log settings missing from labels.md: {log - named}"
    assert topics <= named
    assert named - join - log - topics <= {"serve.*", "join.*"}, "a name that is no setting"


def test_every_metric_named_is_exported_by_the_join_or_the_server() -> None:
    named = set(re.findall(r"streamtrain_[a-z0-9_]+", DOC.read_text()))
    assert named, "labels.md should point at the metrics to watch"
    exported = _families(JOIN_REGISTRY, SERVER_REGISTRY)
    for name in named:
        family = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert family in exported, f"labels.md names {name}, which nothing exports"


def test_links_point_at_files_that_exist() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", DOC.read_text()):
        if "://" in target:
            continue
        assert (DOC.parent / target).resolve().exists(), f"labels.md links to missing {target}"
