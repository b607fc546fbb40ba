"""Temperature scaling and a threshold for a target false-positive rate, fitted on validation."""

from __future__ import annotations

import numpy as np

from detector.calibration import Calibration
from training.export import TOLERANCE
from training.metrics import threshold_at_fpr

__all__ = ["fit_calibration", "fit_temperature"]

# The threshold's margin above the highest real it must not flag: relative to that real's
# logit, and at least the parity an fp32 export is held to (training.export.TOLERANCE).
LOGIT_MARGIN = 1e-5


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, computed stably
    return float(np.mean(np.logaddexp(0.0, np.where(labels == 1, -z, z))))


def fit_temperature(logits, labels) -> float:
    """The temperature minimising validation NLL (golden-section search in log space)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if len(z) == 0 or y.min() == y.max():
        return 1.0
    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(z, y, np.exp(a)), _nll(z, y, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(z, y, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(z, y, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def fit_calibration(logits, labels, target_fpr: float, description: str) -> Calibration:
    """Temperature by NLL, then the threshold that flags at most ``target_fpr`` of the reals."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if not np.isfinite(z).all():  # one NaN or inf turns the temperature search to its bound
        bad = int((~np.isfinite(z)).sum())
        raise ValueError(
            f"{description}: {bad} of {len(z)} logits are not finite; cannot calibrate"
        )
    temperature = fit_temperature(z, y)
    calibration = Calibration(temperature=temperature)
    probs = calibration.probability(z)
    reals = probs[y == 0]
    threshold = 0.5
    if len(reals):
        # The shipped graph computes these logits again (in float32: about 5e-7 apart; and a
        # run calibrated in torch is exported within the fp32 parity tolerance of them), and
        # the temperature may magnify that 20x: each real is ranked as if its logit were that
        # much higher (a monotonic shift), so the boundary real stays below the threshold by
        # the margin, not by one float step (which flagged it again).
        real_logits = z[y == 0]
        margin = np.maximum(LOGIT_MARGIN * np.abs(real_logits), TOLERANCE["fp32"] or 0.0)
        cut = threshold_at_fpr(real_logits + margin, target_fpr)
        threshold = float(calibration.probability(np.array([cut]))[0])
    threshold = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    if len(reals) and float(np.mean(reals >= threshold)) > target_fpr:
        # more than target_fpr of the reals score 1 - 1e-6 or more: no probability threshold
        # inside (0, 1) keeps to the target (the model is surely wrong on those reals)
        raise ValueError(
            f"{description}: {float(np.mean(reals >= threshold)):.1%} of the reals score "
            f"P >= {threshold} after temperature scaling; no threshold flags at most "
            f"{target_fpr:.1%} of them (check the model and the validation labels)"
        )
    return Calibration(
        temperature=temperature,
        threshold=threshold,
        target_fpr=target_fpr,
        fitted_on=f"{description}: {int((y == 0).sum())} real / {int((y == 1).sum())} generated",
    )
