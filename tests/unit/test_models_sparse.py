"""Embedding-table models: the contract, sparse steps that touch only the batch's rows,
pooling, hashing, and the settings refused for sparse gradients."""

from __future__ import annotations

import pytest
import torch

from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.testing import check_model
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.models.embedding import EmbeddingTables, hash_rows
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

FEATURES = (SparseFeature("user", "users", 4), SparseFeature("items", "items", 8))
SMALL = {"rows": 200, "embedding_dim": 8}


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("dlrm", "binary"),
        ("dlrm", "multiclass"),
        ("dlrm", "regression"),
        ("fm", "binary"),
        ("fm", "regression"),
    ],
)
def test_sparse_builtins_pass_the_model_contract(name: str, task: str) -> None:
    spec = SampleSpec((4,), task, num_classes=3 if task == "multiclass" else 2, sparse=FEATURES)  # type: ignore[arg-type]
    check_model(name, spec, SMALL)


def test_a_step_moves_only_the_rows_of_the_batchs_ids() -> None:
    spec = SampleSpec((3,), "binary", sparse=FEATURES)
    torch.manual_seed(0)
    model = build_model("dlrm", spec, {"rows": 1000, "embedding_dim": 4})
    # dense statistics first: on a stream's very first batch every dense feature is still flat
    # and maps to 0, which can leave a row's gradient exactly 0 through the ReLU interactions
    model.standardize(torch.randn(8, 3))
    learner = Learner(model, TaskHead(spec), build_optimizer(model.parameters(), "adagrad", lr=0.1))
    users = JaggedTensor.from_lists([[11], [12], [11]])
    items = JaggedTensor.from_lists([[5, 6], [], [7]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads: list[torch.Tensor] = []
    model.embeddings.tables["t_items"].weight.register_hook(grads.append)
    out = learner.learn(
        torch.randn(3, 3), torch.tensor([1, 0, 1]), torch.ones(3), {"user": users, "items": items}
    )
    assert out.applied
    assert grads[0].is_sparse  # the gradient names rows, not the whole table
    for table, ids in (("users", users.ids), ("items", items.ids)):
        weight = model.state_dict()[f"embeddings.tables.t_{table}.weight"]
        changed = (weight != before[f"embeddings.tables.t_{table}.weight"]).any(dim=1)
        assert set(torch.nonzero(changed).flatten().tolist()) == set(hash_rows(ids, 1000).tolist())
    dense = model.state_dict()["bottom.0.0.weight"]
    assert not torch.equal(dense, before["bottom.0.0.weight"])  # dense weights learn too


def test_weighted_sum_and_mean_pooling() -> None:
    torch.manual_seed(0)
    tables = EmbeddingTables(
        [SparseFeature("a", "t"), SparseFeature("b", "t")],
        dim=3,
        rows=50,
        pooling={"a": "sum", "b": "mean"},
    )
    x = JaggedTensor.from_lists([[1, 2], [], [3]], weights=[[0.5, 2.0], [], [4.0]])
    out = tables.pooled({"a": x, "b": x})
    weight = tables.tables["t_t"].weight
    r = hash_rows(torch.tensor([1, 2, 3]), 50)
    want_sum = torch.stack(
        [0.5 * weight[r[0]] + 2.0 * weight[r[1]], torch.zeros(3), 4.0 * weight[r[2]]]
    )
    torch.testing.assert_close(out["a"], want_sum)
    torch.testing.assert_close(out["b"], want_sum / torch.tensor([[2.5], [1.0], [4.0]]))


def test_hashed_rows_collide_at_the_rate_of_a_random_function() -> None:
    ids, rows = torch.arange(20_000), 80_000  # sequential IDs: the worst case for a modulo
    _, counts = hash_rows(ids, rows).unique(return_counts=True)
    sharing = counts[counts > 1].sum().item() / len(ids)
    expected = 1 - (1 - 1 / rows) ** (len(ids) - 1)  # ~0.221
    assert abs(sharing - expected) < 0.02
    assert hash_rows(torch.tensor([-1, -(2**63)]), 7).min() >= 0


@pytest.mark.parametrize(
    ("optimizer", "kwargs", "clip", "match"),
    [
        ("adam", {}, None, "set optimizer.name to adagrad"),
        ("sgd", {"momentum": 0.9}, None, "momentum would move every embedding row"),
        ("adagrad", {"weight_decay": 0.1}, None, "weight_decay"),
        ("adagrad", {}, 1.0, "clip_grad_norm does not apply"),
    ],
)
def test_settings_that_cannot_take_sparse_gradients_are_refused(
    optimizer: str, kwargs: dict[str, float], clip: float | None, match: str
) -> None:
    spec = SampleSpec((3,), "binary", sparse=FEATURES)
    model = build_model("fm", spec, SMALL)
    opt = build_optimizer(model.parameters(), optimizer, lr=0.1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        Learner(model, TaskHead(spec), opt, clip_grad_norm=clip)


def test_model_configuration_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"declare them in model\.sparse"):
        build_model("dlrm", SampleSpec((3,), "binary"))
    with pytest.raises(ValueError, match="dlrm handles multiclass"):
        build_model("fm", SampleSpec((3,), "multiclass", num_classes=3, sparse=FEATURES))
    with pytest.raises(ValueError, match="table_rows"):
        build_model("dlrm", SampleSpec((3,), "binary", sparse=FEATURES), {"table_rows": {"x": 5}})
