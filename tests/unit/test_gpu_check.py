"""The GPU check's stage runner (bench/gpu_check.py): a stage that fails or outlives its budget
is reported, its whole process group is stopped, and the run goes on."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.module_files import load_file

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load_file(SCRIPT, "gpu_check")


def _context(check: ModuleType, tmp_path: Path, deadline_s: float = 600) -> object:
    return check.Context(tmp_path, tmp_path, False, time.monotonic() + deadline_s, [sys.executable])


def _gone(pid: int, within_s: float) -> bool:
    """Whether ``pid`` ends within ``within_s``: no such process, or a zombie (dead, waiting
    for whichever process adopted it to reap it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_failing_stage_is_reported_with_its_exit_status(
    check: ModuleType, tmp_path: Path
) -> None:
    command = [sys.executable, "-c", "print('half done'); raise SystemExit(3)"]
    result = check.run_command(
        _context(check, tmp_path), "broken", command, 30, tmp_path, dict(os.environ)
    )
    assert (result.status, result.detail) == ("failed", "exit status 3")
    assert "half done" in (tmp_path / "broken.log").read_text()


def test_a_stage_past_its_budget_is_killed_with_its_children(
    check: ModuleType, tmp_path: Path
) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('grandchild pid', child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    started = time.monotonic()
    result = check.run_command(
        _context(check, tmp_path), "slow", [sys.executable, "-c", code], 6, tmp_path,
        dict(os.environ),
    )  # fmt: skip
    assert result.status == "timed out", result
    assert time.monotonic() - started < 60
    line = next(
        x
        for x in (tmp_path / "slow.log").read_text().splitlines()
        if x.startswith("grandchild pid")
    )
    assert _gone(int(line.split()[2]), within_s=10), "the stage's own child outlived it"


def test_a_stage_after_the_runs_deadline_is_not_run(check: ModuleType, tmp_path: Path) -> None:
    ctx = _context(check, tmp_path, deadline_s=1)
    command = [sys.executable, "-c", "print('ran')"]
    result = check.run_command(ctx, "late", command, 60, tmp_path, dict(os.environ))
    assert result.status == "not run"
    assert not (tmp_path / "late.log").exists()
