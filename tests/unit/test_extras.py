"""A setting that needs an optional part which is not installed: one MissingExtra, exit code 5."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from streamtrain.cli import app
from streamtrain.cli.common import ExitCode
from streamtrain.extras import MissingExtra
from streamtrain.train.promotion_gate import drift_detector


def test_drift_detector_without_river_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "river.drift", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "river", None)
    with pytest.raises(MissingExtra, match=r"streamtrain\[drift\].*unset train.drift_detector"):
        drift_detector("adwin")


def test_serve_with_grpc_port_but_no_grpc_extra_exits_missing_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "streamtrain.serve.protocol.grpc_service", None)
    monkeypatch.setenv("STREAMTRAIN_SERVE__GRPC_PORT", "0")
    # A closed port: the server would start unready and wait for Kafka, but the missing
    # extra is refused while the worker is built, before anything listens.
    monkeypatch.setenv("STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = CliRunner().invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == ExitCode.MISSING_EXTRA, result.output
    assert "streamtrain[grpc]" in result.output
    assert "Traceback" not in result.output
