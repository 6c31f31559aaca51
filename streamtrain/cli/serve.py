"""`streamtrain serve`: answer Open Inference Protocol requests with hot-swapped weights."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import NoReturn

import typer

from streamtrain.cli.command import app
from streamtrain.cli.common import (
    CONFIG_OPTION,
    ExitCode,
    describe_model,
    fail,
    host_failure_message,
    is_host_failure,
    port_in_use_message,
    settings_from,
    setup_logging,
)
from streamtrain.extras import MissingExtra


@app.command(short_help="Serve predictions (KServe v2 HTTP/gRPC), following snapshots.")
def serve(
    config: Path | None = CONFIG_OPTION,
    bootstrap_servers: str | None = typer.Option(None, help="Kafka host:port list."),
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="HTTP port (default 8000; 0 picks a free one)."),
    model_name: str | None = typer.Option(None, help="Model name in the /v2/models/{name} URLs."),
    snapshots_topic: str | None = typer.Option(None, help="Topic the trainer publishes to."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Serve predictions over HTTP (KServe v2 / Open Inference Protocol), following the
    trainer's weight snapshots. The model comes from the settings (model.*), which must
    match the trainer's: snapshots of another configuration are refused."""
    setup_logging(verbose)
    settings = settings_from(
        config,
        {"topics__snapshots": "--snapshots-topic"},
        kafka__bootstrap_servers=bootstrap_servers,
        serve__host=host,
        serve__port=port,
        serve__model_name=model_name,
        topics__snapshots=snapshots_topic,
    )
    _check_host(settings.serve.host)
    from streamtrain.builders.server import build_worker  # keeps `streamtrain --help` fast

    try:
        worker = build_worker(settings)
    except MissingExtra as exc:
        fail(str(exc), ExitCode.MISSING_EXTRA)
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        if is_host_failure(exc):
            _bad_host(settings.serve.host, exc)
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            fail(port_in_use_message("--port", settings.serve.port, exc), ExitCode.LOCAL_RESOURCE)
        fail(str(exc), ExitCode.FAILED)
    from streamtrain.metrics import SERVE_MODEL_INFO

    describe_model(SERVE_MODEL_INFO, settings)
    typer.echo(f"serving model {settings.serve.model_name!r} on {worker.url}", color=False)
    typer.echo(f"  infer:   POST {worker.url}/v2/models/{settings.serve.model_name}/infer")
    typer.echo(f"  ready:   GET  {worker.url}/v2/health/ready")
    typer.echo(f"  metrics: GET  {worker.metrics_url}")
    if worker.grpc is not None:
        typer.echo(f"  grpc:    {worker.grpc.target} (KServe v2 GRPCInferenceService)")
    if worker.prediction_log is not None:
        typer.echo(f"  log:     every served sample to topic {settings.topics.predictions!r}")
    worker.run()


def _check_host(host: str) -> None:
    """Bind a free port on ``host`` before anything starts: the gRPC server, which binds
    first, reported a host that does not resolve or is not this machine's as a port to change."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.bind(address)
    except OSError as exc:
        if is_host_failure(exc):
            _bad_host(host, exc)
        # anything else (permissions, say) is reported by the real bind, with its port


def _bad_host(host: str, exc: OSError) -> NoReturn:
    fail(host_failure_message("serve.host", host, exc, "--host / serve.host"))
