"""Helpers every subcommand shares: settings from file + env + flags, and clean error exits.

A failure a user can cause ends the command with one line on stderr, ``error: <what>: <why>;
<how to fix>``, and one of the exit codes below (docs/cli.md lists them), never a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Mapping
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from prometheus_client import Info

from streamtrain.config import ConfigError, Settings, load_settings, unknown_env_warnings

CONFIG_OPTION = typer.Option(
    None,
    "--config",
    "-c",
    help="YAML settings file (env vars and flags override it).",
    exists=False,
    dir_okay=False,
)


class ExitCode(IntEnum):
    """What a non-zero exit means, so scripts and supervisors can tell causes apart."""

    FAILED = 1
    """The command started, then something it depends on failed (the message says what)."""
    USAGE = 2
    """A flag, setting, file or model factory is wrong (click's own usage errors are 2 too)."""
    KAFKA_UNREACHABLE = 3
    """No Kafka broker answered within the timeout: start it or fix the address/security."""
    LOCAL_RESOURCE = 4
    """A port on this machine is taken or a folder cannot be written."""
    MISSING_EXTRA = 5
    """An optional part is not installed (``pip install 'streamtrain[...]'``)."""
    OFFSET_RESET = 6
    """The samples log lost the trainer's position and ``ingest.on_offset_reset`` is ``fail``,
    or Kafka came back without the samples ``streamtrain join`` had written."""


def fail(message: str, code: int = ExitCode.USAGE) -> NoReturn:
    typer.secho(f"error: {_one_line(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(int(code))


def _one_line(text: str, limit: int = 600) -> str:
    """Library messages may span lines (librdkafka, pydantic); the error is one line."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def settings_from(
    config: Path | None, flag_names: Mapping[str, str] | None = None, **flags: Any
) -> Settings:
    """Merge settings; ``flags`` use dotted names (``kafka__bootstrap_servers``), None = unset.

    An error names the flag that gave the value: ``--<field>`` (``--bootstrap-servers``)
    unless ``flag_names`` names it otherwise (``{"topics__snapshots": "--snapshots-topic"}``).
    Every problem is one ``error:`` line; every STREAMTRAIN_* variable that sets nothing is a
    ``warning:`` line (docs/configuration.md).
    """
    overrides: dict[str, Any] = {}
    names: dict[str, str] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        section, _, name = dotted.partition("__")
        overrides.setdefault(section, {})[name] = value
        default = "--" + name.replace("_", "-")
        names[f"{section}.{name}"] = (flag_names or {}).get(dotted, default)
    for warning in unknown_env_warnings():
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    try:
        return load_settings(config, overrides, names)
    except ConfigError as exc:
        for problem in exc.problems[:-1]:
            typer.secho(f"error: {_one_line(problem)}", fg=typer.colors.RED, err=True)
        fail(exc.problems[-1])


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python logs every reconnect at WARNING; keep the terminal readable.
    logging.getLogger("kafka").setLevel(logging.ERROR)


def describe_model(info: Info, settings: Settings) -> None:
    """Fill a ``streamtrain_model_info`` metric from the model settings both processes share."""
    from streamtrain.metrics import model_info_labels
    from streamtrain.snapshot.manifest import settings_hash

    model = settings.model.model_dump(mode="json")
    info.info(model_info_labels(model, settings_hash(model)))


def require_writable_dir(path: Path, flag: str) -> None:
    """Create ``path`` if missing; exit with one line when it is a file or not writable.

    Checked before anything slow (Kafka, the model), so a typo costs no waiting.
    """
    if path.exists() and not path.is_dir():
        fail(f"{flag} {path} is a file, not a folder; point {flag} at a folder (made if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        fail(
            f"{flag} {path} cannot be created ({reason}); choose a folder this user can write",
            ExitCode.LOCAL_RESOURCE,
        )
    if not os.access(path, os.W_OK | os.X_OK):
        fail(
            f"{flag} {path} is not writable by this user; choose another folder or fix its "
            "permissions",
            ExitCode.LOCAL_RESOURCE,
        )


def port_in_use_message(flag: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        why = "is already in use (another trainer or server on this host?)"
    else:
        why = f"cannot be opened ({exc.strerror or exc})"
    return f"{flag} {port} {why}; pass another {flag}, or {flag} 0 for any free port"


def bind_failure_message(flag: str, host: str, port: int, exc: OSError) -> str:
    """A port taken, or a host (``*.metrics_host``) that is no address of this machine."""
    if is_host_failure(exc):
        return host_failure_message(
            "metrics host", host, exc, "train.metrics_host / join.metrics_host"
        )
    return port_in_use_message(flag, port, exc)


def is_host_failure(exc: OSError) -> bool:
    """The host does not resolve, or is no address of this machine (not a port problem)."""
    return isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL


def host_failure_message(what: str, host: str, exc: OSError, settings: str) -> str:
    return (
        f"{what} {host!r} is not an address of this machine ({exc.strerror or exc}); "
        f"set {settings} to 127.0.0.1, 0.0.0.0 (every interface) or one of this machine's "
        "addresses"
    )


def bound_url(server: Any, path: str) -> str:
    """The URL of ``path`` on the address ``server`` actually bound (``server_address``)."""
    host, port = server.server_address[0], server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}{path}"
    if host in ("0.0.0.0", "::"):
        return f"{url} (every interface; from this machine http://127.0.0.1:{port}{path})"
    return url


_KAFKA_MODULES = ("kafka.", "cimpl", "confluent_kafka", "streamtrain.kafka")


def is_kafka_failure(exc: BaseException) -> bool:
    """An exception from a Kafka client library (any of its many types) or our Kafka wing."""
    module = type(exc).__module__ or ""
    return module.startswith(_KAFKA_MODULES) or module == "kafka"


def kafka_failure_message(bootstrap_servers: str, exc: BaseException) -> str:
    """One line for a Kafka failure; a message that already names the fix is kept as it is."""
    text = _one_line(str(exc) or type(exc).__name__, limit=300)
    if "cannot reach Kafka" in text:
        return text
    return (
        f"cannot reach Kafka at {bootstrap_servers} ({type(exc).__name__}: {text}); start the "
        "broker or fix --bootstrap-servers (STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS) and the "
        "kafka.security_* settings"
    )
