"""Command-line entry point: ``streamtrain train | serve | join | produce | demo | ...``."""

from __future__ import annotations

from streamtrain.cli import admin as _admin  # noqa: F401  (registers the command)
from streamtrain.cli import broker as _broker  # noqa: F401
from streamtrain.cli import config_check as _config_check  # noqa: F401
from streamtrain.cli import demo as _demo  # noqa: F401
from streamtrain.cli import join as _join  # noqa: F401
from streamtrain.cli import keys as _keys  # noqa: F401
from streamtrain.cli import produce as _produce  # noqa: F401
from streamtrain.cli import serve as _serve  # noqa: F401
from streamtrain.cli import train as _train  # noqa: F401
from streamtrain.cli.command import app


def main() -> None:
    app()
