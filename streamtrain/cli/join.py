"""`streamtrain join`: join delayed labels to logged predictions into training samples."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from streamtrain.cli.command import app
from streamtrain.cli.common import (
    CONFIG_OPTION,
    ExitCode,
    bind_failure_message,
    bound_url,
    fail,
    is_kafka_failure,
    kafka_failure_message,
    require_writable_dir,
    settings_from,
    setup_logging,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from streamtrain.builders.join import RunningJoin
    from streamtrain.config import Settings


@app.command(short_help="Join delayed labels to logged predictions, exactly once.")
def join(
    config: Path | None = CONFIG_OPTION,
    bootstrap_servers: str | None = typer.Option(None, help="Kafka host:port list."),
    state_dir: Path | None = typer.Option(
        None, help="Folder of the per-partition join state (shared by replicas)."
    ),
    metrics_port: int | None = typer.Option(None, help="Port of /metrics (0 = any free)."),
    create_missing_topics: bool = typer.Option(
        True, help="Create the samples, predictions, labels and dead-letter topics if missing."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Match each label on the labels topic to its logged prediction and emit the served
    sample with that label to the samples topic, exactly once; run one per partition at most
    (replicas share the partitions through a consumer group)."""
    from streamtrain import health, metrics
    from streamtrain.builders.join import build_join, join_policy
    from streamtrain.kafka import KafkaConfigError

    setup_logging(verbose)
    settings = settings_from(
        config,
        kafka__bootstrap_servers=bootstrap_servers,
        join__state_dir=state_dir,
        join__metrics_port=metrics_port,
    )
    require_writable_dir(settings.join.state_dir, "--state-dir")
    try:
        join_policy(settings)
    except ValueError as exc:
        fail(str(exc))
    health.HEALTH.configure(settings.join.liveness_timeout_s)
    port = settings.join.metrics_port
    try:
        server = metrics.serve_metrics(
            metrics.JOIN_REGISTRY, port, settings.join.metrics_host, routes=health.routes()
        )
    except OSError as exc:
        fail(
            bind_failure_message("--metrics-port", settings.join.metrics_host, port, exc),
            ExitCode.LOCAL_RESOURCE,
        )
    servers = settings.kafka.bootstrap_servers
    try:
        running = build_join(settings, create_missing_topics=create_missing_topics)
    except KafkaConfigError as exc:
        server.shutdown()
        fail(str(exc))
    except Exception as exc:
        server.shutdown()
        if is_kafka_failure(exc) or isinstance(exc, ConnectionError | TimeoutError):
            fail(kafka_failure_message(servers, exc), ExitCode.KAFKA_UNREACHABLE)
        raise
    typer.echo(f"join metrics: {bound_url(server, '/metrics')}")
    typer.echo(f"join health:  {bound_url(server, '/health/ready')}")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: running.joiner.request_stop())
    _run_until_stopped(settings, running, server)


def _run_until_stopped(settings: Settings, running: RunningJoin, server: WSGIServer) -> None:
    """Run the joiner until stopped; each known failure is one line with its own exit code,
    anything else is a bug and keeps its traceback. /metrics stops in every case."""
    from streamtrain.join.joiner import JoinDeliveryError
    from streamtrain.join.log_lost import JoinLogLost
    from streamtrain.join.samples_log import SamplesLogTimeout
    from streamtrain.join.state_file import StateFileError
    from streamtrain.kafka.group_consumer import CoPartitionError

    topics = settings.topics
    try:
        running.joiner.run()
        running.close()
    except StateFileError as exc:
        fail(str(exc), ExitCode.FAILED)
    except JoinLogLost as exc:
        fail(str(exc), ExitCode.OFFSET_RESET)
    except CoPartitionError as exc:
        fail(str(exc))
    except (JoinDeliveryError, SamplesLogTimeout) as exc:
        fail(str(exc), ExitCode.FAILED)
    except Exception as exc:
        if is_kafka_failure(exc):
            fail(
                kafka_failure_message(settings.kafka.bootstrap_servers, exc),
                ExitCode.KAFKA_UNREACHABLE,
            )
        raise
    finally:
        server.shutdown()
    typer.echo(f"join stopped: {topics.predictions} + {topics.labels} -> {topics.samples}")
