"""``make gpu-check``: the whole GPU check in one command, for the few minutes a GPU is lent.

On the device machine (bare, offline: Python 3.12 and a CUDA torch), from the tree with
``.whl/`` carried (``make gpu-wheels``; docs/operations.md, "GPU notes", has the exact call)::

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out "$OUT"

Stages, each a child process under its own time budget (a stage that fails or runs out of
time is reported, and the next one runs; the budgets add up to under 8 minutes on one H100):

1. install: the carried wheels with ``pip --no-index --no-deps`` into a target folder that the
   device's own torch sits beside; the probe (bench/gpu_probe.py) prints torch/CUDA versions,
   checks the set is complete and starts the embedded broker from it;
2. tests: ``tests/gpu`` (the trainer on CUDA, AMP bf16/fp16 with the loss scaler, the serve
   engines on CUDA, a sparse ``dlrm`` step with its tables on the GPU, two distributed ranks);
3. trainer: bare step vs the whole pipeline, ``mlp`` and ``dlrm``, fp32 and bf16, batch
   256/1024/4096 (bench/gpu_trainer.py);
4. serve: the engines on CUDA and end-to-end freshness with trainer and server on the GPU
   (bench/gpu_serve.py);
5. delta: bench/delta.py with its 1 GB table on the GPU.

Everything lands in ``--out`` (``$OUT`` there): ``report.md`` (one page, every figure),
``summary.json`` and one log per stage: seven files.

``--dry`` (``make gpu-check-dry``, run by CI) is the same script on a machine without CUDA:
the install is done the same way from the same set (a wheel built for another interpreter
replaced by the same release for this one) beside this machine's torch and nothing else, and
every stage runs, its CUDA parts skipped with a line saying so, at smoke sizes on the CPU, so
the script and the benches cannot rot unseen.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TOTAL_BUDGET_S = 470.0  # 8 minutes with a margin for the report and the transfers
INSTALL_BUDGET_S = 60.0  # pip install + the probe (broker start included)
# The dry run's CPU machine (2 shared cores in CI) is slower than the device's 16 cores at
# everything but the GPU work it skips: its budgets are stretched by this much.
DRY_STRETCH = 2.0


@dataclass
class Context:
    out: Path
    work: Path
    dry: bool
    deadline: float
    python: list[str]  # the interpreter (and its flags) every stage after install runs
    stretch: float = 1.0  # budgets are multiplied by this (DRY_STRETCH in the dry run)
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Result:
    stage: str
    status: str  # ok | failed | timed out | not run
    seconds: float
    budget_s: float
    detail: str = ""


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: float
    command: Callable[[Context], list[str]]
    about: str
    dry_note: str = ""  # the line the dry run prints for what it cannot run here


def _stream(process: subprocess.Popen[str], log: Path, prefix: str) -> threading.Thread:
    def pump() -> None:
        assert process.stdout is not None
        with log.open("a") as sink:
            for line in process.stdout:
                sink.write(line)
                sink.flush()
                print(f"[{prefix}] {line}", end="", flush=True)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def run_command(
    ctx: Context,
    name: str,
    command: list[str],
    budget_s: float,
    cwd: Path,
    env: dict[str, str],
    note: str = "",
) -> Result:
    """Run ``command`` in its own process group, output to ``<out>/<name>.log`` and stdout;
    past ``budget_s`` (or the run's deadline) the group is killed and the stage reported.
    ``note`` is written first, to both."""
    budget_s *= ctx.stretch
    budget = min(budget_s, ctx.deadline - time.monotonic())
    if budget < 5:
        return Result(name, "not run", 0.0, budget_s, "the run's overall budget was spent")
    log = ctx.out / f"{name}.log"
    with log.open("a") as sink:
        for line in filter(None, [note, f"$ {' '.join(command)}"]):
            sink.write(line + "\n")
            print(f"[{name}] {line}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its children (broker, trainer, server) stop with it
    )
    pump = _stream(process, log, name)
    try:
        code = process.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pump.join(5)
        spent = time.monotonic() - started
        return Result(name, "timed out", spent, budget_s, f"killed after {budget:.0f} s")
    pump.join(5)
    status = "ok" if code == 0 else "failed"
    detail = "" if code == 0 else f"exit status {code}"
    return Result(name, status, time.monotonic() - started, budget_s, detail)


def _stage_env(ctx: Context, extra_path: list[Path]) -> dict[str, str]:
    paths = [str(p) for p in extra_path]
    return {
        **os.environ,
        **ctx.env,
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
    }


def install(ctx: Context) -> Result:
    """Install the carried set into ``<work>/site`` and run the probe there."""
    started = time.monotonic()
    site = ctx.work / "site"
    manifest_path = ROOT / ".whl" / "MANIFEST.json"
    if not manifest_path.is_file():
        detail = "no .whl/MANIFEST.json: run `make gpu-wheels` where pip reaches PyPI, carry .whl"
        print(f"[install] {detail}", flush=True)
        return Result("install", "failed", 0.0, INSTALL_BUDGET_S, detail)
    manifest = json.loads(manifest_path.read_text())
    files = [ROOT / ".whl" / str(w["file"]) for w in manifest["wheels"]]
    path: list[Path] = [site]
    if ctx.dry:
        import gpu_dry  # this machine's helpers: packaging, pip download of twins

        try:
            files = gpu_dry.installable_here(files, ROOT / ".whl-twins", ctx.notes)
        except subprocess.SubprocessError as failed:
            detail = f"pip could not fetch this interpreter's twins of compiled wheels: {failed}"
            print(f"[install] {detail}", flush=True)
            return Result("install", "failed", time.monotonic() - started, 0.0, detail)
        path.append(gpu_dry.torch_site(ctx.work / "torch-site"))
    pip = [*ctx.python[:1], "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    pip += ["--no-compile", "--target", str(site), *map(str, files)]
    env = _stage_env(ctx, [])
    env.pop("PYTHONPATH")
    result = run_command(ctx, "install", pip, INSTALL_BUDGET_S, ctx.work, env)
    if result.status != "ok":
        return result
    probe = [*ctx.python, str(BENCH / "gpu_probe.py"), "--site", str(site)]
    if not ctx.dry:
        probe.append("--no-budget")  # the set is here: it has travelled
    left = INSTALL_BUDGET_S - (time.monotonic() - started) / ctx.stretch
    result = run_command(ctx, "install", probe, left, ctx.work, _stage_env(ctx, path))
    ctx.env["GPU_CHECK_PATH"] = os.pathsep.join(map(str, path))
    result.seconds, result.budget_s = time.monotonic() - started, INSTALL_BUDGET_S * ctx.stretch
    return result


def _path(ctx: Context) -> list[Path]:
    return [ROOT, *map(Path, ctx.env["GPU_CHECK_PATH"].split(os.pathsep))]


def _tests(ctx: Context) -> list[str]:
    # The device image holds pytest plugins of its own (xdist, cov, benchmark, ...); with
    # PYTEST_DISABLE_PLUGIN_AUTOLOAD (set in main) none of them loads into the carried pytest.
    return [*ctx.python, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "tests/gpu"]


def _trainer(ctx: Context) -> list[str]:
    command = [*ctx.python, str(BENCH / "gpu_trainer.py"), "--report", str(ctx.work / "trainer.md")]
    return command + (["--device", "cpu", "--smoke"] if ctx.dry else ["--device", "cuda"])


def _serve(ctx: Context) -> list[str]:
    command = [*ctx.python, str(BENCH / "gpu_serve.py"), "--report", str(ctx.work / "serve.md")]
    return command + (["--device", "cpu", "--smoke"] if ctx.dry else ["--device", "cuda"])


def _delta(ctx: Context) -> list[str]:
    command = [*ctx.python, str(BENCH / "delta.py")]
    if ctx.dry:
        smoke = ["--modes", "delta", "--device", "cpu", "--rows", "20000", "--seconds", "3"]
        return [*command, *smoke, "--drain", "1", "--warmup", "0.5"]
    # 4,000,000 x 64 fp32 = 1.02 GB on the GPU; 10 s a mode keeps the stage near a minute
    return [*command, "--modes", "delta", "full", "--device", "cuda", "--seconds", "10",
            "--drain", "3", "--warmup", "2"]  # fmt: skip


STAGES = (
    Stage(
        "tests", 110, _tests, "tests/gpu (pytest)",
        "CUDA: skipped (no CUDA here); tests/gpu is collected, each test skipped with its reason",
    ),
    Stage(
        "trainer", 120, _trainer, "bare step vs pipeline (bench/gpu_trainer.py)",
        "CUDA: skipped (no CUDA here); a CPU smoke run at batch 64, fp32 only",
    ),
    Stage(
        "serve", 90, _serve, "serve engines + freshness (bench/gpu_serve.py)",
        "CUDA: skipped (no CUDA here); engines and one HTTP worker run on the CPU, short; "
        "freshness is left to the device run",
    ),
    Stage(
        "delta", 85, _delta, "delta vs full snapshots, 1 GB table (bench/delta.py)",
        "CUDA: skipped (no CUDA here); a CPU smoke run, delta mode only, 20,000 x 64 (5 MB) table",
    ),
)  # fmt: skip


ABOUT = {
    "install": "carried wheels installed; versions, completeness, broker (bench/gpu_probe.py)",
    **{stage.name: stage.about for stage in STAGES},
}


def _commit() -> str:
    """The tree's commit, where git and the repository travelled with it."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT, capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "commit unknown (no git here)"
    return f"commit {found.stdout.strip()}"


def _tail(log: Path, lines: int = 14) -> str:
    text = log.read_text().splitlines() if log.is_file() else []
    return "\n".join(text[-lines:])


def _versions(ctx: Context) -> list[str]:
    log = ctx.out / "install.log"
    keep = ("python ", "torch ", "CUDA")
    text = log.read_text().splitlines() if log.is_file() else []
    return [line for line in text if line.startswith(keep)]


def write_report(ctx: Context, results: list[Result], started: float) -> None:
    mode = (
        "DRY RUN on a CPU machine: figures are smoke runs, not measurements"
        if ctx.dry
        else ("device run")
    )
    lines = [
        "# GPU check report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {mode}, {_commit()}; host "
        f"{platform.node()}, {os.cpu_count()} CPUs; whole run {time.monotonic() - started:.0f} s "
        f"of a {TOTAL_BUDGET_S * ctx.stretch:.0f} s budget.",
        "",
        *(f"- {line}" for line in _versions(ctx) or ["versions: the install stage did not run"]),
        *(f"- {note}" for note in ctx.notes),
        "",
        "| stage | what | status | seconds | budget s | detail |",
        "|---|---|---|---:|---:|---|",
        *(
            f"| {r.stage} | {ABOUT.get(r.stage, '')} | {r.status} | {r.seconds:.0f} "
            f"| {r.budget_s:.0f} | {r.detail} |"
            for r in results
        ),
    ]
    for stage in ("tests", "trainer", "serve", "delta"):
        fragment = ctx.work / f"{stage}.md"
        lines += ["", f"## {stage}", ""]
        if fragment.is_file():
            lines.append(fragment.read_text().rstrip())
        else:
            lines += ["```", _tail(ctx.out / f"{stage}.log"), "```"]
    (ctx.out / "report.md").write_text("\n".join(lines) + "\n")
    summary = {"dry": ctx.dry, "results": [asdict(r) for r in results], "notes": ctx.notes}
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def _test_fragment(ctx: Context) -> None:
    """The tests stage's outcome lines (pytest's -v lines and its summary) as the fragment."""
    log = ctx.out / "tests.log"
    text = log.read_text().splitlines() if log.is_file() else []
    keep = [
        line
        for line in text
        if " PASSED" in line
        or " FAILED" in line
        or " SKIPPED" in line
        or " ERROR" in line
        or line.startswith(("=", "SKIPPED", "FAILED", "ERROR"))
    ]
    if keep:
        (ctx.work / "tests.md").write_text("```\n" + "\n".join(keep[-40:]) + "\n```\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="on a machine without CUDA (CI)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "gpu-check-out"),
        help="where report.md, summary.json and the logs go (default: $OUT, else gpu-check-out/)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.log"):
        old.unlink()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        # -S in the dry run: only the install target and this machine's torch are importable,
        # as on the device (whose own site-packages hold its torch and numpy).
        python = [sys.executable, "-S"] if args.dry else [sys.executable]
        stretch = DRY_STRETCH if args.dry else 1.0
        deadline = started + TOTAL_BUDGET_S * stretch
        ctx = Context(args.out, Path(work), args.dry, deadline, python, stretch=stretch)
        results = [install(ctx)]
        for stage in STAGES:
            if "GPU_CHECK_PATH" not in ctx.env:
                results.append(Result(stage.name, "not run", 0.0, stage.budget_s, "no install"))
                continue
            env = _stage_env(ctx, _path(ctx))
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
            note = stage.dry_note if ctx.dry else ""
            command = stage.command(ctx)
            result = run_command(ctx, stage.name, command, stage.budget_s, ROOT, env, note)
            results.append(result)
        _test_fragment(ctx)
        write_report(ctx, results, started)
    print((args.out / "report.md").read_text())
    bad = [r for r in results if r.status != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
