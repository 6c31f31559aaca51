"""`streamtrain produce` argument errors and its pacing (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import streamtrain.cli  # noqa: F401  (registers every subcommand)
from streamtrain.cli.produce import Pacer


def test_pacer_does_not_drift() -> None:
    now = [0.0]
    pacer = Pacer(rate=1000, clock=lambda: now[0])
    sent = 0
    for _ in range(100):
        now[0] += 0.0107  # late wake-ups must be caught up, not accumulated
        sent += pacer.allowed(sent)
    assert sent == int(1.07 * 1000) + 1
    assert pacer.wait_seconds(sent) > 0
    assert Pacer(rate=0).allowed(10**6) > 10**6  # 0 = unpaced


def test_produce_errors_are_clear(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from streamtrain.cli.command import app

    runner = CliRunner()
    done = runner.invoke(app, ["produce", "--dataset", "nope"])
    assert done.exit_code != 0
    assert "unknown dataset 'nope'; choose one of: hyperplane" in done.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"features": [1, 2, 3], "label": 0}\n')
    done = runner.invoke(app, ["produce", "--dataset", "file", "--file", str(bad)])
    assert done.exit_code != 0
    assert "line 1: bad_shape: features has shape [3], expected [16]" in done.output
    done = runner.invoke(app, ["produce", "--format", "csv"])
    assert done.exit_code != 0 and "use json or binary" in done.output
