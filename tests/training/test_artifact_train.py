"""train-artifact: the artifact method's linear model fitted on a manifest."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.artifact_train import train_artifact
from training.metadata_writers import synthetic_scene

pytestmark = pytest.mark.unit


def _upsampled(i: int, label: str) -> np.ndarray:
    """Camera-like scenes (real) against the same scenes with blocky 2x upsampling (fake)."""
    scene = synthetic_scene(i, 96, 96)
    return scene if label == "real" else np.repeat(np.repeat(scene[::2, ::2], 2, 0), 2, 1)


def _manifest(folder: Path, labels=("real", "fake"), pixels=_upsampled, splits=(12, 8, 4)) -> Path:
    """A manifest of ``pixels(i, label)`` images, ``splits`` train / val / test per label."""
    rows = []
    names = ["train"] * splits[0] + ["val"] * splits[1] + ["test"] * splits[2]
    for i, split in enumerate(names):
        for label in labels:
            path = folder / f"{label}{i}.png"
            Image.fromarray(pixels(i, label)).save(path)
            rows.append({"path": path.name, "label": label, "split": split, "generator": label})
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


def test_fits_a_calibrated_model_on_both_classes(tmp_path):
    model = train_artifact(_manifest(tmp_path), tmp_path / "out" / "artifact.json")
    saved = json.loads((tmp_path / "out" / "artifact.json").read_text())
    assert saved["format"] == "synthdetect-artifact/1" and saved == model
    assert len(saved["weights"]) == len(saved["features"]) == len(saved["mean"])
    assert saved["calibration"]["fitted_on"].endswith("8 real / 8 generated")
    assert saved["test"]["ap"] > 0.9  # upsampling leaves a trace the residual features see


def test_one_class_data_is_refused_before_anything_is_written(tmp_path):
    """A reals-only manifest gave a bias of -24, a threshold of 1e-6 and exit 0."""
    with pytest.raises(ValueError, match="the train split has no generated images"):
        train_artifact(_manifest(tmp_path, ("real",)), tmp_path / "a.json")
    assert not (tmp_path / "a.json").exists()


def test_an_out_that_is_a_folder_is_a_usage_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "detector.cli", "train-artifact", "--data", "m.csv", "--out", "."],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and ". is a directory; give a file path" in out.stderr


def _flat_manifest(folder: Path, size: int = 96) -> Path:
    """Flat single-colour images, a shade apart between the classes."""

    def flat(i: int, label: str) -> np.ndarray:
        return np.full((size, size, 3), (40 * i + (label == "fake") * 7) % 256, np.uint8)

    return _manifest(folder, pixels=flat, splits=(6, 4, 0))


def test_images_the_method_does_not_judge_are_left_out(tmp_path):
    """Flat images (and images under 64 px) abstain when scored, so they are not trained on:
    flat ones made a model from float rounding (logits of millions, test AP 1.0, exit 0)."""
    with pytest.raises(ValueError, match="once the 12 images the method does not judge"):
        train_artifact(_flat_manifest(tmp_path), tmp_path / "a.json")
    small = tmp_path / "small"
    small.mkdir()
    with pytest.raises(ValueError, match="does not judge \\(smaller than 64 px, or flat\\)"):
        train_artifact(_flat_manifest(small, size=8), small / "a.json")
    assert not (tmp_path / "a.json").exists() and not (small / "a.json").exists()


def test_constant_features_get_no_weight_and_all_constant_is_refused(tmp_path, monkeypatch):
    """A feature the same over every training image but for float rounding was scaled by
    1e-6 into logits of millions; it now gets unit scale and weight 0. Features all constant:
    refused. Too few validation reals for the target rate: a warning in the model."""
    from training import artifact_train

    real = artifact_train.features_of
    rng = np.random.default_rng(0)

    def rounding_noise(samples, workers=2):  # feature 5: a constant plus float32 rounding
        kept, x = real(samples, workers)
        x[:, 5] = 0.25 + rng.normal(0, 1e-8, len(kept))
        return kept, x

    monkeypatch.setattr(artifact_train, "features_of", rounding_noise)
    model = train_artifact(_manifest(tmp_path), tmp_path / "a.json")
    assert model["std"][5] == 1.0 and model["weights"][5] == 0.0
    assert model["training"]["constant_features"] == [model["features"][5]]
    assert model["training"]["skipped"] == {"train": 0, "val": 0, "test": 0}
    assert "fewer than the 100 that measure a 1% false-positive rate" in model["warnings"][0]

    def constant(samples, workers=2):  # every image yields the same feature vector
        kept, x = real(samples, workers)
        return kept, np.repeat(x[:1], len(kept), axis=0)

    monkeypatch.setattr(artifact_train, "features_of", constant)
    with pytest.raises(ValueError, match="every feature is the same over the 24 training"):
        train_artifact(tmp_path / "manifest.csv", tmp_path / "b.json")
