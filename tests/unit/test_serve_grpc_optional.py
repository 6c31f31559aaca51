"""gRPC is an optional extra: without it, a set ``serve.grpc_port`` fails with a clear message."""

from __future__ import annotations

import sys

import pytest

from streamtrain.builders.server import build_grpc
from streamtrain.config import load_settings


def test_grpc_port_without_the_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "streamtrain.serve.protocol.grpc_service", None
    )  # import fails
    serve = load_settings(overrides={"serve": {"grpc_port": 0}}).serve
    with pytest.raises(ValueError, match=r"pip install 'streamtrain\[grpc\]'"):
        build_grpc(None, serve)  # type: ignore[arg-type]
    assert build_grpc(None, load_settings().serve) is None  # type: ignore[arg-type]
