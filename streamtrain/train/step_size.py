"""How many samples one optimizer step covers: the fetched batch is not the step.

A live stream at a few hundred samples/s arrives in batches of a few samples, a backlog in
batches of ``ingest.max_batch_size``; one step per fetched batch makes the same data learn
very differently depending on how fast it arrived. ``optimizer.step_samples`` decides:

- ``"batch"``: one step per fetched batch, whatever its size.
- an integer ``k``: a fetched batch is split into steps of at most ``k`` samples.
- ``"auto"`` (the default): the ``s``-th optimizer step covers at most ``2 ** (s / 256)``
  samples (rounded down), so a stream starts with one step per sample, when every sample
  moves the model most, and the step doubles every 256 steps. Draining a backlog, each step
  then covers about 1/370 of the samples learned so far (16 samples after ~5,500, 256 after
  ~94,000): the backlog costs ~2,000 small steps once, then drains at full batch size. A live
  stream whose batches are smaller than that limit steps once per batch, as before. Measured
  in ``bench/README.md`` (Peers).

The rule reads only the count of applied steps, which the LR schedule carries and checkpoints
restore, so a resumed trainer splits its batches exactly as the run it replaces.

>>> [max_step_samples("auto", s) for s in (0, 255, 256, 1024)], max_step_samples("batch", 5)
([1, 1, 2, 16], None)
"""

from __future__ import annotations

from typing import Literal

StepSamples = int | Literal["auto", "batch"]

# applied steps over which the "auto" step size doubles; it never exceeds 2**AUTO_MAX_DOUBLINGS
AUTO_DOUBLING_STEPS = 256
AUTO_MAX_DOUBLINGS = 20


def max_step_samples(rule: StepSamples, steps_taken: int) -> int | None:
    """The most samples the next step may cover; None means the whole fetched batch."""
    if rule == "batch":
        return None
    if rule == "auto":
        return int(2.0 ** min(steps_taken / AUTO_DOUBLING_STEPS, AUTO_MAX_DOUBLINGS))
    if isinstance(rule, int) and rule >= 1:
        return rule
    raise ValueError(f"step_samples must be 'auto', 'batch' or an integer >= 1, got {rule!r}")
