"""A server's model built without drawing initial weights it will never serve.

A server answers nothing before its first snapshot is live (``/v2/health/ready`` is 503 until
then, rule 1 of ``slot.py``), and a base overwrites every parameter and persistent buffer
(``checks.py`` refuses one that does not name them all). So the random initial weights a
model's constructor draws are work thrown away: for a 4 GB embedding table, ``nn.EmbeddingBag``
draws all of it once in its constructor and the model's own ``normal_`` again, ~2 × 5 s of a
core on the bench machine, while a new replica competes for the cores with the trainer, the
broker and the running servers (issue 26: a replica's start-up, not its base read, was where
the slowest batches of a 4 GB run waited). Inside :func:`initial_draws_skipped` the
``torch.nn.init`` functions that draw random values return their tensor untouched, so a
parameter keeps the memory ``torch.empty`` gave it; untouched pages cost no RSS either until
the base writes them.

Only the building thread is affected (a thread-local flag): a trainer or a test building its
model in another thread of the same process still draws its weights. Buffers a constructor
fills by other means (``torch.zeros``, ``arange``, ``fill_``) are left alone, so a buffer that
no snapshot carries (``persistent=False``) keeps its value. A model factory that draws with
``Tensor.normal_`` directly, not through ``torch.nn.init``, still draws: slower, not wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

# The initialisers that draw random values (the deterministic ones, zeros_/ones_/constant_/
# eye_/dirac_, are cheap and a constructor may rely on them for a buffer).
_DRAWS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)
_ORIGINALS: dict[str, Callable[..., Any]] = {name: getattr(nn.init, name) for name in _DRAWS}
_state = threading.local()
_install_lock = threading.Lock()


def _skipping() -> bool:
    return bool(getattr(_state, "depth", 0))


def _guarded(name: str) -> Callable[..., Any]:
    original = _ORIGINALS[name]

    def draw_unless_skipped(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if _skipping():
            return tensor
        return original(tensor, *args, **kwargs)

    draw_unless_skipped.__name__ = name
    draw_unless_skipped.__doc__ = original.__doc__
    return draw_unless_skipped


def _install() -> None:
    """Put the guarded initialisers in ``torch.nn.init`` once per process; outside
    :func:`initial_draws_skipped` each calls the original, so installing changes nothing else."""
    with _install_lock:
        if getattr(nn.init, "_streamtrain_guarded", False):
            return
        for name in _DRAWS:
            setattr(nn.init, name, _guarded(name))
        nn.init._streamtrain_guarded = True  # type: ignore[attr-defined]


@contextmanager
def initial_draws_skipped() -> Iterator[None]:
    """Build a serving model in here: its random initialisers leave the tensors as allocated."""
    _install()
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
