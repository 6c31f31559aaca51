"""CI is a laptop: `.ci/run` runs the README's quick-start commands and needs nothing else.

The README promises that `make demo` and `make test` work on a fresh machine with Python 3.10+
and make, without root, Docker or docker-compose. CI is that run (a clean clone, `bash .ci/run`),
so these checks keep `.ci/run` and the Makefile free of anything a laptop lacks, and keep CI
running exactly the commands the README shows. The deploy checks, the only tests that could
reach for an outside binary, are also run once with a PATH that holds nothing but Python.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
CI_RUN = ROOT / ".ci" / "run"
MAKEFILE = ROOT / "Makefile"
README = ROOT / "README.md"
# Anything that needs root, a system package manager or a container engine.
_NOT_ON_A_LAPTOP = re.compile(
    r"(?<![\w-])(apt-get|apt|dpkg|sudo|su|yum|dnf|apk|brew|docker|docker-compose|podman)(?![\w-])"
)


def _commands(text: str) -> list[str]:
    """Shell lines without comments or blanks."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def _quick_start_commands() -> list[str]:
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's quick start has no bash block"
    return _commands(block.group(1))


def test_ci_and_makefile_need_no_root_package_manager_or_docker() -> None:
    for path in (CI_RUN, MAKEFILE):
        for line in _commands(path.read_text()):
            found = _NOT_ON_A_LAPTOP.search(line)
            assert found is None, f"{path.name} runs {found.group(0) if found else ''}: {line}"


def test_ci_runs_exactly_the_readme_quick_start() -> None:
    quick_start = _quick_start_commands()
    assert quick_start == ["make demo", "make test"], quick_start
    ci = _commands(CI_RUN.read_text())
    for command in quick_start:
        assert any(line == command or line.startswith(command + " ") for line in ci), command
    demo_line = next(line for line in ci if line.startswith("make demo"))
    assert "--duration" in demo_line, "CI cannot press Ctrl-C: the demo must stop by itself"


def test_ci_runs_the_gpu_check_dry_run_as_the_readme_says() -> None:
    """CI runs the GPU check's dry run (the wheel set and the script cannot rot unseen), the
    README's Development section says so, and ``gpu-check`` itself needs no ``.venv``: it runs
    on a bare device machine whose python3 holds a CUDA torch."""
    assert any("make gpu-check-dry" in line for line in _commands(CI_RUN.read_text()))
    development = README.read_text().split("## Development", 1)[1].split("\n## ", 1)[0]
    assert "make gpu-check-dry" in development
    makefile = MAKEFILE.read_text()
    for target in ("gpu-wheels", "gpu-check", "gpu-check-dry"):
        assert re.search(rf"^{target}:", makefile, re.M), f"no `{target}` target in the Makefile"
    rule = re.search(r"^gpu-check:(.*)$", makefile, re.M)
    assert rule is not None and "$(STAMP)" not in rule.group(1), rule


def test_make_installs_everything_into_its_own_venv() -> None:
    """Each install goes through the venv's pip (no --user, no system site-packages)."""
    recipes = [line for line in MAKEFILE.read_text().splitlines() if line.startswith("\t")]
    installs = [line for line in recipes if re.search(r"\bpip\b.*\binstall\b", line)]
    assert installs, "the Makefile installs nothing?"
    for line in installs:  # the project's venv, or a bench peer's own (make bench-peers)
        own = (
            "$(BIN)/pip install" in line
            or "$(PEERS)/$*/bin/pip install" in line
            or "$(BIN)/uv pip install --quiet --python $(BIN)/python " in line
        )
        assert own and "--user" not in line, line
    assert any("$(PY) -m venv $(VENV)" in line for line in recipes)
    assert not any("--system-site-packages" in line for line in recipes)


def test_deploy_checks_pass_with_nothing_but_python_on_path(tmp_path: Path) -> None:
    """The compose, image and dashboard checks with a PATH holding only this interpreter: no
    docker-compose, promtool or nginx, as on a laptop. Their extra checks skip, the rest pass."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    deploy_tests = sorted(str(p) for p in (ROOT / "tests" / "unit").glob("test_deploy_*.py"))
    env = {k: v for k, v in os.environ.items() if k not in {"PATH", "PYTHONPATH"}}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *deploy_tests],
        cwd=ROOT,
        env={**env, "PATH": str(bin_dir), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]
    assert " failed" not in result.stdout, result.stdout[-4000:]


def _recipe(target: str) -> list[str]:
    lines = MAKEFILE.read_text().split(f"\n{target}:", 1)[1].splitlines()[1:]
    return [line.strip() for line in lines[: next(i for i, x in enumerate(lines) if not x)]]


def _pytest_commands(target: str) -> list[str]:
    """The recipe's pytest commands, each as the shell runs it (continuation lines joined)."""
    recipe = " ".join(line.removesuffix("\\").strip() for line in _recipe(target))
    return [
        command.strip()
        for command in re.split(r";|&(?!&)", recipe)
        if re.search(r"-m pytest\b", command)
    ]


