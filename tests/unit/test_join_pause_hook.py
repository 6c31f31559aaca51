"""The join's test-only checkpoint pause (``streamtrain/join/pause_hook.py``): off unless asked,
only at the phase and size asked, and a malformed value is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamtrain import pause_switch
from streamtrain.join.pause_hook import MARKER_ENV, PAUSE_ENV, pause_point


def test_without_the_variable_nothing_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PAUSE_ENV, raising=False)
    pause_point("written", 0, 10**6)  # returns at once


def test_only_the_phase_and_size_asked_pause(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv(PAUSE_ENV, "replaced:5")
    monkeypatch.setenv(MARKER_ENV, str(marker))
    monkeypatch.setattr(pause_switch, "PAUSE_S", 0.0)
    pause_point("written", 0, 9)  # another phase
    pause_point("replaced", 1, 4)  # fewer resolved ids than asked
    assert not marker.exists()
    pause_point("replaced", 1, 5)  # pauses (for 0 s here), after writing the marker
    assert marker.read_text() == "1 5"


@pytest.mark.parametrize("value", ["renamed", "written:x", "written:-1"])
def test_a_malformed_value_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(PAUSE_ENV, value)
    with pytest.raises(ValueError, match="expected one of written, replaced") as raised:
        pause_point("written", 0, 0)
    assert "\n" not in str(raised.value)
