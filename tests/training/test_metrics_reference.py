"""The project's metrics and fits against scikit-learn and SciPy, on random data with ties."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.accuracy import _roc
from training.calibrate import _nll, fit_temperature
from training.linear import fit_logistic
from training.metrics import (
    average_precision,
    expected_calibration_error,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)

pytestmark = pytest.mark.unit
skm = pytest.importorskip("sklearn.metrics")


def _data(seed: int, n: int = 400, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + 0.8 * y
    if ties:  # rounded scores: many ties, as calibrated probabilities of few tiles have
        s = np.round(s, 1)
    return y, 1 / (1 + np.exp(-s))


@pytest.mark.parametrize("seed", range(8))
def test_ap_auc_and_roc_curve_match_scikit_learn(seed):
    y, s = _data(seed, ties=seed % 2 == 0)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, s)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)
    np.testing.assert_allclose(thr[1:], ref_thr[1:], atol=1e-12)
    # the benchmark's plotted curve is points of that curve
    plotted = _roc(y, s)
    pairs = set(zip(ref_fpr.round(4), ref_tpr.round(4), strict=True))
    assert all((f, t) in pairs for f, t in zip(plotted["fpr"], plotted["tpr"], strict=True))
    # TPR at 1% FPR: the best TPR among the curve's points with FPR <= 1%
    for target in (0.01, 0.05, 0.2):
        assert tpr_at_fpr(y, s, target) == pytest.approx(ref_tpr[ref_fpr <= target].max())


@pytest.mark.parametrize("seed", range(4))
def test_ece_matches_a_binned_reference(seed):
    from sklearn.calibration import calibration_curve

    y, s = _data(seed, ties=False)
    bins = 15
    frac, mean = calibration_curve(y, s, n_bins=bins, strategy="uniform")
    counts = np.bincount(np.minimum((s * bins).astype(int), bins - 1), minlength=bins)
    weights = counts[counts > 0] / len(s)
    assert expected_calibration_error(y, s, bins) == pytest.approx(
        float(np.sum(weights * np.abs(frac - mean))), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(4))
def test_logistic_regression_matches_scikit_learn(seed):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 6))
    y = (x @ rng.normal(size=6) + rng.normal(size=300) > 0).astype(float)
    l2 = 1e-2
    w = fit_logistic(x, y, l2=l2)
    # ours: mean log-loss + l2/2 |w|^2 (bias free); sklearn: C * sum log-loss + |w|^2 / 2
    ref = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-12, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(w[:-1], ref.coef_.ravel(), atol=1e-5)
    assert w[-1] == pytest.approx(ref.intercept_[0], abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_temperature_fit_matches_scipy(seed):
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    logits = (rng.normal(size=500) + (2 * y - 1)) * rng.uniform(0.3, 4)
    ref = minimize_scalar(
        lambda t: _nll(logits, y, np.exp(t)),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert fit_temperature(logits, y) == pytest.approx(np.exp(ref.x), rel=1e-4)
