"""What ``streamtrain demo --labels delayed`` changes: the prediction log on the server, the
join's window and the label delays (the plan, :class:`streamtrain.demo.plan.DemoPlan`, adds the
join process and the application of :mod:`streamtrain.demo.label_app` in place of the
producer; ``docs/labels.md`` has the whole loop).

>>> from pathlib import Path
>>> delayed_env()["STREAMTRAIN_SERVE__PREDICTION_LOG"]
'true'
"""

from __future__ import annotations

from typing import Literal

LabelMode = Literal["inline", "delayed"]
LABEL_MODES: tuple[LabelMode, ...] = ("inline", "delayed")

# The outcome of a served row "happens" this long after its prediction, uniformly at random.
LABEL_DELAY_MIN_SECONDS = 0.5
LABEL_DELAY_MAX_SECONDS = 3.0
# Each served row then travels over HTTP, the prediction log, the labels topic and the join:
# a lower default rate than the inline demo's keeps the four processes within two cores.
DELAYED_DEFAULT_RATE = 500.0
# Labels arrive within 3 s; a window of 10 s expires only predictions whose label never came.
JOIN_WINDOW_SECONDS = 10.0
JOIN_SESSION_TIMEOUT_MS = 2000


def delayed_env() -> dict[str, str]:
    """Settings for every child of a delayed-labels run (env vars onto streamtrain/config/):
    the server logs what it serves; the join's window suits the demo's delays."""
    return {
        "STREAMTRAIN_SERVE__PREDICTION_LOG": "true",
        "STREAMTRAIN_JOIN__WINDOW_S": f"{JOIN_WINDOW_SECONDS:g}",
        # The embedded broker holds a group join for about half the session timeout.
        "STREAMTRAIN_JOIN__SESSION_TIMEOUT_MS": str(JOIN_SESSION_TIMEOUT_MS),
    }
