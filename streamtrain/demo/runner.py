"""Run the whole pipeline on one machine: broker, server, trainer, producer, live view, summary.

A run goes through these steps, in this order:

1. a fresh run directory (the in-memory broker starts empty, so old checkpoints' offsets would
   point into a stream that no longer exists);
2. the embedded broker, and every topic, created before any client needs them;
3. the server and the trainer, each with its log file in the run directory; once the trainer is
   ready (``/health/ready``: model built, topics found), the producer, so the first numbers
   shown are the trainer's own and not a backlog it drained before anyone watched;
4. wait until the server answers, then print every URL and a ready-to-paste ``curl`` example;
5. every half second: scrape both ``/metrics``, send a real sample to the server about once a
   second, check every child is alive, redraw; until ``--duration``, Ctrl-C or SIGTERM;
6. stop the children (SIGTERM, bounded wait, SIGKILL, reap), then the broker, last;
7. the summary; exit 0 only when every child behaved.

>>> options = DemoOptions(dataset="digits", duration=30)
>>> options.rate
2000.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console

from streamtrain.broker import BrokerUnavailable, EmbeddedBroker, free_port
from streamtrain.demo.dashboard import DemoStats, Prediction, make_dashboard
from streamtrain.demo.delayed import LabelMode
from streamtrain.demo.drift import DriftWatch, demo_dataset
from streamtrain.demo.join_view import DelayedLabelsWatch
from streamtrain.demo.lifecycle import DemoError, StopFlag, describe_exit, prepare_run_dir
from streamtrain.demo.plan import DemoPlan, choose_port, curl_command, infer_body
from streamtrain.demo.probe import ProbeError, SamplePool, predict
from streamtrain.demo.processes import Child, ProcessGroup, StopReport
from streamtrain.demo.scrape import Scrape, ScrapeError, scrape
from streamtrain.demo.stall import RateMeter, StallWatch
from streamtrain.demo.summary import SummaryTracker
from streamtrain.kafka.errors import KafkaUnreachable
from streamtrain.snapshot import wire
from streamtrain.snapshot.signing import generate_key_pair

TICK_SECONDS = 0.5
PROBE_EVERY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class DemoOptions:
    """The user's choices (the ``streamtrain demo`` flags)."""

    dataset: str = "hyperplane"
    duration: float | None = None
    rate: float = 2000.0
    port: int = 8000
    run_dir: Path | None = None
    startup_timeout: float = 120.0
    labels: LabelMode = "inline"


