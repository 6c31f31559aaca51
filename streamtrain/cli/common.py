"""Helpers every subcommand shares: settings from file + env + flags, and clean error exits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn

import typer

from streamtrain.config import ConfigError, Settings, load_settings

CONFIG_OPTION = typer.Option(
    None,
    "--config",
    "-c",
    help="YAML settings file (env vars and flags override it).",
    exists=False,
    dir_okay=False,
)


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def settings_from(config: Path | None, **flags: Any) -> Settings:
    """Merge settings; ``flags`` use dotted names (``kafka.bootstrap_servers``), None = unset."""
    overrides: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        section, _, name = dotted.partition("__")
        overrides.setdefault(section, {})[name] = value
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        fail(str(exc))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python logs every reconnect at WARNING; keep the terminal readable.
    logging.getLogger("kafka").setLevel(logging.ERROR)
