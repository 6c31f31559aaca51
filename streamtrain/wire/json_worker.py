"""A JSON decode worker process: request frames on stdin, response frames on stdout.

Started by :class:`~streamtrain.ingest.decode_pool.DecodePool` as
``python -m streamtrain.wire.json_worker SPEC_JSON``. msgspec holds the GIL while it decodes,
so parallel decoding needs processes; this one imports only the wire format (not torch, not
Kafka) to start fast.

It never outlives its parent:

1. On Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills it when the parent exits,
   even by ``kill -9``.
2. Everywhere, the parent's end of stdin closing (the parent exited or closed the pool) is a
   clean EOF: the worker exits 0.

SIGINT and SIGTERM are ignored: a Ctrl-C reaches the whole process group, and a service
manager may signal every process of the trainer's cgroup (systemd's default); the parent, which
owns the shutdown, finishes its step and closes the pipes. A worker that died first would make
that clean stop an error.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import IO, Any

from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.wire.decode_frames import (
    error_response,
    read_frame,
    read_request,
    response,
    split_values,
    write_frame,
)
from streamtrain.wire.json_format import decode_json

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def spec_to_json(spec: SampleSpec) -> str:
    """``spec`` as the worker's command-line argument."""
    return json.dumps(
        {
            "feature_shape": list(spec.feature_shape),
            "task": spec.task,
            "num_classes": spec.num_classes,
            "target_dim": spec.target_dim,
            "sparse": [[f.name, f.table, f.max_length] for f in spec.sparse],
        }
    )


def spec_from_json(text: str) -> SampleSpec:
    raw: dict[str, Any] = json.loads(text)
    return SampleSpec(
        feature_shape=tuple(raw["feature_shape"]),
        task=raw["task"],
        num_classes=raw["num_classes"],
        target_dim=raw["target_dim"],
        sparse=tuple(SparseFeature(n, t, m) for n, t, m in raw["sparse"]),
    )


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            raise SystemExit(0)


def serve(spec: SampleSpec, requests: IO[bytes], responses: IO[bytes]) -> None:
    """Answer every request frame of ``requests`` until it ends."""
    while (payload := read_frame(requests)) is not None:
        try:
            _n, lengths, stamps, blob = read_request(payload)
            frame = response(spec, decode_json(spec, split_values(lengths, blob), stamps))
        except Exception as exc:  # a bug here must reach the parent as one line, not a hang
            frame = error_response(f"{type(exc).__name__}: {exc}")
        write_frame(responses, frame)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m streamtrain.wire.json_worker SPEC_JSON")
    try:
        serve(spec_from_json(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the parent went away mid-answer: nothing left to do
        os._exit(0)


if __name__ == "__main__":
    main()
