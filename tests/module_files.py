"""Load a Python file that is not part of an installed package (a bench script, an example
model) as a module, without putting its folder on ``sys.path``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_file(path: Path, name: str) -> ModuleType:
    """``path`` run as the module ``name``, registered in ``sys.modules`` under that name: its
    dataclasses look their module up there, and a bench script that imports a sibling by name
    (``ctr_churn`` imports ``ctr_runs``) finds the one loaded before it."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
