from __future__ import annotations

import json
import math

import pytest
import torch

from streamtrain.checkpoint.tensorstate import TensorStateError, flatten, unflatten


def _roundtrip(obj: object) -> object:
    tensors, skeleton = flatten(obj)
    # Through real JSON text, strict: no NaN literals allowed.
    skeleton = json.loads(json.dumps(skeleton, allow_nan=False))
    return unflatten(skeleton, tensors, source="test")


def test_types_survive_exactly() -> None:
    obj = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}, 7: {"n": 4}},
        "param_groups": [
            {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, "foreach": None}
        ],
        "ints_vs_floats": [1, 1.0, True],
        "odd": {None: 1, 2.5: "x", True: (1, (2, [3]))},
        "non_finite": [math.inf, -math.inf],
    }
    back = _roundtrip(obj)
    assert isinstance(back, dict)
    assert set(back["state"]) == {0, 7}
    assert torch.equal(back["state"][0]["step"], torch.tensor(3.0))
    assert back["state"][0]["step"].dim() == 0
    assert torch.equal(back["state"][0]["exp_avg"], torch.ones(2, 3))
    assert back["state"][7] == {"n": 4}
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert type(back["param_groups"][0]["betas"]) is tuple
    assert [type(v) for v in back["ints_vs_floats"]] == [int, float, bool]
    assert back["odd"] == {None: 1, 2.5: "x", True: (1, (2, [3]))}
    assert back["non_finite"] == [math.inf, -math.inf]
    assert math.isnan(_roundtrip(math.nan))  # type: ignore[arg-type]


def test_tensor_names_follow_paths_and_copies_share_nothing() -> None:
    shared = torch.arange(6.0)
    tensors, _ = flatten({"state": {3: {"exp_avg": shared, "view": shared[:3]}}})
    assert set(tensors) == {"state/3/exp_avg", "state/3/view"}
    assert tensors["state/3/exp_avg"].data_ptr() != shared.data_ptr()
    shared.add_(1)  # the copies are private: later training does not change them
    assert torch.equal(tensors["state/3/exp_avg"], torch.arange(6.0))


def test_colliding_paths_get_distinct_names() -> None:
    tensors, skeleton = flatten({"a/b": torch.zeros(1), "a": {"b": torch.ones(1)}})
    assert len(tensors) == 2
    back = unflatten(skeleton, tensors, source="t")
    assert torch.equal(back["a/b"], torch.zeros(1))
    assert torch.equal(back["a"]["b"], torch.ones(1))


def test_user_keys_that_look_like_tags_are_not_misread() -> None:
    obj = {"__st_tensor__": "not a tensor"}
    assert _roundtrip(obj) == obj


def test_unsupported_value_names_its_path() -> None:
    with pytest.raises(TensorStateError, match=r"state/0/fn: value of type function"):
        flatten({"state": {0: {"fn": lambda: 0}}})
    with pytest.raises(TensorStateError, match="dict key"):
        flatten({(1, 2): 3})


def test_mismatched_files_are_rejected() -> None:
    tensors, skeleton = flatten({"w": torch.ones(1)})
    with pytest.raises(TensorStateError, match=r"refers to tensor 'w'.*does not hold"):
        unflatten(skeleton, {}, source="opt.json")
    with pytest.raises(TensorStateError, match="not referenced"):
        unflatten(skeleton, {**tensors, "extra": torch.zeros(1)}, source="opt.json")
    with pytest.raises(TensorStateError, match="malformed tagged value"):
        unflatten({"__st_tensor__": "w", "x": 1}, tensors, source="opt.json")
    with pytest.raises(TensorStateError, match="bad non-finite float"):
        unflatten({"__st_float__": "huge"}, {}, source="opt.json")
