"""Promotion by served quality (``serve.promotion``, off by default): a server with a traffic
split or shadow reads the predictions and labels topics, scores what each arm served
(:mod:`streamtrain.quality`) and promotes the candidate or rolls it back by the rule of
:mod:`streamtrain.quality.promotion`.

Order of events:

1. At start both topics are read from their end: only rows served from now on count. The
   thread polls both and pairs rows with labels as the join's served quality does.
2. Every ``serve.promotion_check_s`` it compares the live arm (rows of the live version
   answered live) with the candidate arm (rows of the candidate version, ``candidate`` in a
   split, ``shadow`` in a shadow). A new or changed split starts a fresh tally: no row of an
   earlier comparison counts.
3. ``promote``: the candidate goes live: ``unpin`` when it is the newest retained version and
   a pin held it back, else ``pin`` to it. ``rollback``: the live version stays. Either
   way the split ends, the decision is logged with its evidence (rows, mean losses,
   difference, z) and counted in ``streamtrain_serve_promotion_decisions_total``.

Every replica decides on its own from the same topics, so replicas of one split reach the
same decision within a check or two of each other; all log every served row, so each sees
the traffic of all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streamtrain.kafka.consumer import RecordConsumer
from streamtrain.metrics import SERVE_PROMOTION_DECISIONS
from streamtrain.quality.books import TallyReport, VersionBooks
from streamtrain.quality.pairing import ServedQuality
from streamtrain.quality.promotion import DECISIONS, ArmLoss, PromotionRule, Verdict, decide
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.protocol.split import NEWEST, SplitPlan, TrafficSplit
from streamtrain.serve.weights.retained import RetainedVersions

log = logging.getLogger(__name__)
_POLL_MS = 100
_BATCH = 10_000


class PromotionWatch:
    """The thread of steps 1-3 over one server's split and retained versions."""

    def __init__(
        self,
        *,
        split: TrafficSplit,
        retained: RetainedVersions,
        spec: SampleSpec,
        rule: PromotionRule,
        consumer: Callable[[str], RecordConsumer],
        predictions: str,
        labels: str,
        check_every_s: float = 2.0,
    ) -> None:
        self._split = split
        self._retained = retained
        self._spec = spec
        self._rule = rule
        self._consumer = consumer
        self._topics = (predictions, labels)
        self._every_s = check_every_s
        self._stop = threading.Event()
        self._plan: SplitPlan | None = None
        self.pairs = self._fresh()
        self._decided = {d: SERVE_PROMOTION_DECISIONS.labels(d) for d in DECISIONS}  # at 0
        self._thread = threading.Thread(target=self._run, name="promotion", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _fresh(self) -> ServedQuality:
        return ServedQuality(VersionBooks(self._spec, keep=8, window_s=3600.0))

    def _run(self) -> None:
        try:
            consumers = [self._open(topic) for topic in self._topics]
        except Exception:
            log.exception("promotion: cannot read the predictions and labels topics; off")
            return
        try:
            last = time.monotonic()
            while not self._stop.is_set():
                for topic, consumer in zip(self._topics, consumers, strict=True):
                    for record in consumer.poll(_POLL_MS, _BATCH):
                        self.pairs.observe(record, topic == self._topics[0])
                if time.monotonic() - last >= self._every_s:
                    last = time.monotonic()
                    self.check()
        except Exception:
            log.exception("promotion: the watch failed; no more decisions until a restart")
        finally:
            for consumer in consumers:
                consumer.close()

    def _open(self, topic: str) -> RecordConsumer:
        consumer = self._consumer(topic)
        partitions = consumer.partitions_of_topic()
        consumer.assign(partitions)
        consumer.seek_to_end(partitions)
        return consumer

    def check(self) -> Verdict | None:
        """Step 2 and, on a decision, step 3; the verdict (None without a comparison)."""
        plan = self._split.plan
        if plan is not self._plan:
            self._plan, self.pairs = plan, self._fresh()
            return None
        info = self._retained.info
        candidate = self._split.candidate(None)
        if plan is None or info is None or candidate is None:
            return None
        arm = "candidate" if plan.mode == "split" else "shadow"
        reports: dict[tuple[str, str], TallyReport] = {
            (r.version, r.arm): r for r in self.pairs.books.report()
        }
        verdict = decide(
            self._rule,
            _loss(reports.get((str(info.version), "live"))),
            _loss(reports.get((str(candidate), arm))),
        )
        if verdict.decision is not None:
            self._act(verdict, plan, info.version, candidate)
        return verdict

    def _act(self, verdict: Verdict, plan: SplitPlan, live: int, candidate: int) -> None:
        if verdict.decision == "promote":
            held_back = self._retained.state()["pinned"] is not None
            if held_back and (
                plan.candidate == NEWEST or self._retained.versions()[:1] == [candidate]
            ):
                self._retained.unpin()
            else:
                self._retained.pin(candidate)
        self._split.set(None)
        self._decided[verdict.decision or "rollback"].inc()
        log.warning(
            "promotion: %s candidate %d (live was %d; %s, margin %g, %s): %s",
            verdict.decision,
            candidate,
            live,
            plan.mode,
            self._rule.margin,
            _test_name(self._rule),
            verdict.evidence(),
        )


def _test_name(rule: PromotionRule) -> str:
    if rule.test == "welch":
        return f"welch z >= {rule.z:g}"
    return f"msprt alpha {rule.alpha:g} tau {rule.tau:g}"


def _loss(report: TallyReport | None) -> ArmLoss:
    if report is None:
        return ArmLoss(0, 0.0, 0.0)
    return ArmLoss(report.labelled, report.loss_sum, report.loss_squares)