def test_make_test_is_the_full_suite_and_ci_lists_the_slowest() -> None:
    """`make test` (the README's command) runs every tier: the soak test at normal priority
    beside all the rest over the workers under `nice -n 19` (tests/README.md: the soak
    measures keeping up, the priority gives it its CPU), and fails if either fails; CI adds a
    durations report."""
    soak, rest = _pytest_commands("test")
    for command in (soak, rest):
        assert re.search(r"-m pytest .*\btests(\s|$)", command), command
        assert "$(PYTEST_ARGS)" in command, command
        assert len(re.findall(r" -m (?!pytest)", command)) == 1, command
    assert " -m soak " in soak and "$(XDIST)" not in soak, soak
    assert not soak.startswith("nice"), soak
    assert ' -m "not soak" ' in rest and "$(XDIST)" in rest, rest
    assert rest.startswith("nice -n 19 $(BIN)/python -m pytest "), rest
    recipe = " ".join(_recipe("test"))
    assert re.search(r"& soak=\$\$!", recipe), "the soak test does not run in the background"
    assert "wait $$soak; soaked=$$?" in recipe, recipe
    assert recipe.endswith("test $$rest -eq 0 && test $$soaked -eq 0"), recipe
    ci = _commands(CI_RUN.read_text())
    test_line = next(line for line in ci if line.startswith("make test "))
    assert "--durations=20" in test_line


def test_ci_runs_lint_and_the_gpu_dry_run_niced_beside_the_suite_and_fails_with_them() -> None:
    """The side checks run under `nice -n 19` in the background while the demo and the suite
    run; the run waits for them on any exit, prints their output and fails if they failed."""
    ci = CI_RUN.read_text()
    commands = _commands(ci)
    assert commands.index("make setup") < commands.index('make demo DEMO_ARGS="--duration 20"')
    side = next(line for line in commands if "make lint" in line)
    assert side.startswith("(nice -n 19 make lint && nice -n 19 make gpu-check-dry)"), side
    assert side.endswith("&"), side
    assert "trap finish EXIT" in commands
    finish = ci.split("finish() {", 1)[1].split("\n}\n", 1)[0]
    assert 'wait "$side" || side_status=$?' in finish
    assert 'if [ "$status" -eq 0 ]; then status=$side_status; fi' in finish
    assert 'exit "$status"' in finish


def test_both_suites_run_in_parallel_with_a_worker_count_to_override() -> None:
    """`make test` and the kafka-python pass spread over pytest-xdist workers (the count a Make
    variable, 0 for one process), and pytest-xdist is in the test extra `make setup` installs."""
    makefile = MAKEFILE.read_text()
    workers = re.search(r"^PYTEST_WORKERS \?= (\d+)$", makefile, re.M)
    assert workers and int(workers.group(1)) >= 2, "no PYTEST_WORKERS default in the Makefile"
    xdist = re.search(r"^XDIST := (.*)$", makefile, re.M)
    assert xdist and "-n $(PYTEST_WORKERS)" in xdist.group(1), xdist
    # loadfile keeps a module on one worker: its module fixture (a built wheel, two gloo
    # ranks, a timed baseline) is made once. (loadgroup's xdist_group marks are silently
    # ignored under pytest 9.2: pytest-xdist issue 1386.)
    assert "--dist loadfile" in xdist.group(1), xdist
    # The order tests/scheduling.py gives (longest modules first) is the order handed out.
    assert "--no-loadscope-reorder" in xdist.group(1), xdist
    parallel = _pytest_commands("test")[1], *_recipe("test-integration-kafka-python")
    for recipe in parallel:
        assert "$(XDIST)" in recipe.split("pytest", 1)[1], recipe
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "dev"
    ]
    assert any(re.match(r"pytest-xdist\b", requirement) for requirement in dev), dev


def test_the_tests_that_differ_by_client_run_with_each_library() -> None:
    """`make test` runs each kafka_client test with both libraries in one session (the
    conftest parametrizes them; tests/unit/test_kafka_client_fixture.py checks that), so CI
    needs no second pass; `make test-integration-kafka-python` pins kafka-python for them."""
    (recipe,) = _recipe("test-integration-kafka-python")
    assert "STREAMTRAIN_TEST_KAFKA_CLIENT=kafka-python" in recipe
    assert "-m kafka_client" in recipe and "tests/integration" in recipe
    marked = [
        p.name
        for p in sorted((ROOT / "tests" / "integration").glob("test_*.py"))
        if "pytestmark = pytest.mark.kafka_client" in p.read_text()
    ]
    # The Kafka wing's paths: consumer, producer, partition reader, reachability.
    for name in ("test_ingest_source.py", "test_snapshot_kafka.py", "test_kafka_outage.py"):
        assert name in marked, marked
    assert "STREAMTRAIN_TEST_KAFKA_CLIENT" not in " ".join(_recipe("test"))
    assert not any("kafka-python" in line for line in _commands(CI_RUN.read_text()))


def test_the_suite_and_the_demo_keep_bytecode_caches_under_the_venv() -> None:
    """An environment that sets PYTHONDONTWRITEBYTECODE (this machine's does) would have every
    child of the suite compile torch and the package afresh, ~5 CPU-s a start (tests/README.md,
    "What the suite spends"): `make test`, `make demo` and the other test targets cache
    bytecode anyway, under .venv (nothing in the checkout)."""
    makefile = MAKEFILE.read_text()
    listed = re.search(r"^PYCACHE_TARGETS := (.*)$", makefile, re.M)
    assert listed, "no PYCACHE_TARGETS in the Makefile"
    assert {"demo", "test", "test-unit", "test-integration-kafka-python"} <= set(
        listed.group(1).split()
    )
    exports = re.findall(r"^\$\(PYCACHE_TARGETS\): export (\w+) :=(.*)$", makefile, re.M)
    assert dict(exports) == {
        "PYTHONDONTWRITEBYTECODE": "",  # empty is unset to Python
        "PYTHONPYCACHEPREFIX": " $(abspath $(VENV))/pycache",
    }, exports
