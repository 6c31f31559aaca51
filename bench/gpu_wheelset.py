"""The wheel set the GPU check carries (``.whl/``): its target, manifest, budget and completeness.

The device machine is bare and offline: Python 3.12 with a CUDA build of torch (and numpy),
nothing else of ours. ``make gpu-wheels`` (bench/gpu_wheels.py) fills ``.whl/`` with cp312
manylinux x86-64 wheels of everything else the check needs and writes ``MANIFEST.json``;
``make gpu-check`` (bench/gpu_check.py) installs exactly the manifest's files there with
``--no-index --no-deps``. So completeness is checked here, from the wheels' own metadata: every
requirement reachable from the project wheel (with its ``broker`` extra) and the check's test
requirements is met by one carried wheel whose tags fit the target, or is named in
``DEVICE_PROVIDED``.

Runs with the target's interpreter or this one: stdlib plus ``packaging`` (which pytest needs,
so it is always in the set).
"""

from __future__ import annotations

import email.parser
import json
import re
import subprocess
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
MANIFEST = WHEELS / "MANIFEST.json"
BUDGET_BYTES = 64 * 1024 * 1024  # what a device call carries: working tree + carried paths
TARGET_PYTHON = (3, 12)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)
# The device's interpreter, for evaluating requirement markers (PEP 508 names).
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
EXTRAS = ("broker",)
# What the check imports beyond the package and its broker extra: the test runner.
CHECK_REQUIREMENTS = ("pytest>=8",)
# Already on the device (docs/operations.md, "GPU notes"); carrying them would shadow its
# builds: torch is the CUDA build the check is about, and numpy (~16 MiB as a wheel) is in the
# same image, a 2.x release (2.5.2 when last listed), which meets streamtrain's numpy>=1.26.
DEVICE_PROVIDED = {
    "torch": "the device's CUDA build",
    "numpy": "in the device image (2.x), ~16 MiB as a wheel",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_tags() -> set[Tag]:
    """Every wheel tag the device's CPython 3.12 on manylinux x86-64 accepts."""
    tags = set(cpython_tags(TARGET_PYTHON, abis=["cp312", "abi3", "none"], platforms=PLATFORMS))
    tags |= set(compatible_tags(TARGET_PYTHON, "cp312", PLATFORMS))
    return tags


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # canonical
    version: Version
    requires: tuple[str, ...]
    tags: frozenset[Tag]


def read_wheel(path: Path) -> Wheel:
    name, version, _build, tags = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        member = next(
            n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        )
        meta = email.parser.BytesParser().parsebytes(archive.read(member))
    return Wheel(path, canonical(name), version, tuple(meta.get_all("Requires-Dist") or []), tags)


def applies(req: Requirement, extras: Iterable[str]) -> bool:
    """Whether ``req`` is needed on the target, with ``extras`` of its parent requested."""
    if req.marker is None:
        return True
    envs = [{**TARGET_ENV, "extra": e} for e in extras] or [{**TARGET_ENV, "extra": ""}]
    return any(req.marker.evaluate(env) for env in envs)


def completeness_problems(
    wheels: list[Wheel], roots: Iterable[str], root_extras: tuple[str, ...]
) -> list[str]:
    """What keeps ``wheels`` from being an installable, complete set on the target: a
    requirement no wheel meets (or meets at the wrong version), a wheel whose tags the target
    refuses, two versions of one name, or a wheel nothing needs."""
    problems = []
    by_name: dict[str, Wheel] = {}
    fits = target_tags()
    for wheel in wheels:
        if wheel.name in by_name:
            problems.append(f"two wheels of {wheel.name}: keep one ({wheel.path.name})")
        by_name[wheel.name] = wheel
        if not wheel.tags & fits:
            problems.append(f"{wheel.path.name} does not install on CPython 3.12 manylinux x86-64")
    needed: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = [(Requirement(r), root_extras) for r in roots]
    while pending:
        req, extras = pending.pop()
        if not applies(req, extras):
            continue
        key = canonical(req.name)
        if key in DEVICE_PROVIDED:
            continue
        found = by_name.get(key)
        if found is None:
            problems.append(f"nothing carried provides {req} (needed on the device)")
            continue
        if not req.specifier.contains(found.version, prereleases=True):
            problems.append(f"{found.path.name} does not meet {req}")
        needed.add(key)
        if (key, frozenset(req.extras)) in visited:
            continue
        visited.add((key, frozenset(req.extras)))
        pending += [(Requirement(r), tuple(req.extras)) for r in found.requires]
    for name in sorted(set(by_name) - needed):
        problems.append(f"{by_name[name].path.name} is carried but nothing needs it")
    return problems


def load_manifest() -> dict[str, object]:
    if not MANIFEST.is_file():
        raise SystemExit(f"{MANIFEST.relative_to(ROOT)} is missing: run `make gpu-wheels` first")
    manifest: dict[str, object] = json.loads(MANIFEST.read_text())
    return manifest


def manifest_wheels() -> list[Wheel]:
    files = load_manifest()["wheels"]
    assert isinstance(files, list)
    return [read_wheel(WHEELS / str(entry["file"])) for entry in files]


def project_requirements(project: Wheel) -> list[str]:
    """The roots of the set: the project (its own requirements, read from its wheel) and the
    check's test runner."""
    return [f"{project.name}[{','.join(EXTRAS)}]=={project.version}", *CHECK_REQUIREMENTS]


def tree_bytes() -> int:
    """Bytes of what a device call sends besides carried paths: tracked files and untracked
    files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def budget_lines() -> tuple[list[str], bool]:
    """What the carried wheels and the tree weigh against the budget; whether they fit."""
    wheels = sorted(WHEELS.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)
    carried = sum(p.stat().st_size for p in WHEELS.iterdir() if p.is_file())
    tree = tree_bytes()
    mib = 1024 * 1024
    lines = [f"  {p.stat().st_size / mib:6.2f} MiB  {p.name}" for p in wheels]
    lines.append(f"wheels (.whl/, {len(wheels)} files): {carried / mib:.2f} MiB")
    lines.append(f"working tree (tracked + untracked, not ignored): {tree / mib:.2f} MiB")
    total = carried + tree
    fits = total <= BUDGET_BYTES
    lines.append(
        f"carried in all: {total / mib:.2f} MiB of {BUDGET_BYTES / mib:.0f} MiB "
        + ("(fits)" if fits else "(OVER BUDGET)")
    )
    return lines, fits


def main(budget: bool = True) -> int:
    """Print the budget (unless ``budget`` is off: on the device the set has already travelled)
    and the completeness verdict; 1 on any problem."""
    fits = True
    if budget:
        lines, fits = budget_lines()
        print("\n".join(lines))
    wheels = manifest_wheels()
    project = next(w for w in wheels if w.name == "streamtrain")
    problems = completeness_problems(wheels, project_requirements(project), ())
    for problem in problems:
        print(f"incomplete: {problem}")
    if not problems:
        print(
            f"complete: {len(wheels)} wheels meet every requirement of streamtrain"
            f"[{','.join(EXTRAS)}] and {', '.join(CHECK_REQUIREMENTS)} on CPython 3.12 "
            f"manylinux x86-64; device provides {', '.join(DEVICE_PROVIDED)}"
        )
    return 0 if fits and not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
