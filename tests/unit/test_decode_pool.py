"""JSON decode workers (ingest.decode_workers): identical results to one decoder, named
rejects, a lost worker is a clear error, and no worker outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from streamtrain.ingest.decode_pool import DecodePool, DecodeWorkerLost, resolve_workers
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.wire import Decoded, decode_json, encode_json

SPEC = SampleSpec(feature_shape=(2, 2), task="multiclass", num_classes=3)
SPARSE = SampleSpec(
    feature_shape=(2,), task="regression", target_dim=2, sparse=(SparseFeature("ids", "t", 4),)
)


def _values(spec: SampleSpec, n: int) -> list[bytes]:
    """``n`` JSON values of ``spec``, every 7th one refused for a different reason."""
    bad = [b"not json", b'{"features":[1],"label":0}', "\u00e9".encode("latin-1"), b"[]"]
    out = []
    for i in range(n):
        if i % 7 == 3:
            out.append(bad[(i // 7) % len(bad)])
        elif spec.sparse:
            out.append(
                b'{"features":[%d,0.5],"label":[1,2],"sparse":{"ids":[%d,%d]},"weight":2}'
                % (i, i, i + 1)
            )
        else:
            out.append(encode_json([[i, 0.5], [1, 2]], i % 3, timestamp=None if i % 2 else i))
    return out


def _same(a: Decoded, b: Decoded) -> None:
    for field in ("rows", "features", "labels", "weights", "timestamps"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.rejects == b.rejects
    if a.sparse is not None or b.sparse is not None:
        assert a.sparse is not None and b.sparse is not None
        for name, jagged in a.sparse.features.items():
            other = b.sparse.features[name]
            np.testing.assert_array_equal(jagged.ids, other.ids)
            np.testing.assert_array_equal(jagged.lengths, other.lengths)
            np.testing.assert_array_equal(jagged.weights, other.weights)


@pytest.fixture
def pool3() -> Iterator[DecodePool]:
    pool = DecodePool(SPEC, 3, min_slice=10)
    yield pool
    pool.close()


@pytest.mark.parametrize("spec", [SPEC, SPARSE], ids=["dense", "sparse"])
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_what_one_decoder_gives(spec: SampleSpec, workers: int) -> None:
    values = _values(spec, 503)
    stamps = np.arange(503, dtype=np.float64) + 1000.0
    alone = decode_json(spec, values, stamps)
    assert alone.rejects and len(alone.rows) > 400  # the mix has both
    pool = DecodePool(spec, workers, min_slice=10)
    try:
        _same(pool(spec, values, stamps), alone)
        assert len(pool.pids) == workers - 1
        _same(pool(spec, values[:5], stamps[:5]), decode_json(spec, values[:5], stamps[:5]))
    finally:
        pool.close()


def test_a_killed_worker_is_a_clear_error_and_the_pool_stops(pool3: DecodePool) -> None:
    values = _values(SPEC, 100)
    stamps = np.zeros(100)
    pool3(SPEC, values, stamps)
    victim, other = pool3.pids
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(DecodeWorkerLost, match=rf"pid {victim} .*killed by signal 9"):
        pool3(SPEC, values, stamps)
    _wait_gone(other)  # the pool stopped its other worker too
    with pytest.raises(RuntimeError, match="closed"):
        pool3(SPEC, values, stamps)


def test_workers_ignore_sigterm_and_sigint_the_parent_owns_the_shutdown(
    pool3: DecodePool,
) -> None:
    values, stamps = _values(SPEC, 100), np.zeros(100)
    pool3(SPEC, values, stamps)
    for pid in pool3.pids:  # as systemd signals every process of the trainer's cgroup
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
    _same(pool3(SPEC, values, stamps), decode_json(SPEC, values, stamps))


def test_close_stops_every_worker(pool3: DecodePool) -> None:
    pool3(SPEC, _values(SPEC, 100), np.zeros(100))
    pids = pool3.pids
    pool3.close()
    for pid in pids:
        _wait_gone(pid)


_PARENT = """
import sys, numpy as np
from streamtrain.ingest.decode_pool import DecodePool
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_json
spec = SampleSpec(feature_shape=(2,), task="binary")
pool = DecodePool(spec, 3, min_slice=1)
pool(spec, [encode_json([1, 2], 1)] * 10, np.zeros(10))
print(*pool.pids, flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_workers_die_with_their_parent(how: signal.Signals) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.send_signal(how)
        assert parent.wait(timeout=10) == -how
        for pid in pids:
            _wait_gone(pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_auto_worker_count_shares_the_cores_among_local_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # one core per rank: no workers
    assert resolve_workers("auto") == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    alone = resolve_workers("auto")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "not a number")  # ignored, as when absent
    assert resolve_workers("auto") == alone


def test_auto_worker_count_follows_the_cores() -> None:
    assert resolve_workers("auto", cores=1) == 1
    assert resolve_workers("auto", cores=2) == 1
    assert resolve_workers("auto", cores=4) == 3
    assert resolve_workers("auto", cores=64) == 8
    assert resolve_workers(5, cores=2) == 5
    with pytest.raises(ValueError, match=">= 2 decoders"):
        DecodePool(SPEC, 1)


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until ``pid`` no longer runs (a zombie of another parent counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        except OSError:
            if not _alive(pid):
                return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs after {timeout_s} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
