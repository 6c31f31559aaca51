"""The publisher's safetensors encoder (snapshot/payload.py, ``encode_view``) writes exactly
the bytes ``safetensors.torch.save`` writes, for every dtype it handles itself, and leaves
the others to ``save``; what it writes loads back with safetensors. The writer's
``encode_parts`` gives the same bytes as parts, cut into the same chunks, without copying
the tensors."""

from __future__ import annotations

import torch
from safetensors.torch import save

from streamtrain.snapshot.payload import (
    decode_state,
    encode_parts,
    encode_state,
    encode_view,
    sha256_hex,
    split_chunks,
)


def _every_dtype() -> dict[str, torch.Tensor]:
    dtypes = [
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.float16,
        torch.bfloat16,
        torch.int32,
        torch.float32,
        torch.float64,
        torch.int64,
    ]
    generator = torch.Generator().manual_seed(3)
    state = {
        f"t{i}.{str(d)[6:]}": (torch.rand(5, 3, generator=generator) * 100).to(d)
        for i, d in enumerate(dtypes)
    }
    # names out of order, a scalar, an empty tensor, a name outside ASCII, a delta's rows
    state |= {
        "a.scalar": torch.tensor(2.5),
        "z.empty": torch.zeros(0, 4),
        "é.weight": torch.ones(2, 2),
        "emb.weight@rows": torch.arange(4),
    }
    return state


def test_the_bytes_are_safetensors_own() -> None:
    for state in (_every_dtype(), {"w": torch.randn(7, 3)}, {}):
        view, infos = encode_view(state)
        assert bytes(view) == save(state)
        assert [i.name for i in infos] == list(state)
        loaded = decode_state(bytes(view))
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())


def test_a_dtype_it_does_not_handle_is_left_to_safetensors() -> None:
    state = {"c": torch.ones(3, dtype=torch.complex64), "w": torch.ones(2)}
    view, _ = encode_view(state)
    assert bytes(view) == save(state)


def test_encode_state_is_the_same_bytes() -> None:
    state = _every_dtype()
    assert encode_state(state)[0] == bytes(encode_view(state)[0])


def test_the_parts_cut_into_the_same_chunks_as_the_joined_bytes() -> None:
    state = _every_dtype() | {"big": torch.arange(3000, dtype=torch.float32)}
    joined = save(state)
    for state_, expected in ((state, joined), ({"c": torch.ones(3, dtype=torch.complex64)}, None)):
        payload, infos = encode_parts(state_)
        whole = expected if expected is not None else save(state_)
        assert payload.size == len(whole)
        assert payload.sha256() == sha256_hex(whole)
        assert [i.name for i in infos] == list(state_)
        # 1 byte, a size that splits the header, one that no tensor boundary aligns with,
        # the size of the biggest part, and one larger than the whole payload
        for size in (1, 7, 8, 1000, 12000, len(whole) + 5):
            chunks = payload.chunks(size)
            assert [bytes(c) for c in chunks] == [bytes(c) for c in split_chunks(whole, size)]


def test_a_chunk_inside_one_tensor_is_a_view_of_its_memory() -> None:
    table = torch.zeros(1024, dtype=torch.float32)  # 4096 bytes: chunks of 1024 inside it
    payload, _ = encode_parts({"table": table})
    chunks = payload.chunks(1024)
    inside = [c for c in chunks if isinstance(c, memoryview) and len(c) == 1024][-1]
    assert bytes(inside) == bytes(1024)
    table.fill_(1.0)  # a view sees the change, a copy would not (the header is 8-aligned)
    assert bytes(inside) == torch.ones(256).numpy().tobytes()


def test_a_payload_of_no_tensors_is_one_chunk() -> None:
    payload, _ = encode_parts({})
    assert [bytes(c) for c in payload.chunks(4)] == [bytes(c) for c in split_chunks(save({}), 4)]
