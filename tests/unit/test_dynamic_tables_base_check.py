"""A base's mapping check (no ID owning two rows) in hash buckets: it finds every ID given twice
wherever the two rows are, ignores free rows, and reading a mapped payload it holds a fraction
of the mapping (a byte a row and one bucket), its pages dropped behind it; the sorted copy it
replaced held the mapping's bytes twice (its copy, and the pages until the payload closed)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from streamtrain.snapshot import mapped as mapped_module
from streamtrain.snapshot.mapped import MappedPayload, blocks_released
from streamtrain.snapshot.payload import encode_parts
from streamtrain.train.models import dynamic_twice
from streamtrain.train.models.dynamic_lookup import EMPTY, mapping_problem
from streamtrain.train.models.dynamic_twice import id_twice


def _pieces(size: int):  # type: ignore[no-untyped-def]
    """A ``blocks`` that cuts the mapping into pieces of ``size`` rows."""
    return lambda ids: (ids[i : i + size] for i in range(0, ids.numel(), size))


def _mapping(rows: int, free: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.iinfo(np.int64).max, rows, replace=False).astype(np.int64)
    ids -= np.int64(1 << 62)  # negative IDs too
    ids[rng.choice(rows, free, replace=False)] = EMPTY
    return torch.from_numpy(ids)


@pytest.mark.parametrize("bucket_ids", [1 << 20, 64])  # one bucket; ~157 buckets
def test_an_id_given_twice_is_found_wherever_its_rows_are(
    monkeypatch: pytest.MonkeyPatch, bucket_ids: int
) -> None:
    monkeypatch.setattr(dynamic_twice, "BUCKET_IDS", bucket_ids)
    ids = _mapping(10_000, 500, seed=1)
    assert id_twice(ids, EMPTY) is None, "distinct IDs and many free rows pass"
    assert id_twice(ids, EMPTY, _pieces(333)) is None
    owned = (ids != EMPTY).nonzero().squeeze(1)
    for first, second in ((0, -1), (17, 18), (4_000, 9_000)):
        forged = ids.clone()
        forged[owned[second]] = forged[owned[first]]
        expected = int(forged[owned[first]])
        assert id_twice(forged, EMPTY) == expected
        assert id_twice(forged, EMPTY, _pieces(333)) == expected, "across pieces"
    forged = ids.clone()
    forged[owned[:3]] = 5  # three rows, one ID; and another pair elsewhere
    forged[owned[-2:]] = -9
    assert id_twice(forged, EMPTY, _pieces(97)) in (5, -9)


def test_a_base_mapping_problem_names_the_id_and_passes_a_good_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dynamic_twice, "BUCKET_IDS", 128)
    ids = _mapping(4_096, 100, seed=2)
    assert mapping_problem(None, 4_096, None, ids) is None
    forged = ids.clone()
    owned = (forged != EMPTY).nonzero().squeeze(1)
    forged[owned[-1]] = forged[owned[0]]
    problem = mapping_problem(None, 4_096, None, forged, _pieces(1000))
    assert problem == f"slot_ids give ID {int(forged[owned[0]])} more than one row"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_a_mapped_base_mapping_is_checked_in_a_fraction_of_its_bytes(tmp_path: Path) -> None:
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists() or not os.access(clear_refs, os.W_OK):
        pytest.skip("needs /proc/self/clear_refs (Linux) to reset the high-water mark")
    rows = 8 << 20  # 64 MiB of int64, 8 buckets
    ids = torch.arange(rows, dtype=torch.int64) * 7 - (rows // 2)
    ids[::5] = EMPTY
    parts, _ = encode_parts({"slot_ids": ids})
    path = tmp_path / "base.safetensors"
    with path.open("wb") as out:
        for part in parts.parts:
            out.write(part)
    del ids, parts
    with path.open("rb") as file:
        mapped = MappedPayload(file, path.stat().st_size)
    slot_ids = mapped.tensors["slot_ids"]
    clear_refs.write_text("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    assert int(slot_ids[-1]) == (rows - 1) * 7 - rows // 2  # read in: its last page present
    assert mapping_problem(None, rows, None, slot_ids, blocks_released) is None
    rise_mib = (_status_kb("VmHWM") - before) / 1024
    # a byte a row (8 MiB), one bucket (8 MiB), a block and its temporaries (~10 MiB); the
    # sorted copy held 64 MiB of copy and 64 MiB of mapped pages
    assert rise_mib < 40, f"the check's peak rose {rise_mib:.0f} MiB over 64 MiB of mapping"
    # the mapping's own pages (the heap may keep what the check freed: glibc's business)
    assert _present(slot_ids) <= 2 * mapped_module._BLOCK_BYTES // PAGE, "pages left mapped"


PAGE = 4096


def _present(tensor: torch.Tensor) -> int:
    """Pages of ``tensor`` mapped in this process now (/proc/self/pagemap's present bit)."""
    first = tensor.data_ptr() // PAGE
    last = (tensor.data_ptr() + tensor.numel() * tensor.element_size() - 1) // PAGE
    with Path("/proc/self/pagemap").open("rb") as pagemap:
        pagemap.seek(first * 8)
        entries = struct.unpack(f"{last - first + 1}Q", pagemap.read((last - first + 1) * 8))
    return sum(1 for entry in entries if entry >> 63)
