"""The publisher's safetensors encoder (snapshot/payload.py, ``encode_view``) writes exactly
the bytes ``safetensors.torch.save`` writes, for every dtype it handles itself, and leaves
the others to ``save``; what it writes loads back with safetensors."""

from __future__ import annotations

import torch
from safetensors.torch import save

from streamtrain.snapshot.payload import decode_state, encode_state, encode_view


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
