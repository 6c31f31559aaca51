"""A layer whose input the learner reads after one training forward (:mod:`..objective`).

The target scaler and the head mixer compute their output from their input; the learner's
loss needs that input (the standardised prediction, the heads' outputs). The learner lends
the layer a list for one forward (:meth:`CapturesInput.lend_slot`), the layer appends its
input to it, and the learner takes the slot back before the loss. The model holds the list
only during that forward, never a reference to the learner, so a deep copy of the model
stays a plain model. Why not forward hooks: registering and removing one every step, and the
slower module call a hooked layer takes, were a tenth of ``auto``'s extra cost over ``mlp`` per
batch-1 step (bench/README.md, Peers).
"""

from __future__ import annotations

from typing import Any


class CapturesInput:
    """Mixed into an ``nn.Module`` whose ``forward`` calls :meth:`keep_input` once."""

    # a class attribute as the default: nn.Module's __init__ needs no cooperation
    _input_slot: list[Any] | None = None

    def lend_slot(self, slot: list[Any] | None) -> None:
        """Append the next forwards' inputs to ``slot``; None stops it."""
        # object.__setattr__: nn.Module's own looks for parameters and buffers first, and a
        # list is neither (this runs twice per training step)
        object.__setattr__(self, "_input_slot", slot)

    def keep_input(self, x: object) -> None:
        """Append ``x`` (the layer's input, or what the loss needs of it) to the lent slot."""
        slot = self._input_slot
        if slot is not None:
            slot.append(x)