def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo (see the module docstring); returns the process exit code."""
    # The dataset first: an unknown name or a missing scikit-learn fails before anything starts.
    dataset, drift_every = demo_dataset(options.dataset, options.rate)
    pool = SamplePool.from_dataset(dataset, period=2 * drift_every if drift_every else None)
    run_dir = prepare_run_dir(options.run_dir)
    server_port, fell_back = choose_port(options.port)
    if fell_back:
        console.print(
            f"port {options.port} is busy; serving on {server_port} instead",
            style="yellow",
            markup=False,
        )
    console.print(f"run directory: {run_dir}", markup=False, highlight=False)
    with StopFlag() as stop:
        try:
            broker = EmbeddedBroker(log_path=run_dir / "broker.log", own_session=True).start()
        except BrokerUnavailable as exc:
            raise DemoError(str(exc)) from exc
        try:
            console.print(
                f"broker: {broker.bootstrap_servers} (pid {broker.pid}), "
                f"log {run_dir / 'broker.log'}",
                markup=False,
                highlight=False,
            )
            plan = DemoPlan.build(
                options.dataset,
                rate=options.rate,
                run_dir=run_dir,
                bootstrap_servers=broker.bootstrap_servers,
                server_port=server_port,
                trainer_port=free_port(),
                labels=options.labels,
                join_port=free_port() if options.labels == "delayed" else 0,
            )
            generate_key_pair(plan.key_dir, "trainer")  # throwaway, for this run only
            snapshots = plan.topics.snapshots  # with the base partition (docs/snapshots.md)
            try:
                broker.create_topics([name for name in plan.topic_names if name != snapshots])
                broker.create_topics([snapshots], wire.SNAPSHOT_PARTITIONS)
            except KafkaUnreachable as exc:  # a broker starved of CPU: one line, not a traceback
                raise DemoError(
                    f"the embedded broker started but did not answer ({exc}); see "
                    f"{run_dir / 'broker.log'}, and retry on a less loaded machine"
                ) from exc
            group = ProcessGroup(run_dir, stop_timeout=STOP_TIMEOUT_SECONDS)
            session = _Session(plan, pool, group, console, stop, options)
            try:
                session.run()
            finally:
                report = group.stop()
        finally:
            broker.stop()
    return session.finish(report)


class _Session:
    """One run of steps 3 to 7 (see the module docstring)."""

    def __init__(
        self,
        plan: DemoPlan,
        pool: SamplePool,
        group: ProcessGroup,
        console: Console,
        stop: StopFlag,
        options: DemoOptions,
    ) -> None:
        self.plan, self.group, self.console, self.stop = plan, group, console, stop
        self.options = options
        self.tracker = SummaryTracker()
        self.rate = RateMeter()
        self.stalls = StallWatch()
        self.failed: Child | None = None
        self.startup_error: str | None = None
        self.pool = pool
        self.http = httpx.Client()
        self.trainer_scrape: Scrape | None = None
        self.server_scrape: Scrape | None = None
        self.prediction: Prediction | None = None
        self.sent = self.correct = 0
        self.announced_ready = False
        self.drift = DriftWatch(plan.drift_every) if plan.drift_every else None
        self.join_scrape: Scrape | None = None
        self.delayed = DelayedLabelsWatch(plan.status_path) if plan.labels == "delayed" else None

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def run(self) -> None:
        env = self.plan.child_env()
        commands = self.plan.commands()
        # Server and trainer together (each takes seconds to import PyTorch), the producer once
        # the trainer is ready: the producer starts in about a second, and the viewer then sees
        # training from its first sample instead of a backlog drained before the first line.
        first = [name for name in commands if name != "producer"]
        self.say(f"starting the {' and the '.join(first)} (each imports PyTorch: a few seconds)")
        for name in first:
            self._start(name, commands[name], env)
        if not self._wait_until_up(self.plan.ready_urls):
            return
        self.say(
            f"{' and '.join(self.plan.ready_urls)} ready; starting the producer: "
            f"{self.plan.rate:,.0f} samples/s of {self.plan.dataset.name}"
        )
        if self.delayed is not None:
            self.say(self.delayed.intro())
        if self.drift is not None:
            self.say(self.drift.intro(self.plan.rate))
        self._start("producer", commands["producer"], env)
        if not self._wait_until_up({"server": f"{self.plan.server_url}/v2/health/live"}):
            return
        self._print_endpoints()
        started = time.monotonic()
        title = f"streamtrain demo: {self.plan.dataset.name} -> {self.plan.model}"
        with make_dashboard(self.console, title) as dashboard:
            next_probe = 0.0
            while not self.stop.event.is_set():
                tick = time.monotonic()
                elapsed = tick - started
                if self.options.duration is not None and elapsed >= self.options.duration:
                    break
                if self._check_children():
                    return
                self._scrape()
                if tick >= next_probe:
                    next_probe = tick + PROBE_EVERY_SECONDS
                    self._probe()
                stats = DemoStats.from_scrapes(
                    elapsed,
                    self.trainer_scrape,
                    self.server_scrape,
                    self.prediction,
                    self.correct,
                    self.sent,
                )
                stats = self._honest(stats)
                if self.delayed is not None:
                    join = self.delayed.observe(self.join_scrape, self.server_scrape)
                    stats = dataclasses.replace(stats, join=join)
                self.tracker.observe(stats)
                self._announce_drift(stats.samples_trained)
                dashboard.update(stats)
                self.stop.event.wait(max(0.0, TICK_SECONDS - (time.monotonic() - tick)))
        if self.stop.signal_name:
            self.say(f"{self.stop.signal_name} received: stopping every process")

    def _honest(self, stats: DemoStats) -> DemoStats:
        """samples/s from the trained counter (0 when nothing is learned), and stalls noted."""
        self.rate.observe(stats.elapsed, stats.samples_trained)
        lag = (self.trainer_scrape or Scrape()).total("streamtrain_ingest_consumer_lag_records")
        self.stalls.observe(stats.elapsed, stats.samples_trained, lag, stats.data_age_seconds)
        return dataclasses.replace(stats, samples_per_second=self.rate.rate)

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        child = self.group.start(name, argv, env, may_finish=name == "producer")
        self.say(f"{name}: pid {child.pid}, log {child.log_path}")

    def _check_children(self) -> bool:
        self.failed = self.group.failed()
        return self.failed is not None

    def _announce_drift(self, samples_trained: float) -> None:
        if self.drift is not None and (at := self.drift.crossed(samples_trained)) is not None:
            self.say(self.drift.announcement(at), "magenta")

    def _wait_until_up(self, pending: dict[str, str]) -> bool:
        """Wait until each named process answers 200 at its URL (steps 3 and 4)."""
        deadline = time.monotonic() + self.options.startup_timeout
        while pending:
            if self.stop.event.is_set() or self._check_children():
                return False
            if time.monotonic() > deadline:
                names = " and ".join(pending)
                self.startup_error = (
                    f"{names} did not answer within {self.options.startup_timeout:.0f} s; "
                    f"see the logs in {self.plan.run_dir}"
                )
                return False
            for name, url in list(pending.items()):
                try:
                    if self.http.get(url, timeout=1.0).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            self.stop.event.wait(0.2)
        return True

    def _print_endpoints(self) -> None:
        features, _ = self.pool.near(0, 0)
        body = infer_body(features, self.plan.dataset.spec.feature_shape)
        self.say(f"trainer metrics: {self.plan.trainer_metrics_url}")
        self.say(f"server metrics:  {self.plan.server_metrics_url}")
        if self.delayed is not None:
            self.say(f"join metrics:    {self.plan.join_metrics_url}")
        self.say(f"infer endpoint:  POST {self.plan.infer_url}")
        self.say("try it (answers once the first snapshot is live):")
        self.say(curl_command(self.plan.infer_url, body))

    def _scrape(self) -> None:
        # A failed scrape keeps the previous numbers; a dead child is caught by the liveness
        # check, so one slow answer does not end the demo.
        with contextlib.suppress(ScrapeError):
            self.trainer_scrape = scrape(self.plan.trainer_metrics_url, 1.0, self.http)
        with contextlib.suppress(ScrapeError):
            self.server_scrape = scrape(self.plan.server_metrics_url, 1.0, self.http)
        if self.delayed is not None:
            with contextlib.suppress(ScrapeError):
                self.join_scrape = scrape(self.plan.join_metrics_url, 1.0, self.http)

    def _probe(self) -> None:
        version = (
            self.server_scrape.value("streamtrain_serve_model_version")
            if (self.server_scrape)
            else None
        )
        if not version:
            return
        trained = self.tracker.last.samples_trained
        features, label = self.pool.near(int(trained), self.sent)
        try:
            self.prediction = predict(
                self.http,
                self.plan.infer_url,
                features,
                label,
                self.plan.dataset.spec.feature_shape,
            )
        except ProbeError as exc:
            self.say(f"prediction failed: {exc}", style="yellow")
            return
        self.sent += 1
        self.correct += self.prediction.correct
        if not self.announced_ready:
            self.announced_ready = True
            self.say(
                f"first snapshot live: the server answers with version "
                f"{self.prediction.model_version}"
            )

    def finish(self, report: StopReport) -> int:
        """Step 7: say how it ended; 0 only when every child behaved."""
        self.http.close()
        if self.failed is not None:
            self.say(
                f"the {self.failed.name} {describe_exit(self.failed.returncode)} unexpectedly; "
                f"the others were stopped. Last lines of {self.failed.log_path}:",
                "red",
            )
            self.say(self.failed.tail(30))
            return 1
        if self.startup_error is not None:
            self.say(self.startup_error, "red")
            return 1
        self.say("summary:", "bold")
        for line in self.tracker.lines() + (self.delayed.lines() if self.delayed else []):
            self.say(f"  {line}")
        if self.drift is not None:
            passed = self.drift.last_announced // self.drift.period
            self.say(
                f"  concept drifts the trainer went through: {passed} (one every "
                f"{self.drift.period:,} samples; accuracy dips after each)"
            )
        self.say(f"logs and checkpoints: {self.plan.run_dir}")
        stalls = self.stalls.lines(str(self.plan.run_dir / "broker.log"))
        for line in stalls:
            self.say(line, "red")
        if not report.clean:
            for name, code in report.exit_codes.items():
                if name in report.killed:
                    self.say(
                        f"the {name} ignored SIGTERM for {STOP_TIMEOUT_SECONDS:.0f} s "
                        "and was killed",
                        "red",
                    )
                elif code not in (0, -signal.SIGTERM):
                    self.say(f"the {name} exited with code {code} on stop; see its log", "red")
            return 1
        self.say("every process stopped cleanly")
        return 1 if stalls else 0
