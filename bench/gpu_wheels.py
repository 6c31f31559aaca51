"""``make gpu-wheels``: fill ``.whl/`` with what the GPU check carries to the device machine.

1. Build the project's wheel from the tree (no build isolation: offline-safe, as the install
   test does).
2. Resolve, with pip, every runtime requirement of ``streamtrain[broker]`` and the check's
   test runner for CPython 3.12 on manylinux x86-64, at the versions ``deploy/constraints.txt``
   pins, leaving out what the device already has (``DEVICE_PROVIDED``: torch, numpy).
3. Download exactly those wheels (binary only, ``--no-deps``), drop any other file, write
   ``MANIFEST.json`` (file, name, version, sha256, bytes).
4. Check the set is complete (bench/gpu_wheelset.py) and that tree + wheels fit the 64 MiB a
   device call carries; print what it weighs. Exit 1 if not.

A resolution is reused while the requirements and constraints are unchanged (its key is in the
manifest), so a second run only rebuilds the project wheel.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gpu_wheelset import (
    CHECK_REQUIREMENTS,
    DEVICE_PROVIDED,
    EXTRAS,
    MANIFEST,
    PLATFORMS,
    ROOT,
    WHEELS,
    applies,
    canonical,
    read_wheel,
)
from gpu_wheelset import main as check_set
from packaging.requirements import Requirement

CONSTRAINTS = ROOT / "deploy" / "constraints.txt"


def _pip(*args: str) -> None:
    # The user's pip settings (index, find-links) apply: this is the ordinary client.
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, timeout=900)


def _target_options() -> list[str]:
    options = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for platform in PLATFORMS:
        options += ["--platform", platform]
    return options


def build_project_wheel(into: Path) -> Path:
    """The project's wheel, built from a copy of the sources (the tree stays clean)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, source / name)
        shutil.copytree(
            ROOT / "streamtrain",
            source / "streamtrain",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        built = Path(tmp) / "dist"
        _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(built), str(source))
        (wheel,) = built.glob("streamtrain-*.whl")
        for old in into.glob("streamtrain-*.whl"):
            old.unlink()
        return Path(shutil.copy(wheel, into / wheel.name))


def requirements(project: Path) -> list[str]:
    """The project wheel's requirements on the target (its extras applied, markers evaluated,
    device-provided names dropped), plus the check's test runner."""
    out = []
    for line in read_wheel(project).requires:
        req = Requirement(line)
        if applies(req, EXTRAS) and canonical(req.name) not in DEVICE_PROVIDED:
            req.marker = None
            out.append(str(req))
    return sorted(out) + list(CHECK_REQUIREMENTS)


def resolve(reqs: list[str]) -> dict[str, str]:
    """name -> version that pip picks for ``reqs`` on the target, under the constraints."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        _pip(
            "install", "-q", "--dry-run", "--ignore-installed", "--target", str(Path(tmp) / "t"),
            "--report", str(report), *_target_options(), "-c", str(CONSTRAINTS), *reqs,
        )  # fmt: skip
        items = json.loads(report.read_text())["install"]
    return {
        canonical(i["metadata"]["name"]): i["metadata"]["version"]
        for i in items
        if canonical(i["metadata"]["name"]) not in DEVICE_PROVIDED
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resolution_key(reqs: list[str]) -> str:
    text = "\n".join([*reqs, CONSTRAINTS.read_text(), *PLATFORMS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _previous(key: str) -> dict[str, str] | None:
    if not MANIFEST.is_file():
        return None
    old = json.loads(MANIFEST.read_text())
    if old.get("resolution_key") != key:
        return None
    pins = {str(w["name"]): str(w["version"]) for w in old["wheels"] if w["name"] != "streamtrain"}
    present = all((WHEELS / str(w["file"])).is_file() for w in old["wheels"])
    return pins if present else None


def main() -> int:
    WHEELS.mkdir(exist_ok=True)
    project = build_project_wheel(WHEELS)
    reqs = requirements(project)
    key = _resolution_key(reqs)
    pins = _previous(key)
    if pins is None:
        print(f"resolving {len(reqs)} requirements for CPython 3.12 manylinux x86-64 ...")
        pins = resolve(reqs)
        _pip(
            "download", "-q", "--no-deps", *_target_options(), "-d", str(WHEELS),
            *(f"{name}=={version}" for name, version in sorted(pins.items())),
        )  # fmt: skip
    else:
        print(f"the resolution in {MANIFEST.name} still holds: {len(pins)} wheels reused")
    keep = {project.name}
    entries = []
    for path in sorted(WHEELS.glob("*.whl")):
        wheel = read_wheel(path)
        wanted = wheel.name == "streamtrain" or pins.get(wheel.name) == str(wheel.version)
        if not wanted:
            continue
        keep.add(path.name)
        entries.append(
            {
                "file": path.name,
                "name": wheel.name,
                "version": str(wheel.version),
                "sha256": _sha256(path),
                "bytes": path.stat().st_size,
            }
        )
    missing = set(pins) - {str(e["name"]) for e in entries}
    if missing:
        print(f"pip downloaded no wheel for {sorted(missing)}")
        return 1
    for path in WHEELS.iterdir():
        if path.name not in keep and path != MANIFEST:
            path.unlink()  # an older version: two versions of one name stop the install
    manifest = {
        "target": "CPython 3.12, manylinux x86-64 (the device machine)",
        "resolution_key": key,
        "device_provided": DEVICE_PROVIDED,
        "wheels": entries,
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    return check_set()


if __name__ == "__main__":
    raise SystemExit(main())
