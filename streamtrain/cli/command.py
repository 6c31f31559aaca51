"""The `streamtrain` command; each subcommand lives in its own module of this package."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="streamtrain",
    help="Streaming online learning: Kafka samples in, PyTorch steps, hot-swapped weights out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Streaming online learning: Kafka samples in, PyTorch steps, hot-swapped weights out."""
