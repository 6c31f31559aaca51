"""The dry run's stand-ins for the device (bench/gpu_check.py ``--dry``), on a CPU machine.

The carried set is built for CPython 3.12; this machine's interpreter may be another. A
carried wheel this interpreter can install is used as is; one it cannot (a compiled wheel for
3.12) is replaced by the same release built for this interpreter, downloaded with pip into
``twins`` (kept between runs). What gets installed is then the carried set, name for name and
version for version. The device's own torch and numpy are stood in for by a folder of links to this
machine's torch, numpy and what torch needs, and nothing else.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

from gpu_wheelset import DEVICE_PROVIDED, canonical, read_wheel
from packaging.requirements import Requirement
from packaging.tags import sys_tags


def installable_here(files: list[Path], twins: Path, notes: list[str]) -> list[Path]:
    """``files`` with each wheel this interpreter refuses swapped for its twin."""
    here = set(sys_tags())
    twins.mkdir(parents=True, exist_ok=True)
    out, foreign = [], []
    for path in files:
        wheel = read_wheel(path)
        if wheel.tags & here:
            out.append(path)
        else:
            foreign.append(f"{wheel.name}=={wheel.version}")
    if foreign:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "-d", str(twins), *foreign],
            check=True,
            timeout=600,
        )  # fmt: skip
        for twin in sorted(twins.glob("*.whl")):
            found = read_wheel(twin)
            if f"{found.name}=={found.version}" in foreign and found.tags & here:
                out.append(twin)
        version = ".".join(map(str, sys.version_info[:2]))
        notes.append(
            f"dry run on Python {version}: {len(foreign)} compiled wheel(s) installed as the "
            f"same release built for {version} ({', '.join(foreign)})"
        )
    return out


def _closure(names: list[str]) -> list[metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    pending = [Requirement(n) for n in names]
    while pending:
        req = pending.pop()
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonical(req.name)
        if key in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional CUDA runtime a CPU build does not install
        found[key] = dist
        pending += [Requirement(r) for r in dist.requires or []]
    return list(found.values())


def torch_site(folder: Path) -> Path:
    """A folder of links to this machine's torch, numpy and torch's own requirements."""
    folder.mkdir(parents=True, exist_ok=True)
    for dist in _closure(sorted(DEVICE_PROVIDED)):
        origin = Path(str(dist.locate_file("")))
        for file in dist.files or []:
            first = Path(file).parts[0]
            if first in ("..", "__pycache__") or first.endswith(".pth"):
                continue
            link = folder / first
            if not link.exists() and (origin / first).exists():
                link.symlink_to(origin / first)
    return folder
