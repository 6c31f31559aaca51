"""The GPU check's wheel-set completeness (bench/gpu_wheelset.py), on small wheels made here."""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.module_files import load_file

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def wheelset() -> ModuleType:
    return load_file(BENCH / "gpu_wheelset.py", "gpu_wheelset")


def _wheel(folder: Path, name: str, version: str, tag: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-{tag}.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


ANY = "py3-none-any"
CP312 = "cp312-cp312-manylinux_2_17_x86_64"


def _problems(
    wheelset: ModuleType, tmp: Path, wheels: list[tuple[str, str, str, list[str]]]
) -> list[str]:
    built = [wheelset.read_wheel(_wheel(tmp, *w)) for w in wheels]
    problems: list[str] = wheelset.completeness_problems(built, ["app[x]==1.0"], ())
    return problems


APP = (
    "app",
    "1.0",
    ANY,
    ["lib>=2", "torch>=2.2", "opt; extra == 'x'", "win; sys_platform == 'win32'"],
)


def test_a_complete_set_has_no_problem(wheelset: ModuleType, tmp_path: Path) -> None:
    wheels = [APP, ("lib", "2.1", CP312, []), ("opt", "0.1", ANY, [])]
    assert _problems(wheelset, tmp_path, wheels) == []


def test_a_missing_requirement_is_named(wheelset: ModuleType, tmp_path: Path) -> None:
    problems = _problems(wheelset, tmp_path, [APP, ("lib", "2.1", CP312, [])])
    assert problems == ['nothing carried provides opt; extra == "x" (needed on the device)']


def test_a_wheel_at_a_version_the_requirement_refuses_is_named(
    wheelset: ModuleType, tmp_path: Path
) -> None:
    problems = _problems(
        wheelset, tmp_path, [APP, ("lib", "1.9", CP312, []), ("opt", "1", ANY, [])]
    )
    assert problems == ["lib-1.9-cp312-cp312-manylinux_2_17_x86_64.whl does not meet lib>=2"]


def test_a_wheel_for_another_interpreter_is_named(wheelset: ModuleType, tmp_path: Path) -> None:
    other = "cp311-cp311-manylinux_2_17_x86_64"
    problems = _problems(
        wheelset, tmp_path, [APP, ("lib", "2.1", other, []), ("opt", "1", ANY, [])]
    )
    assert problems == [f"lib-2.1-{other}.whl does not install on CPython 3.12 manylinux x86-64"]


def test_an_unneeded_wheel_is_named(wheelset: ModuleType, tmp_path: Path) -> None:
    wheels = [APP, ("lib", "2.1", CP312, []), ("opt", "1", ANY, []), ("stray", "1", ANY, [])]
    assert _problems(wheelset, tmp_path, wheels) == [
        "stray-1-py3-none-any.whl is carried but nothing needs it"
    ]


def test_requirements_are_followed_through_each_wheels_metadata(
    wheelset: ModuleType, tmp_path: Path
) -> None:
    wheels = [APP, ("lib", "2.1", CP312, ["deep>=1"]), ("opt", "1", ANY, [])]
    assert _problems(wheelset, tmp_path, wheels) == [
        "nothing carried provides deep>=1 (needed on the device)"
    ]
