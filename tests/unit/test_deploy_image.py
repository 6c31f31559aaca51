"""deploy/Dockerfile and .dockerignore: the image builds from what the context holds, runs as a
non-root user, defaults to CPU torch, and its health check works against a real endpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

from streamtrain.metrics import TRAINER_REGISTRY, serve_metrics
from tests.dependency_closure import canonical, closure

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(ins.split(" ", 1)[0].upper(), ins.split(" ", 1)[1]) for ins in logical]


def _ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path, or a parent of it, decides."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        if pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, p) or fnmatchcase(p, glob) for p in prefixes):
            ignored = not negate
    return ignored


def test_multi_stage_non_root_with_streamtrain_entrypoint() -> None:
    steps = _instructions()
    stages = [args for ins, args in steps if ins == "FROM"]
    assert len(stages) >= 2 and " AS builder" in stages[0], "builder stage, then runtime"
    assert any(ins == "COPY" and "--from=builder" in args for ins, args in steps)
    users = [args for ins, args in steps if ins == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "run as a non-root user"
    entrypoint = [args for ins, args in steps if ins == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1]) == ["streamtrain"]


def test_cpu_torch_by_default_and_build_args_exist() -> None:
    steps = _instructions()
    declared: dict[str, str] = {}
    for ins, args in steps:
        if ins == "ARG":
            name, _, default = args.partition("=")
            # A later stage re-declares an ARG without a default to use it; keep the default.
            declared[name] = default or declared.get(name, "")
    assert "/whl/cpu" in declared["TORCH_INDEX_URL"], "CPU wheels unless a build arg says CUDA"
    torch_install = next(a for i, a in steps if i == "RUN" and "torch==" in a)
    assert "--index-url" in torch_install and "TORCH_INDEX_URL" in torch_install
    for compose in ("docker-compose.yml", "docker-compose.gpu.yml"):
        for name, service in yaml.safe_load((ROOT / compose).read_text())["services"].items():
            build = service.get("build")
            if isinstance(build, dict):
                unknown = set(build.get("args", {})) - declared.keys()
                assert not unknown, f"{compose} {name} passes undeclared build args {unknown}"


def test_build_context_keeps_what_copy_needs_and_drops_the_rest() -> None:
    sources = []
    for ins, args in _instructions():
        if ins == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
    assert sources, "the builder copies the package in"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not _ignored(source), f".dockerignore drops {source}, which the build copies"
    assert not _ignored("streamtrain/cli/command.py")
    for heavy in (".venv/bin/python", ".git/HEAD", "checkpoints/x", "tests/unit/test_x.py"):
        assert _ignored(heavy), f"{heavy} should stay out of the build context"
    assert _ignored("streamtrain/__pycache__/x.pyc")


def test_healthcheck_probes_with_python_and_fails_on_a_dead_endpoint() -> None:
    check = next(args for ins, args in _instructions() if ins == "HEALTHCHECK")
    argv = json.loads(check[check.index("CMD") + 3 :])
    assert argv[:2] == ["python", "-c"], "slim images have no curl"

    def probe(url: str) -> int:
        env = {**os.environ, "HEALTHCHECK_URL": url}
        cmd = [sys.executable, "-c", argv[2]]
        return subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode

    server = serve_metrics(TRAINER_REGISTRY, 0, host="127.0.0.1")
    try:
        assert probe(f"http://127.0.0.1:{server.server_port}/metrics") == 0
    finally:
        server.shutdown()
        server.server_close()
    assert probe(f"http://127.0.0.1:{server.server_port}/metrics") != 0, "closed port is unhealthy"
    assert probe("") == 0, "no URL (e.g. `produce`) means nothing to probe"


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonical(name)] = version
    return pins


def test_no_volume_in_the_shared_image() -> None:
    """serve and produce keep nothing; a VOLUME would leave an anonymous volume per container."""
    assert not [args for ins, args in _instructions() if ins == "VOLUME"]


def test_base_image_is_pinned_by_exact_tag_or_digest() -> None:
    steps = _instructions()
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    for ins, image in steps:
        if ins != "FROM":
            continue
        reference = image.split()[0]
        reference = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], reference)
        if "@sha256:" in reference:
            continue
        tag = reference.rpartition(":")[2]
        assert re.fullmatch(r"\d+\.\d+\.\d+-slim-[a-z]+", tag), (
            f"FROM {reference}: pin an exact tag (Python patch and Debian release) or a digest"
        )


def test_every_pip_install_in_the_image_uses_the_constraints_file() -> None:
    steps = _instructions()
    env = " ".join(args for ins, args in steps if ins == "ENV")
    assert "PIP_CONSTRAINT=/src/deploy/constraints.txt" in env
    copied = [i for i, (ins, args) in enumerate(steps) if ins == "COPY" and "constraints" in args]
    first_pip = next(i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "pip " in args)
    assert copied and copied[0] < first_pip, "copy the constraints before the first pip install"
    assert not _ignored("deploy/constraints.txt"), ".dockerignore must keep the constraints"


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["broker"]
    pins = _constraints()
    needed = closure(requirements)
    missing = sorted(set(needed) - pins.keys())
    assert not missing, f"deploy/constraints.txt lacks pins for {missing}"
    for requirement in map(Requirement, requirements):
        version = pins[canonical(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"constraints pin {requirement.name}=={version}, outside pyproject's {requirement}"
        )
    torch_arg = next(a for i, a in _instructions() if i == "ARG" and a.startswith("TORCH_VERSION="))
    assert torch_arg.split("=", 1)[1] == pins["torch"], "Dockerfile and constraints disagree"
