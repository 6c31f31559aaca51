"""The command line as a user meets it, through the real ``streamtrain`` executable: --version,
-h wherever --help works, help that fits 80 columns without cutting a flag name, every flag
described, no RST markup, and ``streamtrain config check`` (valid, invalid, unknown variable)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import streamtrain.cli  # noqa: F401  (registers every subcommand)
from streamtrain.cli.command import app

EXE = Path(sys.executable).with_name("streamtrain")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMTRAIN_")}
    return subprocess.run(
        [str(EXE), *args],
        capture_output=True,
        text=True,
        # a hang's limit only: the command imports PyTorch, ~2 min on a loaded machine without
        # a bytecode cache (a plain pytest run has none; `make test` keeps one)
        timeout=400,
        env={**clean, "COLUMNS": "80", **(env or {})},
        check=False,
    )


def _commands() -> list[tuple[list[str], Any]]:
    """Every command path of the CLI, groups included, with its command object (typer ships
    its own copy of click, so groups and options are told apart by what they have)."""
    root = typer.main.get_command(app)
    found: list[tuple[list[str], Any]] = []

    def walk(path: list[str], command: Any) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk([*path, name], sub)

    walk([], root)
    assert len(found) >= 14, [" ".join(p) for p, _ in found]
    return found


def test_version_and_short_help() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"streamtrain {importlib.metadata.version('streamtrain')}"
    short, long = _run("-h"), _run("--help")
    assert short.returncode == 0 and short.stdout == long.stdout
    assert "Usage: streamtrain" in short.stdout


def test_every_command_has_h_and_fits_80_columns() -> None:
    runner = CliRunner()
    for path, command in _commands():
        where = " ".join(["streamtrain", *path])
        result = runner.invoke(app, [*path, "-h"], terminal_width=80, prog_name="streamtrain")
        assert result.exit_code == 0, where
        text = result.output
        long = runner.invoke(app, [*path, "--help"], terminal_width=80, prog_name="streamtrain")
        assert text == long.output, where
        assert "-h, --help" in text, where
        assert max(len(line) for line in text.splitlines()) <= 80, where
        assert "``" not in text and "…" not in text, where  # no RST markup, nothing cut
        for param in command.params:
            if param.param_type_name == "option":
                for flag in param.opts + param.secondary_opts:
                    assert re.search(rf"(^|[\s,/]){re.escape(flag)}([\s,=]|$)", text, re.M), (
                        f"{where}: {flag} not shown whole"
                    )
                assert param.help, f"{where}: {param.opts} has no description"


def test_h_through_the_real_executable_at_80_columns() -> None:
    result = _run("train", "-h")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for flag in ("--bootstrap-servers", "--create-missing-topics", "--max-restarts", "--nproc"):
        assert flag in result.stdout
    assert re.search(r"-v, --verbose\s+Debug logging", result.stdout)


def test_config_check_prints_the_effective_settings(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  autocast: 'off'\n  device: cpu\n")
    result = _run(
        "config",
        "check",
        "--config",
        str(config),
        env={"STREAMTRAIN_KAFKA__SASL_PASSWORD": "hunter2", "STREAMTRAIN_SERVE__PORT": "8123"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "  device: cpu" in result.stdout and "  port: 8123" in result.stdout
    assert "hunter2" not in result.stdout


def test_config_check_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  autocast: off\n")
    result = _run(
        "config",
        "check",
        "-c",
        str(config),
        env={"STREAMTRAIN_SERVE__PORT": "\u0663", "STREAMTRAIN_MODLE__NAME": "cnn"},
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "warning: environment variable STREAMTRAIN_MODLE__NAME sets nothing and is ignored; "
        "did you mean STREAMTRAIN_MODEL__NAME?"
    )
    errors = lines[1:]
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert any("train.autocast" in e and f"config file {config}, line 2" in e for e in errors)
    assert any("serve.port" in e and "env var STREAMTRAIN_SERVE__PORT" in e for e in errors)
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["train", "serve", "join", "produce"])
def test_a_bad_flag_is_reported_as_the_flag(command: str) -> None:
    result = _run(command, "--bootstrap-servers", "nohost:\u00b2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: kafka.bootstrap_servers: bootstrap server 'nohost:\u00b2' is not host:port; "
        "write e.g. '127.0.0.1:9092' (flag --bootstrap-servers)"
    ]


def test_metrics_urls_are_the_bound_address() -> None:
    from prometheus_client import CollectorRegistry

    from streamtrain.cli.common import bind_failure_message, bound_url
    from streamtrain.metrics import serve_metrics

    server = serve_metrics(CollectorRegistry(), 0, "127.0.0.1")
    try:
        port = server.server_port
        assert bound_url(server, "/metrics") == f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
    wildcard = serve_metrics(CollectorRegistry(), 0, "0.0.0.0")
    try:
        port = wildcard.server_port
        assert bound_url(wildcard, "/metrics") == (
            f"http://0.0.0.0:{port}/metrics (every interface; from this machine "
            f"http://127.0.0.1:{port}/metrics)"
        )
    finally:
        wildcard.shutdown()
    # An address this machine does not have (TEST-NET-1) is named as the host, not the port.
    with pytest.raises(OSError) as caught:
        serve_metrics(CollectorRegistry(), 0, "192.0.2.1")
    message = bind_failure_message("--metrics-port", "192.0.2.1", 0, caught.value)
    assert message.startswith("metrics host '192.0.2.1' is not an address of this machine")
