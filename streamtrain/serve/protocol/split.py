"""Traffic split and shadow: the live version and one candidate side by side.

A :class:`SplitPlan` names a candidate (a retained version, or ``newest``: the newest
retained version while it is not the live one, i.e. held back by a pin), a share and a mode:

* ``split``: a request goes to the candidate when the stable hash of its request id falls
  under the share (:func:`bucket`: BLAKE2b of the id, the same on every replica and after a
  restart), so a retried request, and the label that comes for it, stay on one arm. The
  answer names the version that computed it, as always; its prediction-log rows carry the
  arm ``candidate``.
* ``shadow``: every request is answered by the live version; for those whose hash falls
  under the share the candidate is computed too, after the answer is sent, on a background
  task, and logged with the arm ``shadow``. A shadow answer is never returned.

Only requests that name no version are routed: a request for ``/versions/{v}`` gets ``v``.
A request with no id (the prediction log off and none given) is routed by a random draw.
When the candidate is not loaded (evicted, or ``newest`` is the live one) every request is
served live, and a shadow computes nothing.

>>> bucket("req-1") == bucket("req-1"), 0.0 <= bucket("req-1") < 1.0
(True, True)
>>> TrafficSplit(SplitPlan("12", 0.5, "split")).plan.to_json()
{'candidate': '12', 'share': 0.5, 'mode': 'split'}
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.config import ServeSettings
from streamtrain.metrics import SERVE_ARM_REQUESTS, SERVE_SPLIT_SHARE
from streamtrain.serve.protocol.bodies import InferRequest, ProtocolError
from streamtrain.serve.weights.inference import Prediction
from streamtrain.serve.weights.retained import RetainedVersions
from streamtrain.wire.prediction_record import ARMS, Arm

log = logging.getLogger(__name__)
SplitMode = Literal["split", "shadow"]
NEWEST = "newest"
_SCALE = float(1 << 64)


def bucket(request_id: str) -> float:
    """The request id's place in [0, 1): stable across processes (no ``hash()`` salt)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class SplitPlan:
    """What share of requests the candidate gets, and whether it answers them."""

    candidate: str  # a version number, or "newest"
    share: float
    mode: SplitMode = "split"

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "share": self.share, "mode": self.mode}


class _PlanBody(msgspec.Struct, forbid_unknown_fields=True):
    candidate: int | str
    share: float
    mode: str = "split"


_PLAN_DECODER = msgspec.json.Decoder(_PlanBody)


def parse_plan(body: bytes) -> SplitPlan:
    """An admin body ``{"candidate": "12"|"newest", "share": 0.5, "mode": "split"}``;
    ProtocolError (400) saying what is wrong otherwise."""
    try:
        raw = _PLAN_DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(
            'a split needs a JSON body {"candidate": "<version>|newest", "share": 0.5, '
            f'"mode": "split"|"shadow"}}: {exc}'
        ) from None
    return make_plan(str(raw.candidate), raw.share, raw.mode)


def make_plan(candidate: str, share: float, mode: str) -> SplitPlan:
    """A checked plan (the admin body's and the ``serve.split_*`` settings' one rule)."""
    if candidate != NEWEST and parse_ascii_int(candidate) is None:
        raise ProtocolError(
            f"candidate must be a version number or {NEWEST!r}, got {candidate[:40]!r}"
        )
    if not 0.0 <= share <= 1.0:  # NaN fails too
        raise ProtocolError(f"share must be a fraction from 0 to 1, got {share}")
    if mode not in ("split", "shadow"):
        raise ProtocolError(f"mode must be 'split' or 'shadow', got {mode[:40]!r}")
    return SplitPlan(candidate, share, "split" if mode == "split" else "shadow")


def split_plan(serve: ServeSettings) -> SplitPlan | None:
    """The plan of the ``serve.split_*`` settings (None while no candidate is set); a bad
    candidate is a one-line ValueError naming the setting."""
    if serve.split_candidate is None:
        return None
    try:
        return make_plan(serve.split_candidate, serve.split_share, serve.split_mode)
    except ProtocolError as exc:
        raise ValueError(f"serve.split_candidate: {exc}") from None


class TrafficSplit:
    """The server's current plan (one attribute read per request) and its routing."""

    def __init__(self, plan: SplitPlan | None, retained: RetainedVersions | None = None) -> None:
        self._retained = retained
        self._arms = {arm: SERVE_ARM_REQUESTS.labels(arm) for arm in ARMS}
        self.plan: SplitPlan | None = None
        self.set(plan)

    def set(self, plan: SplitPlan | None) -> dict[str, Any]:
        """Replace the plan (None ends the split); the state document."""
        self.plan = None if plan is None or plan.share == 0.0 else plan
        for mode in ("split", "shadow"):
            on = self.plan is not None and self.plan.mode == mode
            SERVE_SPLIT_SHARE.labels(mode).set(self.plan.share if on and self.plan else 0.0)
        return self.state()

    def state(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "split": None if plan is None else plan.to_json(),
            "candidate_version": None if plan is None else self.candidate(None),
        }

    def candidate(self, live: int | None) -> int | None:
        """The candidate's version while it is loaded and not the live one, else None."""
        plan, retained = self.plan, self._retained
        if plan is None or retained is None:
            return None
        if live is None:
            info = retained.info
            live = None if info is None else info.version
        if plan.candidate == NEWEST:
            newest = retained.versions()
            version = newest[0] if newest else None
        else:
            version = parse_ascii_int(plan.candidate)
        if version is None or version == live or not retained.has(version):
            return None
        return version

    def route(self, request_id: str | None, live: int | None) -> tuple[Arm, int | None]:
        """(arm, version to answer with) for a request naming no version: ``candidate``
        and its version, ``shadow`` and the candidate to compute after answering live, or
        ``live`` and None."""
        plan = self.plan
        if plan is None:
            self._arms["live"].inc()
            return "live", None
        draw = bucket(request_id) if request_id is not None else random.random()
        version = self.candidate(live) if draw < plan.share else None
        arm: Arm = "live" if version is None else "candidate" if plan.mode == "split" else "shadow"
        self._arms[arm].inc()
        return arm, version


class Shadows:
    """Shadow computations in flight, each on a task of the loop that answered its request."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()  # the loop only keeps weak references

    def start(
        self,
        retained: RetainedVersions,
        version: int,
        request: InferRequest,
        logged: Callable[[InferRequest, Prediction, Arm], None],
    ) -> None:
        task = asyncio.get_running_loop().create_task(_shadow(retained, version, request, logged))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Let the shadows in flight finish (tests, and a server stopping)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _shadow(
    retained: RetainedVersions,
    version: int,
    request: InferRequest,
    logged: Callable[[InferRequest, Prediction, Arm], None],
) -> None:
    """Compute ``request`` on the candidate and log it as ``shadow``. The answer went out
    already: a failure is logged here and reaches no client."""
    try:
        computed = await retained.infer(version, request.features, request.sparse)
        if computed is not None:  # evicted meanwhile: nothing to compare
            logged(request, computed, "shadow")
    except Exception:
        log.exception("shadow inference on version %d failed", version)
