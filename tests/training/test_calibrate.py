from __future__ import annotations

import numpy as np
import pytest

from detector.calibration import Calibration
from training.calibrate import fit_calibration, fit_temperature

pytestmark = pytest.mark.unit


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-true_logits))).astype(int)
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3, rel=0.1)
    assert fit_temperature(true_logits, labels) == pytest.approx(1, rel=0.1)


def test_threshold_meets_the_target_fpr_on_the_fitting_data():
    rng = np.random.default_rng(1)
    logits = np.r_[rng.normal(-2, 1, 1000), rng.normal(2, 1, 1000)]
    labels = np.r_[np.zeros(1000), np.ones(1000)]
    calib = fit_calibration(logits, labels, 0.01, "synthetic")
    probs = calib.probability(logits)
    assert np.mean(probs[labels == 0] >= calib.threshold) <= 0.01
    assert "1000 real / 1000 generated" in calib.fitted_on


def test_calibration_validation():
    with pytest.raises(ValueError):
        Calibration(temperature=0)
    with pytest.raises(ValueError):
        Calibration(threshold=1.0)
    assert Calibration.from_dict(None) == Calibration()


def test_calibration_refuses_non_finite_logits_and_an_unreachable_target():
    import numpy as np
    import pytest

    from training.calibrate import fit_calibration

    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(-2, 1, 500), rng.normal(2, 1, 500)]
    y = np.r_[np.zeros(500), np.ones(500)]
    assert fit_calibration(z, y, 0.01, "val").temperature < 1  # finite: fitted
    bad = z.copy()
    bad[700] = np.nan
    with pytest.raises(ValueError, match="1 of 1000 logits are not finite"):
        fit_calibration(bad, y, 0.01, "val")
    sure = np.r_[rng.normal(-6, 1, 985), np.full(15, 40.0), rng.normal(6, 1, 1000)]
    labels = np.r_[np.zeros(1000), np.ones(1000)]  # 1.5% of the reals beyond any threshold
    with pytest.raises(ValueError, match=r"no threshold flags at most 1\.0%"):
        fit_calibration(sure, labels, 0.01, "val")


def test_threshold_holds_when_the_shipped_graph_recomputes_the_logits_in_float32():
    """Calibration fits on float64 logits; the exported graph computes the same logits in
    float32 (about 5e-7 apart). A threshold one float step above the boundary real flagged it
    again when the temperature (here at its 0.05 floor) magnified that difference."""
    rng = np.random.default_rng(0)
    reals = rng.normal(-0.5, 0.02, 200)
    z = np.concatenate([reals, reals + 40.0])
    y = np.array([0] * 200 + [1] * 200)
    cal = fit_calibration(z, y, 0.01, "val")
    assert cal.temperature < 0.06
    for drift in (5e-7, 1e-6, -1e-6, 9e-4):  # up to the fp32 export parity (1e-3)
        flagged = cal.probability(reals.astype(np.float32) + np.float32(drift)) >= cal.threshold
        assert flagged.mean() <= 0.01, drift
    # and the margin is small: the fakes are all still flagged
    assert (cal.probability(reals + 40.0) >= cal.threshold).all()
