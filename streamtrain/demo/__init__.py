"""`streamtrain demo`: the whole pipeline on one machine, watched live from its metrics."""

from __future__ import annotations

from streamtrain.demo.lifecycle import DemoError
from streamtrain.demo.runner import DemoOptions, run_demo

__all__ = ["DemoError", "DemoOptions", "run_demo"]
