"""Served-quality tallies: regression figures, the event-time window, folding into older."""

from __future__ import annotations

import math

import pytest

from streamtrain.quality.books import VersionBooks
from streamtrain.quality.figures import score_row, summarise
from streamtrain.quality.pairing import ServedQuality
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.prediction_record import PredictionRecord

REGRESSION = SampleSpec((2,), "regression", target_dim=2)
BINARY = SampleSpec((2,), "binary")


def test_regression_rows_give_mae_and_rmse() -> None:
    rows = [
        score_row(REGRESSION, (1.0, 2.0), (0.0, 0.0)),
        score_row(REGRESSION, (0.0, 0.0), (3.0, 3.0)),
    ]
    figures = summarise(REGRESSION, rows)
    assert figures.mae == pytest.approx((1.5 + 3.0) / 2)
    assert figures.rmse == pytest.approx(math.sqrt((2.5 + 9.0) / 2))
    assert math.isnan(figures.log_loss) and math.isnan(figures.auc)


def test_window_keeps_rows_served_within_window_s_of_the_newest() -> None:
    books = VersionBooks(BINARY, keep=2, window_s=10.0)
    for served_at, p in ((0.0, 0.9), (5.0, 0.1), (20.0, 0.8)):
        books.served(1, "live")
        books.labelled(1, "live", served_at, score_row(BINARY, (1 - p, p), 1))
    live = next(r for r in books.report() if r.version == "1" and r.arm == "live")
    assert live.labelled == 3 and live.served == 3  # the sums keep every row
    assert live.figures.rows == 1  # the window only the row served at 20
    assert live.figures.log_loss == pytest.approx(-math.log(0.8))


def test_only_the_newest_versions_keep_series_older_ones_add_up_in_older() -> None:
    pairs = ServedQuality(VersionBooks(BINARY, keep=2, window_s=60.0))
    for rid, version in (("a", 1), ("b", 2), ("c", 3), ("d", 1), ("d", 1)):
        pairs.prediction(PredictionRecord(rid, 1.0, version, "run", (0.5, 0.5), b""))
    report = {(r.version, r.arm): r for r in pairs.books.report()}
    assert {v for v, _ in report} == {"2", "3", "older"}
    # version 1: "a" folded when 3 came, "d" straight into older; d's replay is skipped
    assert report[("older", "live")].served == 2
    pairs.label("d", 1)
    assert report[("older", "live")].labelled == 0  # a report is a copy of its moment
    after = {(r.version, r.arm): r for r in pairs.books.report()}
    assert after[("older", "live")].labelled == 1


def test_a_label_before_its_rows_still_scores_them_and_the_first_label_wins() -> None:
    pairs = ServedQuality(VersionBooks(BINARY, keep=4, window_s=60.0))
    pairs.label("r", 0)
    pairs.label("r", 1)  # ignored
    pairs.prediction(PredictionRecord("r", 1.0, 5, "run", (0.25, 0.75), b"", "shadow"))
    shadow = next(r for r in pairs.books.report() if r.version == "5" and r.arm == "shadow")
    assert shadow.labelled == 1
    assert shadow.loss_sum == pytest.approx(-math.log(0.25))
    assert shadow.correct == 0.0
