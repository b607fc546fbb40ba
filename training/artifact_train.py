"""``synthdetect train-artifact``: fit the artifact method's linear model on a dataset."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from detector.buildinfo import git_commit
from detector.methods.artifact import FEATURE_NAMES, artifact_features, unjudged
from detector.preprocess import too_small
from training.calibrate import fit_calibration
from training.datasets import Sample, load_samples, read_pixels
from training.evaluate import evaluate_scores
from training.linear import fit_logistic
from training.train import need_both_classes

__all__ = ["features_of", "train_artifact"]


def features_of(samples: list[Sample], workers: int = 2) -> tuple[list[Sample], np.ndarray]:
    """The samples the method judges and their features: an image it abstains on when scoring
    (smaller than a 64 px block, or flat) is left out, as it never reaches the linear model."""

    def one(s: Sample) -> np.ndarray | None:
        pixels = read_pixels(s.path)
        features = None if too_small(pixels, 64) else artifact_features(pixels)
        return None if features is None or unjudged(pixels, features) else features

    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(one, samples))
    kept = [s for s, f in zip(samples, rows, strict=True) if f is not None]
    x = np.stack([f for f in rows if f is not None]) if kept else np.empty((0, len(FEATURE_NAMES)))
    return kept, x


# A feature whose spread over the training images is below this fraction of its size is
# constant there: standardised by it, float rounding (1e-7) became logits of millions.
CONSTANT = 1e-5


def train_artifact(data: Path, out: Path, *, target_fpr: float = 0.01, l2: float = 1e-2) -> dict:
    samples = load_samples(data)
    by_split = {name: [s for s in samples if s.split == name] for name in ("train", "val", "test")}
    if not by_split["train"] or not by_split["val"]:
        raise ValueError(f"{data}: needs a train and a val split")
    need_both_classes(by_split["train"], "train")  # one class fits a constant
    need_both_classes(by_split["val"], "val")  # and is calibrated on nothing
    features, skipped = {}, {}
    for name, split in by_split.items():
        kept, x = features_of(split) if split else ([], None)
        features[name], skipped[name] = (kept, x), len(split) - len(kept)
    train, x_train = features["train"]
    val, x_val = features["val"]
    for name, split in (("train", train), ("val", val)):
        try:
            need_both_classes(split, name)
        except ValueError as exc:
            raise ValueError(
                f"{exc}, once the {skipped[name]} images the method does not judge (smaller "
                "than 64 px, or flat) are left out"
            ) from None
    mean, std = x_train.mean(0), x_train.std(0)
    constant = std <= CONSTANT * np.maximum(1.0, np.abs(mean))
    if constant.all():
        raise ValueError(
            f"{data}: every feature is the same over the {len(train)} training images (flat or "
            "identical images?): nothing to learn"
        )
    std = np.where(constant, 1.0, std)  # a constant feature is 0 once centred: its weight is 0
    y_train = np.array([s.label for s in train], dtype=np.float64)
    z_train = (x_train - mean) / std
    z_train[:, constant] = 0.0
    w = fit_logistic(z_train, y_train, l2=l2)
    w[:-1][constant] = 0.0

    def logits(x: np.ndarray) -> np.ndarray:
        return ((x - mean) / std) @ w[:-1] + w[-1]

    calib = fit_calibration(
        logits(x_val), [s.label for s in val], target_fpr, f"val split of {data}"
    )
    reals = sum(s.label == 0 for s in val)
    model = {
        "format": "synthdetect-artifact/1",
        "features": FEATURE_NAMES,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "weights": w[:-1].tolist(),
        "bias": float(w[-1]),
        "l2": l2,
        "calibration": calib.to_dict(),
        "training": {
            "data": str(data),
            "n_train": len(train),
            "n_val": len(val),
            "skipped": skipped,  # per split: images it does not judge (too small, flat)
            "constant_features": [n for n, c in zip(FEATURE_NAMES, constant, strict=True) if c],
            "commit": git_commit(),
        },
        "warnings": (
            [f"the threshold was chosen among {reals} validation reals, fewer than the "
             f"{int(np.ceil(1 / target_fpr))} that measure a {target_fpr:.0%} false-positive rate"]
            if reals * target_fpr < 1 else []
        ),
    }  # fmt: skip
    test, x_test = features["test"]
    if test and sum(s.label for s in test) not in (0, len(test)):
        report = evaluate_scores(
            test, logits(x_test), calib, "test", model="artifact", data=str(data)
        )
        model["test"] = report.overall.to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(model, indent=1) + "\n")
    return model
