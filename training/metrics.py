"""Detection metrics on (label, score) pairs: label 1 = generated, score = P(generated).

Definitions follow the field's usage (and scikit-learn's for AP and ROC-AUC): AP is the
step-wise area under the precision-recall curve over distinct score thresholds; ROC-AUC counts
ties as half; TPR at a target FPR uses the threshold chosen on the real images themselves
(the score above which at most that fraction of reals fall); ECE uses equal-width bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from training.datasets import Sample

__all__ = [
    "Metrics",
    "accuracy",
    "average_precision",
    "compute_metrics",
    "expected_calibration_error",
    "generator_groups",
    "roc_auc",
    "roc_curve",
    "threshold_at_fpr",
    "tpr_at_fpr",
]


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def average_precision(labels, scores) -> float:
    y, s = _arrays(labels, scores)
    if y.sum() == 0 or y.sum() == len(y):  # one class: no ranking to measure (as ROC-AUC)
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # Last index of each distinct score: one PR point per threshold.
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, highest first, from (0, 0); a
    point is reachable by flagging scores >= its threshold (ties move together)."""
    y, s = _arrays(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.zeros(0, int)
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    tpr = np.r_[0.0, tp / max(1, int(y.sum()))]
    fpr = np.r_[0.0, fp / max(1, int((1 - y).sum()))]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def roc_auc(labels, scores) -> float:
    y, s = _arrays(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties.
    ranks = _average_ranks(np.r_[pos, neg])
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def threshold_at_fpr(real_scores, fpr: float) -> float:
    """Smallest threshold t with P(real score >= t) <= fpr (scores >= t are flagged)."""
    s = np.sort(np.asarray(real_scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        raise ValueError("no real scores to choose a threshold on")
    k = math.floor(fpr * len(s))  # at most k reals may be flagged
    if k >= len(s):
        return float(s[-1])
    return float(np.nextafter(s[k], np.inf))


def tpr_at_fpr(labels, scores, fpr: float = 0.01) -> float:
    y, s = _arrays(labels, scores)
    if (y == 0).sum() == 0 or (y == 1).sum() == 0:
        return float("nan")
    t = threshold_at_fpr(s[y == 0], fpr)
    return float(np.mean(s[y == 1] >= t))


def accuracy(labels, scores, threshold: float = 0.5) -> tuple[float, float, float]:
    """(overall, real, fake) accuracy with scores >= threshold called generated."""
    y, s = _arrays(labels, scores)
    pred = s >= threshold
    real = float(np.mean(~pred[y == 0])) if (y == 0).any() else float("nan")
    fake = float(np.mean(pred[y == 1])) if (y == 1).any() else float("nan")
    return float(np.mean(pred == (y == 1))), real, fake


def expected_calibration_error(labels, scores, bins: int = 15) -> float:
    y, s = _arrays(labels, scores)
    if len(y) == 0:
        return float("nan")
    idx = np.minimum((s * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - s[m].mean())
    return float(ece)


@dataclass(frozen=True)
class Metrics:
    n_real: int
    n_fake: int
    ap: float
    roc_auc: float
    accuracy: float  # at 0.5
    real_accuracy: float
    fake_accuracy: float
    tpr_at_1pct_fpr: float
    ece: float
    threshold: float | None = None  # the shipped threshold, when one is given
    accuracy_at_threshold: float | None = None
    real_accuracy_at_threshold: float | None = None
    fake_accuracy_at_threshold: float | None = None

    def to_dict(self) -> dict:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict) -> Metrics:
        """The inverse of ``to_dict`` (keys it does not write, such as ``chance_ap``, are
        ignored): a metric written as null was NaN."""
        values = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name in data:
                v = data[name]
                values[name] = math.nan if v is None and spec.default is not None else v
        return cls(**values)


def compute_metrics(labels, scores, threshold: float | None = None) -> Metrics:
    y, s = _arrays(labels, scores)
    acc, real, fake = accuracy(y, s, 0.5)
    extra: dict = {}
    if threshold is not None:
        a, r, f = accuracy(y, s, threshold)
        extra = {
            "threshold": threshold,
            "accuracy_at_threshold": a,
            "real_accuracy_at_threshold": r,
            "fake_accuracy_at_threshold": f,
        }
    return Metrics(
        n_real=int((y == 0).sum()),
        n_fake=int((y == 1).sum()),
        ap=average_precision(y, s),
        roc_auc=roc_auc(y, s),
        accuracy=acc,
        real_accuracy=real,
        fake_accuracy=fake,
        tpr_at_1pct_fpr=tpr_at_fpr(y, s, 0.01),
        ece=expected_calibration_error(y, s),
        **extra,
    )


def generator_groups(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """The images each generator's metrics compare, by generator name: its fakes and the reals
    of the pools its fakes come from, as a mask over ``samples`` (``evaluate`` and ``bench
    accuracy`` both judge a generator this way). Here, not in ``training.evaluate``: that
    imports torch, which the CLI must not load to start (``bench`` is one of its commands)."""
    groups = {}
    for gen in sorted({s.generator for s in samples if s.label == 1}):
        gen_pools = {s.pool for s in samples if s.label == 1 and s.generator == gen}
        groups[gen] = np.array(
            [
                (s.label == 1 and s.generator == gen) or (s.label == 0 and s.pool in gen_pools)
                for s in samples
            ]
        )
    return groups
