"""A streamtrain subcommand as a subprocess whose output is read on a thread, and the URLs it
prints."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tests.integration.process_output import ProcessOutput, await_condition


@contextmanager
def running_cli(
    args: list[str], env: Mapping[str, str]
) -> Iterator[tuple[subprocess.Popen[str], ProcessOutput]]:
    """A streamtrain subprocess whose output is read on a thread; killed if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "streamtrain.cli", *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ProcessOutput()
    reader = threading.Thread(target=output.follow, args=(process,), daemon=True)
    reader.start()
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        reader.join(10)


def found_in(output: ProcessOutput, pattern: str) -> str | None:
    match = re.search(pattern, output.text(), re.M)
    return match.group(1) if match else None


def await_output(output: ProcessOutput, pattern: str) -> str:
    """The first group of ``pattern``'s first match in the output, once it is printed; fails at
    once, with the exit code and last lines, if the output ends (the process exited) first."""

    def printed() -> bool:
        ended = output.ended  # read before the lines: once ended, every line is in
        if found_in(output, pattern) is not None:
            return True
        if ended:
            raise AssertionError(
                f"/{pattern}/ never printed: the process's output ended, " + output.exit_report()
            )
        return False

    await_condition(printed, f"/{pattern}/ in the output")
    url = found_in(output, pattern)
    assert url is not None
    return url
