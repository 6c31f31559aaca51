"""The `streamtrain` command; each subcommand lives in its own module of this package.

Help is click's plain formatter (``rich_markup_mode=None``): it wraps to the terminal width
without cutting flag names, which the boxed rich layout does at 80 columns.
"""

from __future__ import annotations

import importlib.metadata

import typer

app = typer.Typer(
    name="streamtrain",
    help="Streaming online learning: Kafka samples in, PyTorch steps, hot-swapped weights out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # Inherited by every subcommand's context: -h works wherever --help does.
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"streamtrain {importlib.metadata.version('streamtrain')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the installed version and exit.",
    ),
) -> None:
    """Streaming online learning: Kafka samples in, PyTorch steps, hot-swapped weights out.

    Every subcommand takes -h/--help; settings come from a YAML file (--config), STREAMTRAIN_*
    variables and flags (docs/configuration.md); `streamtrain config check` validates them.
    """
