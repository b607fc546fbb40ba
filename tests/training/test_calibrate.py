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
