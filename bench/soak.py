"""Soak: the demo's processes at a steady rate for a long time, sampled every 10 s.

Runs ``streamtrain demo`` (embedded broker, server, trainer, producer) as a child and, every
``--every`` seconds, records:

- intake: samples the trainer learned per second over the interval (from the
  ``streamtrain_train_samples_total`` counter's delta, never a gauge);
- served data age (``streamtrain_serve_data_age_seconds``) and served version;
- RSS and CPU share of every process of the demo, the broker included (from ``/proc``).

Writes ``soak.csv`` and ``soak.png`` (matplotlib) into ``--out`` and prints a Markdown table
and the verdict against the goals (intake within 5% of ``--rate``, served age <= 2 s at every
sample after ``--warmup`` s, every RSS flat after the warm-up). Exit 1 when a goal is missed.

    python bench/soak.py --minutes 60 --out bench/results/soak
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamtrain.demo.scrape import Scrape, ScrapeError, scrape

TICKS = os.sysconf("SC_CLK_TCK")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
ROLES = {
    "tansu": "broker",
    "train": "trainer",
    "serve": "server",
    "produce": "producer",
    "join": "join",
}


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/*/stat parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def role(pid: int) -> tuple[str, list[str]] | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    if argv and argv[0].endswith("tansu"):
        return "broker", argv
    for word, name in ROLES.items():
        if word in argv[1:] and "streamtrain.cli" in argv:
            return name, argv
    # --labels delayed: the application that asks for predictions and sends labels later.
    if "streamtrain.demo.label_app" in argv:
        return "app", argv
    return None


def usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds so far, RSS MB) of one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(stat[11]) + int(stat[12])) / TICKS, int(stat[21]) * PAGE_MB


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


@dataclass
class Sample:
    t: float
    intake: float
    trained: float
    age: float | None
    version: float | None
    waiting: float
    rss: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


class Soak:
    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.http = httpx.Client(timeout=5.0)
        self.pids: dict[str, int] = {}
        self.urls: dict[str, str] = {}

    def discover(self, demo: int) -> None:
        for pid in children(demo):
            found = role(pid)
            if found is None:
                continue
            name, argv = found
            self.pids.setdefault(name, pid)
            if name == "trainer" and (port := flag(argv, "--metrics-port")):
                self.urls["trainer"] = f"http://127.0.0.1:{port}/metrics"
            if name == "server" and (port := flag(argv, "--port")):
                self.urls["server"] = f"http://127.0.0.1:{port}/metrics"

    def scrape(self, name: str) -> Scrape:
        try:
            return scrape(self.urls[name], client=self.http)
        except (KeyError, ScrapeError):
            return Scrape()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before goals apply")
    parser.add_argument("--dataset", default="hyperplane")
    parser.add_argument(
        "--labels",
        choices=["inline", "delayed"],
        default="inline",
        help="delayed: the demo's application, prediction log and join (docs/labels.md)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak"))
    parser.add_argument(
        "--from-csv", type=Path, help="report a finished run's soak.csv again (table, plot)"
    )
    parser.add_argument("--table-every", type=float, default=300.0, help="seconds per row")
    return parser.parse_args()


def measure(soak: Soak, demo: subprocess.Popen[bytes], seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    start = time.monotonic()
    last_trained, last_t = 0.0, 0.0
    last_cpu: dict[str, float] = {}
    next_at = start + soak.args.every
    while time.monotonic() - start < seconds and demo.poll() is None:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += soak.args.every
        soak.discover(demo.pid)
        t = time.monotonic() - start
        trainer, server = soak.scrape("trainer"), soak.scrape("server")
        trained = trainer.total("streamtrain_train_samples_total")
        lag = trainer.total("streamtrain_ingest_consumer_lag_records")
        version = server.value("streamtrain_serve_model_version")
        sample = Sample(
            t=t,
            intake=(trained - last_trained) / (t - last_t),
            trained=trained,
            age=server.value("streamtrain_serve_data_age_seconds") if version else None,
            version=version,
            waiting=lag,
        )
        for name, pid in soak.pids.items():
            got = usage(pid)
            if got is None:
                continue
            cpu, rss = got
            sample.rss[name] = rss
            sample.cpu[name] = (cpu - last_cpu.get(name, cpu)) / (t - last_t) if last_t else 0.0
            last_cpu[name] = cpu
        last_trained, last_t = trained, t
        samples.append(sample)
        print(row(sample, sorted(soak.pids)), flush=True)
    return samples


def row(s: Sample, names: list[str]) -> str:
    age = "-" if s.age is None else f"{s.age:.2f}"
    version = "-" if s.version is None else f"{s.version:.0f}"
    per = " | ".join(f"{s.rss.get(n, 0):.0f} / {s.cpu.get(n, 0):.0%}" for n in names)
    return (
        f"| {s.t:5.0f} | {s.intake:7.0f} | {s.trained:11,.0f} | {s.waiting:9,.0f} | {age} "
        f"| {version} | {per} |"
    )


def header(names: list[str]) -> str:
    per = " | ".join(f"{n} RSS MB / CPU" for n in names)
    seps = "|---" * (6 + len(names))
    return f"| t s | intake/s | trained | lag | age s | version | {per} |\n{seps}|"


def verdict(samples: list[Sample], args: argparse.Namespace) -> list[str]:
    """The goals, one line each; a line starting with FAIL is a missed goal."""
    steady = [s for s in samples if s.t >= args.warmup]
    if not steady:
        return ["FAIL no sample after the warm-up"]
    lines = []
    low = [s for s in steady if s.intake < 0.95 * args.rate]
    worst = min(steady, key=lambda s: s.intake)
    lines.append(
        f"{'FAIL' if low else 'ok'} intake within 5% of {args.rate:g}/s: "
        f"{len(low)} of {len(steady)} samples below; lowest {worst.intake:.0f}/s at {worst.t:.0f} s"
    )
    # The producer shares the machine too: what reached the log in each interval (learned +
    # change in lag) is the rate the trainer could have kept up with.
    behind = []
    for before, after in itertools.pairwise(samples):
        if after.t < args.warmup:
            continue
        produced = (after.trained + after.waiting) - (before.trained + before.waiting)
        learned = after.trained - before.trained
        if produced > 0 and learned < 0.95 * produced:
            behind.append(f"{after.t:.0f} s ({learned:,.0f} of {produced:,.0f})")
    lines.append(
        f"{'FAIL' if behind else 'ok'} intake within 5% of what reached the log in each "
        f"interval: {len(behind)} of {len(steady)} below"
        + (f" (at {', '.join(behind[:5])})" if behind else "")
    )
    ages = [s for s in steady if s.age is None or s.age > 2.0]
    top = max((s.age or float("inf") for s in steady), default=float("inf"))
    lines.append(
        f"{'FAIL' if ages else 'ok'} served age <= 2 s: {len(ages)} of {len(steady)} samples "
        f"above; highest {top:.2f} s"
    )
    # Flat RSS: the last third's mean over the first third's (after the warm-up), per process.
    third = max(1, len(steady) // 3)
    for name in sorted({n for s in steady for n in s.rss}):
        first = [s.rss[name] for s in steady[:third] if name in s.rss]
        last = [s.rss[name] for s in steady[-third:] if name in s.rss]
        if not first or not last:
            continue
        growth = sum(last) / len(last) - sum(first) / len(first)
        minutes = (steady[-1].t - steady[0].t) * 2 / 3 / 60
        per_min = growth / minutes if minutes else 0.0
        flat = per_min <= 0.5
        lines.append(
            f"{'ok' if flat else 'FAIL'} {name} RSS flat: {sum(first) / len(first):.0f} -> "
            f"{sum(last) / len(last):.0f} MB ({per_min:+.2f} MB/min)"
        )
    return lines


def plot(samples: list[Sample], path: Path, rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(minutes, [s.intake for s in samples], label="intake")
    axes[0].axhline(rate, color="grey", linestyle="--", label="produce rate")
    axes[0].axhline(0.95 * rate, color="red", linestyle=":", label="goal (95%)")
    axes[0].set_ylabel("samples/s")
    axes[0].legend(loc="lower left")
    axes[1].plot(minutes, [s.age if s.age is not None else float("nan") for s in samples])
    axes[1].axhline(2.0, color="red", linestyle=":")
    axes[1].set_ylabel("served age s")
    names = sorted({n for s in samples for n in s.rss})
    for name in names:
        axes[2].plot(minutes, [s.rss.get(name, float("nan")) for s in samples], label=name)
        axes[3].plot(minutes, [100 * s.cpu.get(name, float("nan")) for s in samples], label=name)
    axes[2].set_ylabel("RSS MB")
    axes[2].legend(loc="upper left")
    axes[3].set_ylabel("CPU %")
    axes[3].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def write_csv(samples: list[Sample], path: Path) -> None:
    names = sorted({n for s in samples for n in s.rss})
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            ["t_s", "intake_per_s", "trained", "lag", "age_s", "version"]
            + [f"{n}_rss_mb" for n in names]
            + [f"{n}_cpu" for n in names]
        )
        for s in samples:
            out.writerow(
                [f"{s.t:.1f}", f"{s.intake:.1f}", f"{s.trained:.0f}", f"{s.waiting:.0f}"]
                + ["" if s.age is None else f"{s.age:.3f}", "" if s.version is None else s.version]
                + [f"{s.rss.get(n, 0):.1f}" for n in names]
                + [f"{s.cpu.get(n, 0):.3f}" for n in names]
            )


def read_csv(path: Path) -> list[Sample]:
    samples = []
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            sample = Sample(
                t=float(rec["t_s"]),
                intake=float(rec["intake_per_s"]),
                trained=float(rec["trained"]),
                age=float(rec["age_s"]) if rec["age_s"] else None,
                version=float(rec["version"]) if rec["version"] else None,
                waiting=float(rec["lag"]),
            )
            for key, value in rec.items():
                if key.endswith("_rss_mb"):
                    sample.rss[key.removesuffix("_rss_mb")] = float(value)
                elif key.endswith("_cpu"):
                    sample.cpu[key.removesuffix("_cpu")] = float(value)
            samples.append(sample)
    return samples


def report(samples: list[Sample], args: argparse.Namespace) -> int:
    """Table every ``--table-every`` s (the CSV holds every sample), plot, verdict."""
    names = sorted({n for s in samples for n in s.rss})
    print(header(names))
    next_t = 0.0
    for sample in samples:
        if sample.t >= next_t or sample is samples[-1]:
            print(row(sample, names))
            next_t = sample.t + args.table_every
    plot(samples, args.out / "soak.png", args.rate)
    lines = verdict(samples, args)
    print("\n".join(lines))
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        return report(read_csv(args.from_csv), args)
    seconds = args.minutes * 60
    run_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    command = [
        sys.executable, "-m", "streamtrain.cli", "demo", "--rate", f"{args.rate:g}",
        "--dataset", args.dataset, "--run-dir", str(run_dir), "--port", "0",
        "--duration", f"{seconds + 120:.0f}", "--labels", args.labels,
    ]  # fmt: skip
    demo_out = args.out / "demo.out"
    print(f"run dir {run_dir}; demo output in {demo_out}", flush=True)
    with demo_out.open("wb") as out:
        demo = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    soak = Soak(args, run_dir)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and demo.poll() is None:
            soak.discover(demo.pid)
            if soak.scrape("trainer").total("streamtrain_train_samples_total") > 0:
                break
            time.sleep(1)
        soak.discover(demo.pid)
        print(header(sorted(soak.pids)), flush=True)
        samples = measure(soak, demo, seconds)
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
    write_csv(samples, args.out / "soak.csv")
    return report(samples, args)


if __name__ == "__main__":
    sys.exit(main())
