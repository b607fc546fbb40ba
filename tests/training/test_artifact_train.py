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


def _manifest(folder: Path, labels: tuple[str, ...] = ("real", "fake")) -> Path:
    """Camera-like scenes (real) against the same scenes with blocky 2x upsampling (fake)."""
    rows = []
    for i, split in enumerate(["train"] * 12 + ["val"] * 8 + ["test"] * 4):
        scene = synthetic_scene(i, 96, 96)
        for label in labels:
            pixels = scene if label == "real" else np.repeat(np.repeat(scene[::2, ::2], 2, 0), 2, 1)
            path = folder / f"{label}{i}.png"
            Image.fromarray(pixels).save(path)
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
