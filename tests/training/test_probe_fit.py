"""The probe's logistic regression without the reals' top principal directions
(``probe_drop_pcs``): the removal folds into one linear head and takes out what photos differ
in most, so a fit cannot lean on it."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import load_config
from training.metrics import average_precision
from training.probe import fit_logistic, real_directions

pytestmark = pytest.mark.unit


def _rows(rng, n: int, content_shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Feature 0 is content: wide among the reals, and in the fit's data the fakes' scenes
    differ along it; feature 1 is a weak, steady trace of generation; the rest is noise."""
    y = np.repeat([0, 1], n)
    x = rng.normal(0, 1, (2 * n, 6))
    x[:, 0] = rng.normal(0, 10, 2 * n) + content_shift * y
    x[:, 1] += 1.0 * y
    return x, y


def test_dropping_the_reals_top_direction_folds_into_the_weight_and_ignores_content():
    rng = np.random.default_rng(3)
    x, y = _rows(rng, 400, content_shift=12.0)
    w = np.ones(len(y))
    plain, plain_bias = fit_logistic(x, y, w, 1.0)
    weight, bias = fit_logistic(x, y, w, 1.0, drop_pcs=1)
    real = x[y == 0]
    top = np.linalg.svd(real - real.mean(0), full_matrices=False)[2][0]
    assert abs(top[0]) > 0.99  # the reals' widest direction is the content feature
    assert abs(weight @ top) < 1e-9 * np.abs(weight).max()  # the head no longer reads it
    assert abs(plain @ top) > 0.1 * np.abs(plain).max()  # the plain fit leans on it
    # one linear head: the same logits as a fit on the projected rows
    inner, inner_bias = fit_logistic(x - np.outer(x @ top, top), y, w, 1.0)
    projected = x - np.outer(x @ top, top)
    np.testing.assert_allclose(x @ weight + bias, projected @ inner + inner_bias, atol=1e-8)
    # scenes whose content runs the other way: only the trace carries over
    x_new, y_new = _rows(rng, 400, content_shift=-12.0)
    ap_plain = average_precision(y_new, x_new @ plain + plain_bias)
    ap_drop = average_precision(y_new, x_new @ weight + bias)
    assert ap_drop > 0.65 > ap_plain


def test_too_many_directions_and_a_negative_setting_are_refused():
    rng = np.random.default_rng(4)
    x, y = _rows(rng, 5, content_shift=0.0)
    with pytest.raises(ValueError, match="drop_pcs 6 must be below the feature size"):
        fit_logistic(x, y, np.ones(len(y)), 1.0, drop_pcs=6)
    with pytest.raises(ValueError, match="drop_pcs must not be negative, got -1"):
        fit_logistic(x, y, np.ones(len(y)), 1.0, drop_pcs=-1)
    with pytest.raises(ValueError, match="probe_drop_pcs must not be negative"):
        load_config(None, ["probe_drop_pcs=-1"])
    assert load_config(None, ["probe_drop_pcs=16"]).probe_drop_pcs == 16


def test_directions_computed_once_give_the_same_fit():
    """train_probe computes the reals' directions once for its several C values."""
    x, y = _rows(np.random.default_rng(5), 200, content_shift=12.0)
    w = np.ones(len(y))
    top = real_directions(x, y, 2)
    for c in (0.1, 1.0):
        again, again_bias = fit_logistic(x, y, w, c, drop_pcs=2)
        once, once_bias = fit_logistic(x, y, w, c, drop_pcs=2, top=top)
        np.testing.assert_allclose(once, again, atol=1e-12)
        assert once_bias == pytest.approx(again_bias, abs=1e-12)
    with pytest.raises(ValueError, match=r"top must be \(6, 2\), got \(6, 1\)"):
        fit_logistic(x, y, w, 1.0, drop_pcs=2, top=top[:, :1])
