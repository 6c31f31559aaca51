"""Guarantee 5, read from the source: no module of ``streamtrain/`` can unpickle anything.

Every module is parsed (not grepped, so a docstring saying "no pickle" is fine and an aliased
import is not) and refused when it imports a module that loads pickles (``pickle``, ``dill``,
``shelve``, ``marshal``, ...) or calls a loader that unpickles: ``torch.load`` without a literal
``weights_only=True``, ``numpy.load`` with ``allow_pickle`` not literally ``False``,
``pandas.read_pickle``, ``yaml.load`` / ``yaml.unsafe_load``, ``torch.jit.load`` or an import
of one of those modules by name (``__import__``, ``importlib.import_module``). That covers
every path that reads from Kafka, HTTP or disk: snapshots, the snapshot cache, checkpoints,
join state, pin files, prediction records. The negative controls plant each pattern, in a
module and in a copy of the package, and check it is found.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "streamtrain"

# Modules whose import alone is a way to load pickles (or marshal'd code).
FORBIDDEN_MODULES = frozenset(
    {"pickle", "cPickle", "_pickle", "pickletools", "dill", "cloudpickle", "shelve", "marshal",
     "jsonpickle", "joblib", "copyreg"}
)  # fmt: skip
# Calls that unpickle (or run code) unless told not to; the value says what makes them safe.
ALWAYS_FORBIDDEN_CALLS = frozenset(
    {"pandas.read_pickle", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load",
     "numpy.lib.format.read_array"}
)  # fmt: skip
IMPORT_BY_NAME = frozenset({"__import__", "importlib.import_module", "importlib.__import__"})


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name it stands for (``np`` -> ``numpy``, ``load`` -> ``torch.load``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    name = ".".join(reversed(parts))
    return name.replace("np.", "numpy.", 1) if name.startswith("np.") else name


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
        for k in call.keywords
    )


def _call_problem(call: ast.Call, aliases: dict[str, str]) -> str | None:
    name = _dotted(call.func, aliases)
    if name is None:
        return None
    if name in ALWAYS_FORBIDDEN_CALLS:
        return f"{name}() can unpickle or run code"
    if name in {"torch.load", "torch.serialization.load"} and not _keyword_is(
        call, "weights_only", True
    ):
        return f"{name}() without weights_only=True unpickles"
    if name in {"numpy.load", "numpy.lib.npyio.load"} and any(
        k.arg == "allow_pickle" and not _keyword_is(call, "allow_pickle", False)
        for k in call.keywords
    ):
        return f"{name}() with allow_pickle not False unpickles"
    if name in IMPORT_BY_NAME and call.args:
        # A computed name is the model plugin loader (``model.name``: code the operator
        # chose, not data read); a literal one must not name a pickle loader.
        first = call.args[0]
        if isinstance(first, ast.Constant) and str(first.value).split(".")[0] in FORBIDDEN_MODULES:
            return f"{name}({first.value!r}) imports a pickle loader"
    return None


def problems_in(source: str, filename: str = "<source>") -> list[str]:
    """Every way ``source`` could load a pickle, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        for module in modules:
            if module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{filename}:{node.lineno}: imports {module}")
        if isinstance(node, ast.Call):
            problem = _call_problem(node, aliases)
            if problem is not None:
                found.append(f"{filename}:{node.lineno}: {problem}")
    return found


def package_problems(package: Path) -> tuple[int, list[str]]:
    """How many modules under ``package`` were read, and every problem found in them."""
    sources = sorted(package.rglob("*.py"))
    found: list[str] = []
    for source in sources:
        found += problems_in(source.read_text(encoding="utf-8"), str(source.relative_to(package)))
    return len(sources), found


def test_no_module_of_the_package_can_load_a_pickle() -> None:
    count, found = package_problems(PACKAGE)
    # Every module, including the readers of Kafka, HTTP and disk the guarantee is about.
    readers = [
        "snapshot/cache.py",
        "snapshot/payload.py",
        "snapshot/subscriber.py",
        "join/state_file.py",
        "serve/weights/retained.py",
        "wire/prediction_record.py",
    ]
    missing = [path for path in readers if not (PACKAGE / path).is_file()]
    assert not missing, f"modules the check is meant to cover moved: {missing}"
    assert count > 100, f"only {count} modules found under {PACKAGE}"
    assert found == [], "\n".join(found)


PLANTED = {
    "import pickle": "imports pickle",
    "import shelve as s": "imports shelve",
    "from dill import loads": "imports dill",
    "from marshal import loads": "imports marshal",
    "import torch\ntorch.load(path)": "torch.load() without weights_only=True",
    "import torch\ntorch.load(path, weights_only=False)": "torch.load() without weights_only",
    "from torch import load as restore\nrestore(path)": "torch.load() without weights_only",
    "import numpy as np\nnp.load(path, allow_pickle=True)": "numpy.load() with allow_pickle",
    "import numpy\nnumpy.load(path, allow_pickle=flag)": "numpy.load() with allow_pickle",
    "import pandas as pd\npd.read_pickle(path)": "pandas.read_pickle()",
    "import yaml\nyaml.load(text)": "yaml.load()",
    "import importlib\nimportlib.import_module('pickle')": "imports a pickle loader",
    "__import__('cPickle')": "imports a pickle loader",
}


@pytest.mark.parametrize("source", sorted(PLANTED))
def test_each_planted_pickle_use_is_found(source: str) -> None:
    found = problems_in(source)
    assert len(found) == 1 and PLANTED[source] in found[0], found


def test_safe_loads_are_not_flagged() -> None:
    safe = (
        '"""No pickle here: torch.load and pickle named in a docstring."""\n'
        "import numpy as np\nimport torch\n"
        "torch.load(path, weights_only=True)\n"
        "np.load(path)\nnp.load(path, allow_pickle=False)\n"
        "from safetensors.torch import load_file\nload_file(path)\n"
    )
    assert problems_in(safe) == []


def test_a_use_planted_in_a_copy_of_the_package_is_found(tmp_path: Path) -> None:
    copy = tmp_path / "streamtrain"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    cache = copy / "snapshot" / "cache.py"
    cache.write_text(cache.read_text(encoding="utf-8") + "\nimport pickle as _p\n")
    pins = copy / "serve" / "weights" / "retained.py"
    pins.write_text(pins.read_text(encoding="utf-8") + "\n_ = torch.load('pin')\n")
    _, found = package_problems(copy)
    assert len(found) == 2, found
    assert found[0].startswith("serve/weights/retained.py:") and "torch.load" in found[0]
    assert found[1].startswith("snapshot/cache.py:") and "imports pickle" in found[1]
