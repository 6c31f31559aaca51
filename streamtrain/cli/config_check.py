"""`streamtrain config check`: validate settings (file, environment) without starting anything."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from streamtrain.cli.command import app
from streamtrain.cli.common import CONFIG_OPTION, settings_from

config_app = typer.Typer(
    name="config",
    help="Inspect the settings a process would run with.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(config_app)


@config_app.command("check")
def check(config: Path | None = CONFIG_OPTION) -> None:
    """Validate the settings from --config and STREAMTRAIN_* variables; print them as YAML.

    Exit 0 when valid (warnings for variables that set nothing go to stderr), 2 with one
    error line per problem otherwise. Nothing connects to Kafka or opens a port.
    """
    settings = settings_from(config)
    # JSON mode prints secrets as '**********' and paths as strings: safe to share.
    effective = settings.model_dump(mode="json")
    typer.echo(yaml.safe_dump(effective, sort_keys=False, default_flow_style=False).rstrip())
