"""The import structure of ``streamtrain/``: no circles, and no import from a lower layer into a
higher one (``docs/architecture.md``, Layers, lists the same layers and says why).

Read from the source with ``ast`` (every import statement counts: top level, inside
functions, under ``TYPE_CHECKING``), so the check needs no extra package and sees the lazy
imports a run-time tracer would miss. Run alone: ``pytest tests/unit/test_import_graph.py``.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "streamtrain"

# Top to bottom; a unit may import only units in lower layers, never one of its own layer.
LAYERS: list[set[str]] = [
    {"cli"},
    {"builders"},
    {"demo", "testing"},
    {"serve", "join", "distributed"},
    {"snapshot"},
    {"train"},
    {"ingest", "checkpoint", "client", "datasets", "broker", "quality"},
    {"kafka"},
    {"wire", "health"},
    {"sample", "gc_pause"},
    {"config", "metrics", "devices", "extras"},
    {"config_report", "pause_switch"},
    {"ascii_int"},
]
# Inside serve/: the wiring over the request path over the hot-swap path and the log.
SERVE_LAYERS: list[set[str]] = [
    {"server"},
    {"infer_protocol"},
    {"promotion", "transport"},
    {"protocol", "read_watch"},
    {"weights", "prediction_log"},
]
# Inside sample/: the batch and the torch form over the numpy form, the spec and the marks.
SAMPLE_LAYERS: list[set[str]] = [
    {"batch", "sparse_torch"},
    {"sparse_numpy", "record_mark", "spec"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The streamtrain modules ``path`` imports: ``from a import b`` names ``a.b`` when that
    is a module, else ``a``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                if child in modules:
                    yield child
                elif node.module in modules:
                    yield node.module


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {t for t in _imports(path, modules) if t != name} for name, path in modules.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _unit(module: str, depth: int) -> str | None:
    parts = module.split(".")
    return parts[depth] if len(parts) > depth else None


def _wrong_way(graph: dict[str, set[str]], prefix: str, layers: list[set[str]]) -> list[str]:
    """Imports between units under ``prefix`` that go up, or across one layer."""
    depth = prefix.count(".") + 1
    rank = {unit: i for i, layer in enumerate(layers) for unit in layer}
    bad = []
    for source, targets in graph.items():
        if not source.startswith(prefix + "."):
            continue
        src = _unit(source, depth)
        for target in targets:
            dst = _unit(target, depth) if target.startswith(prefix + ".") else None
            if src is None or dst is None or src == dst:
                continue
            if src not in rank or dst not in rank:
                bad.append(f"{source} -> {target}: {src} or {dst} is in no layer; add it")
            elif rank[dst] <= rank[src]:
                way = "across its layer" if rank[dst] == rank[src] else "upward"
                bad.append(f"{source} -> {target} ({way}: {src} over {dst})")
    return sorted(bad)


def test_no_import_circles() -> None:
    circles = _circles(_graph())
    assert not circles, "import circles (break each, e.g. by moving the shared type down):\n" + (
        "\n".join(" <-> ".join(c) for c in circles)
    )


@pytest.mark.parametrize(
    ("prefix", "layers"),
    [
        ("streamtrain", LAYERS),
        ("streamtrain.serve", SERVE_LAYERS),
        ("streamtrain.sample", SAMPLE_LAYERS),
    ],
    ids=["package", "serve", "sample"],
)
def test_imports_only_go_down_the_layers(prefix: str, layers: list[set[str]]) -> None:
    wrong = _wrong_way(_graph(), prefix, layers)
    assert not wrong, "imports against the layers (docs/architecture.md, Layers):\n" + (
        "\n".join(wrong)
    )


def test_the_check_sees_a_circle_and_an_upward_import() -> None:
    """The checks themselves can fail: a made-up graph with both faults."""
    graph = {
        "streamtrain.kafka.a": {"streamtrain.ingest.b"},
        "streamtrain.ingest.b": {"streamtrain.kafka.a"},
    }
    assert _circles(graph) == [["streamtrain.ingest.b", "streamtrain.kafka.a"]]
    assert _wrong_way(graph, "streamtrain", LAYERS) == [
        "streamtrain.kafka.a -> streamtrain.ingest.b (upward: kafka over ingest)"
    ]


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m, 1) for m in _modules()} - {None}
    serve = {_unit(m, 2) for m in _modules() if m.startswith("streamtrain.serve.")} - {None}
    assert units == set().union(*LAYERS)
    assert serve <= set().union(*SERVE_LAYERS) | {"__init__"}
    sample = {_unit(m, 2) for m in _modules() if m.startswith("streamtrain.sample.")} - {None}
    assert sample == set().union(*SAMPLE_LAYERS)
