"""Shortcut check: can container facts alone (file size, JPEG quality, dimensions) tell real
from generated? A logistic regression on those features is fitted on the train split and
scored on the test split. A test ROC-AUC near 0.5 (within ``MARGIN``) means the corpus offers
no such shortcut; far above it, a model could learn the container instead of the generator; far
below it, the container differs between the classes the other way round in train (a shortcut a
model learns there and is misled by on test). ROC-AUC, not AP: AP's chance level moves with the
share of generated images, so a fixed AP bar failed a balanced-less corpus without a shortcut
and passed one with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.image import ImageError, decode_file
from training.datasets import Sample, load_samples
from training.linear import fit_logistic
from training.metrics import average_precision, roc_auc

__all__ = ["MARGIN", "ShortcutReport", "estimate_jpeg_quality", "shortcut_check"]

MARGIN = 0.1  # |test ROC-AUC - 0.5| from which the container features count as a shortcut

# The IJG (libjpeg) luminance table at quality 50, in natural (row-major) order.
_IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip
FEATURES = ("log_bytes", "jpeg_quality", "is_jpeg", "width", "height")


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality  # integer, as libjpeg
    return np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255)


def estimate_jpeg_quality(luma_table: tuple[int, ...] | list[int]) -> int:
    """The IJG quality whose scaled luminance table is closest to ``luma_table``.

    Pillow reports tables in natural order, as the IJG reference table above is written.
    """
    table = np.asarray(luma_table, dtype=np.float64)
    errors = [np.abs(_ijg_table(q) - table).sum() for q in range(1, 101)]
    return int(np.argmin(errors)) + 1


def _features(sample: Sample) -> list[float]:
    size = sample.path.stat().st_size
    image = decode_file(sample.path)
    quant = image.metadata.quantization
    is_jpeg = quant is not None
    quality = estimate_jpeg_quality(quant[0]) if is_jpeg else 100
    return [math.log(size), float(quality), float(is_jpeg), float(image.width), float(image.height)]


@dataclass
class ShortcutReport:
    n_train: int
    n_test: int
    chance: float  # AP of a random scorer: the share of generated images in the test split
    ap: float
    roc_auc: float
    per_pool: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    # each feature alone, as a score, on train and on test: which one separates, and whether
    # its direction holds between the splits
    per_feature: dict[str, tuple[float, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "path: reason" of the unreadable images

    @property
    def verdict(self) -> str:
        if abs(self.roc_auc - 0.5) < MARGIN:
            return "PASS"
        if self.roc_auc > 0.5:
            return "FAIL: container features separate the classes"
        return (
            "FAIL: container features separate the classes, the other way round on test than "
            "in train"
        )

    def render(self) -> str:
        lines = [
            f"shortcut check: logistic regression on {', '.join(FEATURES)}",
            f"  fitted on {self.n_train} train images, scored on {self.n_test} test images",
            f"  test ROC-AUC {self.roc_auc:.3f} ({0.5 - MARGIN:.1f}-{0.5 + MARGIN:.1f} passes)"
            f"  AP {self.ap:.3f} (chance {self.chance:.3f})",
        ]
        lines += [f"  pool {pool}: AP {ap:.3f}" for pool, ap in sorted(self.per_pool.items())]
        if self.per_feature:
            lines.append("  each feature alone, ROC-AUC train / test:")
            lines += [
                f"    {name}: {tr:.3f} / {te:.3f}" for name, (tr, te) in self.per_feature.items()
            ]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable images, not in the fit:")
            lines += [f"    {why}" for why in self.skipped[:5]]
            if len(self.skipped) > 5:
                lines.append(f"    ... and {len(self.skipped) - 5} more")
        lines.append(f"  {self.verdict}")
        return "\n".join(lines)


def shortcut_check(corpus: str | Path) -> ShortcutReport:
    samples = [s for s in load_samples(corpus) if s.split in ("train", "test")]
    rows, kept, skipped = [], [], []
    for s in samples:
        try:
            rows.append(_features(s))
            kept.append(s)
        except (ImageError, OSError) as exc:
            skipped.append(f"{s.path}: {getattr(exc, 'strerror', None) or exc}")
    if not kept:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise ValueError(f"{corpus}: no readable image in the train and test splits{first}")
    x = np.asarray(rows)
    y = np.asarray([s.label for s in kept], dtype=np.float64)
    train = np.asarray([s.split == "train" for s in kept])
    if train.sum() == 0 or (~train).sum() == 0:
        raise ValueError(f"{corpus}: need images in both the train and the test split")
    for split, rows_of in (("train", train), ("test", ~train)):
        if len(set(y[rows_of])) < 2:  # no ranking to judge: never a pass
            raise ValueError(f"{corpus}: the {split} split needs real and generated images")
    mean, std = x[train].mean(0), x[train].std(0) + 1e-9
    w = fit_logistic((x[train] - mean) / std, y[train])
    z = np.c_[(x[~train] - mean) / std, np.ones((~train).sum())] @ w
    test = [s for s, t in zip(kept, train, strict=True) if not t]
    per_pool = {}
    for pool in sorted({s.pool for s in test if s.pool}):
        m = np.array([s.pool == pool for s in test])
        if 0 < y[~train][m].sum() < m.sum():
            per_pool[pool] = average_precision(y[~train][m], z[m])
    return ShortcutReport(
        n_train=int(train.sum()),
        n_test=int((~train).sum()),
        chance=float(y[~train].mean()),
        ap=average_precision(y[~train], z),
        roc_auc=roc_auc(y[~train], z),
        per_pool=per_pool,
        weights=dict(zip((*FEATURES, "bias"), map(float, w), strict=True)),
        per_feature={
            name: (roc_auc(y[train], x[train, i]), roc_auc(y[~train], x[~train, i]))
            for i, name in enumerate(FEATURES)
        },
        skipped=skipped,
    )
