"""``synthdetect train-artifact``: fit the artifact method's linear model on a dataset."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from detector.buildinfo import git_commit
from detector.methods.artifact import FEATURE_NAMES, artifact_features
from training.calibrate import fit_calibration
from training.datasets import Sample, load_samples, read_pixels
from training.evaluate import evaluate_scores
from training.linear import fit_logistic
from training.train import need_both_classes

__all__ = ["features_of", "train_artifact"]


def features_of(samples: list[Sample], workers: int = 2) -> np.ndarray:
    def one(s: Sample) -> np.ndarray:
        return artifact_features(read_pixels(s.path))

    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, samples)))


def train_artifact(data: Path, out: Path, *, target_fpr: float = 0.01, l2: float = 1e-2) -> dict:
    samples = load_samples(data)
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    test = [s for s in samples if s.split == "test"]
    if not train or not val:
        raise ValueError(f"{data}: needs a train and a val split")
    need_both_classes(train, "train")  # one class fits a constant, calibrated on nothing
    need_both_classes(val, "val")
    x_train = features_of(train)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    y_train = np.array([s.label for s in train], dtype=np.float64)
    w = fit_logistic((x_train - mean) / std, y_train, l2=l2)

    def logits(x: np.ndarray) -> np.ndarray:
        return ((x - mean) / std) @ w[:-1] + w[-1]

    calib = fit_calibration(
        logits(features_of(val)), [s.label for s in val], target_fpr, f"val split of {data}"
    )
    model = {
        "format": "synthdetect-artifact/1",
        "features": FEATURE_NAMES,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "weights": w[:-1].tolist(),
        "bias": float(w[-1]),
        "l2": l2,
        "calibration": calib.to_dict(),
        "training": {"data": str(data), "n_train": len(train), "commit": git_commit()},
    }
    if test:
        report = evaluate_scores(
            test, logits(features_of(test)), calib, "test", model="artifact", data=str(data)
        )
        model["test"] = report.overall.to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(model, indent=1) + "\n")
    return model
