"""`streamtrain train`: build the trainer from settings and run it until stopped."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from streamtrain.cli.command import app
from streamtrain.cli.common import (
    CONFIG_OPTION,
    ExitCode,
    bind_failure_message,
    bound_url,
    describe_model,
    fail,
    is_kafka_failure,
    kafka_failure_message,
    require_writable_dir,
    settings_from,
    setup_logging,
)
from streamtrain.extras import MissingExtra

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from streamtrain.config import Settings
    from streamtrain.train.loop import Trainer
    from streamtrain.train.progress import TrainSummary


@app.command(short_help="Learn from the samples topic; publish weight snapshots.")
def train(
    config: Path | None = CONFIG_OPTION,
    bootstrap_servers: str | None = typer.Option(None, help="Kafka host:port list."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda[:N]."),
    checkpoint_dir: Path | None = typer.Option(None, help="Where checkpoints are kept."),
    metrics_port: int | None = typer.Option(None, help="Port of /metrics (0 = any free)."),
    max_samples: int | None = typer.Option(None, help="Stop after learning this many samples."),
    stop_when_idle: float | None = typer.Option(
        None, help="Stop after this many seconds without input."
    ),
    create_missing_topics: bool = typer.Option(
        True, help="Create the samples, dead-letter and snapshot topics if missing."
    ),
    torch_threads: int | None = typer.Option(
        None, min=1, help="torch intra-op threads (1 suits small models on shared CPUs)."
    ),
    nproc: int = typer.Option(
        1, min=1, help="Trainer ranks on this host, one model (relaunches under torchrun)."
    ),
    max_restarts: int = typer.Option(
        0, min=0, help="With --nproc: times torchrun restarts the group after a rank dies."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Consume samples, take gradient steps, publish snapshots, checkpoint; Ctrl-C stops cleanly."""
    if (
        "TORCHELASTIC_RUN_ID" in os.environ
    ):  # a torchrun worker (torch's own test): tie it to its agent
        from streamtrain.distributed.agent_lifetime import die_with_agent

        die_with_agent()
    setup_logging(verbose)
    settings = settings_from(
        config,
        kafka__bootstrap_servers=bootstrap_servers,
        train__device=device,
        train__checkpoint_dir=checkpoint_dir,
        train__metrics_port=metrics_port,
        train__max_samples=max_samples,
        train__stop_when_idle=stop_when_idle,
        train__torch_threads=torch_threads,
    )
    # The order is the argument: (1) local mistakes first, since seconds of Kafka retries or a
    # model build would hide them; (2) only then become torchrun, so every rank inherits checked
    # settings; (3) /metrics and health up before the slow build, so a probe sees the start;
    # (4) build, (5) run.
    _check_local(settings)
    if nproc > 1:
        _relaunch(settings, nproc, max_restarts)
    server = _serve_metrics(settings)
    trainer = _build(settings, create_missing_topics)
    _run(settings, trainer, server)


def _check_local(settings: Settings) -> None:
    """Mistakes found without the network: an unwritable checkpoint dir, an unreadable key."""
    require_writable_dir(settings.train.checkpoint_dir, "--checkpoint-dir")
    if settings.train.signing_key is not None:
        from streamtrain.snapshot.signing import KeyFileError, load_private_key

        try:
            load_private_key(settings.train.signing_key)
        except KeyFileError as exc:
            fail(str(exc))


def _serve_metrics(settings: Settings) -> WSGIServer:
    """Start /metrics and the health routes of this rank; a port in use is a one-line exit."""
    # torch is imported here, not at module level, so other subcommands start fast.
    from streamtrain import health, metrics

    health.HEALTH.configure(settings.train.liveness_timeout_s)
    metrics_port = settings.train.metrics_port
    if metrics_port:  # ranks on one host: base port + local rank (0 stays "any free port")
        metrics_port += int(os.environ.get("LOCAL_RANK", "0"))
    registry = metrics.TRAINER_REGISTRY
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from streamtrain.distributed.rank_metrics import rank_registry

        registry = rank_registry(registry, int(os.environ["RANK"]))
    try:
        return metrics.serve_metrics(
            registry, metrics_port, settings.train.metrics_host, routes=health.routes()
        )
    except OSError as exc:
        fail(
            bind_failure_message("--metrics-port", settings.train.metrics_host, metrics_port, exc),
            ExitCode.LOCAL_RESOURCE,
        )


def _build(settings: Settings, create_missing_topics: bool) -> Trainer:
    """Create the topics (when asked) and build the trainer; each known failure is one line
    with its own exit code, anything else is a bug and keeps its traceback."""
    from streamtrain.builders.trainer import build_trainer
    from streamtrain.kafka import KafkaConfigError, KafkaConnection, create_topics
    from streamtrain.snapshot import wire

    topics = settings.topics
    try:
        kafka = KafkaConnection.from_settings(settings.kafka)
    except KafkaConfigError as exc:
        fail(str(exc))
    try:
        if create_missing_topics:
            create_topics(kafka, [topics.samples], topics.sample_partitions)
            create_topics(kafka, [topics.dead_letter], 1)
            create_topics(kafka, [topics.snapshots], wire.SNAPSHOT_PARTITIONS)  # base partition
        return build_trainer(settings)
    except Exception as exc:
        if isinstance(exc, MissingExtra):
            fail(str(exc), ExitCode.MISSING_EXTRA)
        if isinstance(exc, ValueError):  # settings the model or the client library refuse
            fail(str(exc))
        if is_kafka_failure(exc) or isinstance(exc, ConnectionError | TimeoutError):
            fail(
                kafka_failure_message(settings.kafka.bootstrap_servers, exc),
                ExitCode.KAFKA_UNREACHABLE,
            )
        raise


