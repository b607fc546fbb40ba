"""Metrics against values computed by hand on toy examples."""

from __future__ import annotations

import math

import pytest

from training.metrics import (
    accuracy,
    average_precision,
    compute_metrics,
    expected_calibration_error,
    roc_auc,
    threshold_at_fpr,
    tpr_at_fpr,
)

pytestmark = pytest.mark.unit

Y = [1, 0, 1, 0, 1, 0]
S = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]


def test_average_precision_by_hand():
    # Ranked: 1 0 1 0 1 0 -> precision at each positive: 1/1, 2/3, 3/5
    assert average_precision(Y, S) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    # A tie between a positive and a negative counts as one threshold: precision 1/2
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_roc_auc_by_hand():
    # positives 0.9, 0.7, 0.2 vs negatives 0.8, 0.3, 0.1:
    # 0.9 beats all 3; 0.7 beats 0.3 and 0.1; 0.2 beats 0.1 -> 6 of 9 pairs
    assert roc_auc(Y, S) == pytest.approx(6 / 9)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_threshold_and_tpr_at_fpr():
    reals = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    t = threshold_at_fpr(reals, 0.1)  # one real in ten may be flagged
    assert 0.9 < t <= 0.95
    assert sum(r >= t for r in reals) == 1
    assert tpr_at_fpr([0] * 10 + [1, 1], [*reals, 0.99, 0.5], 0.1) == 0.5
    assert threshold_at_fpr(reals, 0.0) > 0.95


def test_accuracy_split_by_class():
    assert accuracy(Y, S, 0.5) == (pytest.approx(4 / 6), pytest.approx(2 / 3), pytest.approx(2 / 3))


def test_ece_by_hand():
    # two bins hit: 0.9 (label 1) -> |1-0.9|; 0.1 (label 0) -> |0-0.1|; each weight 1/2
    assert expected_calibration_error([1, 0], [0.9, 0.1]) == pytest.approx(0.1)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_compute_metrics_and_nan_handling():
    m = compute_metrics(Y, S, threshold=0.75)
    assert m.n_real == 3 and m.n_fake == 3
    assert m.accuracy_at_threshold == pytest.approx(3 / 6)  # 0.9 and 0.3, 0.1 right
    only_real = compute_metrics([0, 0], [0.1, 0.2])
    assert math.isnan(only_real.ap)
    assert only_real.to_dict()["ap"] is None


@pytest.mark.parametrize(
    "labels,scores", [([1, 0], [0.1]), ([2, 0], [0.1, 0.2]), ([1, 0], [float("nan"), 0.2])]
)
def test_bad_inputs(labels, scores):
    with pytest.raises(ValueError):
        average_precision(labels, scores)
