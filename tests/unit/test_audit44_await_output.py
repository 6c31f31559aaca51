"""await_output fails at once, with the exit code and last lines, when the process it waits on
has exited without printing what it waits for (it used to wait its whole 240 s deadline)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.integration.cli_process import await_output, running_cli
from tests.integration.process_output import AWAIT_S, ProcessOutput


def _followed(code: str) -> tuple[subprocess.Popen[str], ProcessOutput, threading.Thread]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = ProcessOutput()
    reader = threading.Thread(target=output.follow, args=(process,), daemon=True)
    reader.start()
    return process, output, reader


def test_an_exited_process_fails_the_wait_with_its_code_and_last_lines() -> None:
    process, output, reader = _followed("print('first'); print('the last words'); exit(3)")
    started = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        await_output(output, r"listening on (\S+)")
    # Failing fast is the point: far inside the wait's own deadline (a hang would take all of it).
    assert time.monotonic() - started < AWAIT_S / 4
    message = str(failure.value)
    assert "exit code 3" in message
    assert "the last words" in message
    assert "never printed" in message
    reader.join(10)
    process.wait(10)


def test_a_line_printed_just_before_exit_is_still_found() -> None:
    process, output, reader = _followed("print('url http://x:1', flush=True); exit(0)")
    assert await_output(output, r"url (\S+)") == "http://x:1"
    reader.join(10)
    process.wait(10)


def test_a_cli_that_refuses_its_flags_fails_the_wait_with_its_usage_error() -> None:
    with (
        running_cli(["serve", "--no-such-flag"], os.environ) as (_process, output),
        pytest.raises(AssertionError) as failure,
    ):
        await_output(output, r"serving on (\S+)")
    message = str(failure.value)
    assert "exit code 2" in message
    assert "--no-such-flag" in message
