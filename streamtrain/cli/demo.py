"""`streamtrain demo`: broker, producer, trainer and server on this machine, watched live."""

from __future__ import annotations

from pathlib import Path

import typer

from streamtrain.cli.command import app
from streamtrain.cli.common import ExitCode, fail


@app.command(short_help="Run the whole pipeline on this machine, with a live view.")
def demo(
    dataset: str = typer.Option(
        "hyperplane",
        help="hyperplane (16 features, concept drift; MLP) or digits (8x8 images; "
        "CNN; needs scikit-learn).",
    ),
    duration: float | None = typer.Option(
        None, min=1, help="Stop after this many seconds and print a summary (default: Ctrl-C)."
    ),
    rate: float | None = typer.Option(
        None,
        min=1,
        help="Samples per second the producer sends (default 2000; 500 with --labels delayed).",
    ),
    labels: str = typer.Option(
        "inline",
        help="inline (samples carry their label) or delayed: the producer asks the server over "
        "HTTP and sends each label 0.5-3 s later; the server logs predictions and a join "
        "pairs them (docs/labels.md).",
    ),
    port: int = typer.Option(
        8000, min=0, max=65535, help="Server HTTP port; a free one is used if it is busy."
    ),
    run_dir: Path | None = typer.Option(
        None,
        help="Folder for logs and checkpoints (default runs/demo-<time>; must be new).",
        file_okay=False,
    ),
) -> None:
    """Run the whole pipeline on this machine (no Docker): an embedded Kafka broker, a
    producer, the trainer and a server, with live training and serving numbers scraped from
    their /metrics endpoints. Ctrl-C stops everything cleanly."""
    from rich.console import Console

    from streamtrain.broker import BrokerUnavailable, find_broker_binary
    from streamtrain.datasets import DatasetError, get_dataset
    from streamtrain.demo import DemoError, DemoOptions, run_demo
    from streamtrain.demo.delayed import DELAYED_DEFAULT_RATE, LABEL_MODES

    if labels not in LABEL_MODES:
        fail(f"--labels {labels!r} is not a mode; use inline or delayed")
    try:
        get_dataset(dataset)  # a bad flag: exit 2 before anything starts (it was exit 1 later)
    except DatasetError as exc:
        fail(f"--dataset: {exc}")
    if rate is None:
        rate = DELAYED_DEFAULT_RATE if labels == "delayed" else DemoOptions.rate
    try:
        find_broker_binary()
    except BrokerUnavailable as exc:
        fail(f"demo runs its own Kafka broker, but {exc}", ExitCode.MISSING_EXTRA)
    options = DemoOptions(
        dataset=dataset,
        duration=duration,
        rate=rate,
        port=port,
        run_dir=run_dir,
        labels="delayed" if labels == "delayed" else "inline",
    )
    try:
        code = run_demo(options, Console(soft_wrap=True))
    except (DemoError, DatasetError) as exc:
        fail(str(exc), ExitCode.FAILED)
    raise typer.Exit(code)