def _run(settings: Settings, trainer: Trainer, server: WSGIServer) -> None:
    """Run until stopped (SIGTERM/SIGINT ask the trainer to stop at a step boundary), then
    leave the group, stop /metrics and print the summary line."""
    from streamtrain import metrics
    from streamtrain.checkpoint import WorldSizeMismatch
    from streamtrain.devices import resolve_device
    from streamtrain.ingest.decode_pool import DecodeWorkerLost
    from streamtrain.ingest.log_watch import OffsetResetFailed
    from streamtrain.snapshot.versions import VersionLookupFailed
    from streamtrain.train.prefetch import SourceFailed

    describe_model(metrics.TRAIN_MODEL_INFO, settings)
    if resolve_device(settings.train.device).type == "cuda":
        metrics.export_cuda_metrics()
    typer.echo(f"trainer metrics: {bound_url(server, '/metrics')}")
    typer.echo(f"trainer health:  {bound_url(server, '/health/ready')}")
    from streamtrain.distributed.lockstep import LockstepTrainer

    def stop_at_a_step_boundary() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: trainer.request_stop())

    # Until the trainer has restored (a checkpoint read, the newest version looked up on the
    # snapshot topic: up to Kafka's timeouts with a slow broker, inside client calls that run
    # no Python signal handler until they return), SIGTERM and SIGINT end the process at once,
    # as they do while it builds: nothing is learned or written before the first step. Ranks
    # of a job restore together (collectives), so they stop together at a step boundary.
    if isinstance(trainer, LockstepTrainer):
        stop_at_a_step_boundary()
    else:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
    try:
        summary = trainer.run(on_restored=stop_at_a_step_boundary)
    except WorldSizeMismatch as exc:
        server.shutdown()
        fail(str(exc))
    except VersionLookupFailed as exc:
        server.shutdown()
        fail(str(exc), ExitCode.KAFKA_UNREACHABLE)
    except SourceFailed as exc:
        if isinstance(exc.__cause__, DecodeWorkerLost):  # issue 29: one line, exit 1
            server.shutdown()
            fail(str(exc.__cause__), ExitCode.FAILED)
        if not isinstance(exc.__cause__, OffsetResetFailed):
            raise
        server.shutdown()
        fail(str(exc.__cause__), ExitCode.OFFSET_RESET)
    finally:
        _leave_group(trainer)
    server.shutdown()
    _print_summary(summary)


def _relaunch(settings: Settings, nproc: int, max_restarts: int) -> NoReturn:
    """Refuse a rank count the topic cannot feed here, in one line, then become torchrun."""
    from streamtrain.distributed.group import PartitionShareError
    from streamtrain.distributed.launch import check_rank_share, relaunch_under_torchrun
    from streamtrain.kafka import KafkaConfigError

    try:
        check_rank_share(settings, nproc)
    except (PartitionShareError, KafkaConfigError, ValueError) as exc:
        fail(str(exc))
    except Exception as exc:
        if is_kafka_failure(exc) or isinstance(exc, ConnectionError | TimeoutError):
            fail(
                kafka_failure_message(settings.kafka.bootstrap_servers, exc),
                ExitCode.KAFKA_UNREACHABLE,
            )
        raise
    relaunch_under_torchrun(nproc, max_restarts, sys.argv)


def _leave_group(trainer: Trainer) -> None:
    from streamtrain.distributed.lockstep import LockstepTrainer

    if isinstance(trainer, LockstepTrainer):
        trainer.group.close()


def _print_summary(summary: TrainSummary) -> None:
    """The stop line, in the words of README and docs/metrics.md: the trainer *step* (what
    versions and checkpoints count) and samples learned are the run's; optimizer updates and
    rejected records are this process's."""
    resumed = (
        f", resumed from step {summary.resumed_from_step}"
        if summary.resumed_from_step is not None
        else ""
    )
    typer.echo(
        f"stopped ({summary.stop_reason}) run {summary.run_id} at step {summary.steps}: "
        f"{summary.samples_seen} samples learned; this process: "
        f"{summary.optimizer_updates} optimizer updates, "
        f"{summary.records_rejected} records rejected, {summary.elapsed_seconds:.1f} s{resumed}; "
        f"rolling loss {summary.rolling_loss:.4f}, {summary.score_name} "
        f"{summary.rolling_score:.4f}"
    )
    if summary.samples_seen == 0:
        typer.echo(
            "nothing learned, so no snapshot was published"
            + (
                f": all {summary.records_rejected} records were rejected (see the WARNING "
                "lines above and the dead-letter topic)"
                if summary.records_rejected
                else ""
            )
        )
