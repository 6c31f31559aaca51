"""TaskHead: loss choice, weighted loss, predictions and prequential scores per task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.task import TaskHead

MULTI = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)
BINARY = SampleSpec(feature_shape=(4,), task="binary")
REGRESS = SampleSpec(feature_shape=(4,), task="regression", target_dim=2)


@pytest.mark.parametrize(
    ("spec", "expected"), [(MULTI, "cross_entropy"), (BINARY, "bce"), (REGRESS, "mse")]
)
def test_auto_picks_the_natural_loss(spec: SampleSpec, expected: str) -> None:
    assert TaskHead(spec).loss_name == expected


@pytest.mark.parametrize(
    ("spec", "loss", "fits"),
    [(MULTI, "bce", "'cross_entropy'"), (BINARY, "mse", "'bce'"), (REGRESS, "bce", "'huber'")],
)
def test_a_loss_that_does_not_fit_says_which_fit(spec: SampleSpec, loss: str, fits: str) -> None:
    with pytest.raises(ValueError, match=f"does not fit a {spec.task} task.*{fits}"):
        TaskHead(spec, loss)  # type: ignore[arg-type]


def test_weighted_loss_is_sum_wl_over_sum_w() -> None:
    head = TaskHead(MULTI)
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 1])
    weights = torch.tensor([1.0, 0.0, 2.0, 1.0])
    per = F.cross_entropy(logits, labels, reduction="none")
    expected = (per * weights).sum() / weights.sum()
    assert torch.allclose(head.loss(logits, labels, weights), expected)


def test_zero_total_weight_gives_zero_loss_not_nan() -> None:
    head = TaskHead(BINARY)
    loss = head.loss(torch.randn(3, requires_grad=True), torch.tensor([0, 1, 1]), torch.zeros(3))
    assert loss.item() == 0.0


def test_huber_and_mse_on_regression_targets() -> None:
    outputs = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    targets = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    weights = torch.ones(2)
    assert TaskHead(REGRESS, "mse").loss(outputs, targets, weights).item() == pytest.approx(
        (4 / 2 + 9 / 2) / 2
    )
    assert TaskHead(REGRESS, "huber").loss(outputs, targets, weights).item() == pytest.approx(
        (1.5 / 2 + 2.5 / 2) / 2
    )


def test_multiclass_predict_and_score() -> None:
    head = TaskHead(MULTI)
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    pred = head.predict(logits)
    assert pred["predicted_class"].tolist() == [0, 2]
    assert pred["predicted_class"].dtype == torch.int64
    assert torch.allclose(pred["probabilities"].sum(dim=1), torch.ones(2))
    assert head.score(logits, torch.tensor([0, 1])).tolist() == [1.0, 0.0]


def test_binary_probabilities_have_two_columns() -> None:
    head = TaskHead(BINARY)
    pred = head.predict(torch.tensor([0.0, 10.0, -10.0]))
    assert pred["probabilities"].shape == (3, 2)
    assert pred["probabilities"][0].tolist() == [0.5, 0.5]
    assert pred["predicted_class"].tolist() == [0, 1, 0]


def test_regression_predict_and_mae_score() -> None:
    head = TaskHead(REGRESS)
    outputs = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert torch.equal(head.predict(outputs)["value"], outputs)
    score = head.score(outputs, torch.tensor([[0.0, 0.0], [1.0, -3.0]]))
    assert score.tolist() == [1.5, 2.0]


def test_loss_is_float32_under_half_precision_outputs() -> None:
    head = TaskHead(MULTI)
    loss = head.loss(torch.randn(2, 3).bfloat16(), torch.tensor([0, 1]), torch.ones(2))
    assert loss.dtype == torch.float32
