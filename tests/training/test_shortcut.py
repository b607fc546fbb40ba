"""The shortcut check on a manifest the test writes: a container shortcut is found, unreadable
images are named in the report (not dropped silently), and nothing readable is a clear error."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.shortcut import ShortcutReport, estimate_jpeg_quality, shortcut_check

pytestmark = pytest.mark.unit


def _manifest(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def _corpus(root: Path, n: int = 12) -> list[tuple[str, str, str]]:
    """Reals as JPEG q70, fakes as PNG: the container alone separates them."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
        split = "train" if i < n // 2 else "test"
        Image.fromarray(pixels).save(root / f"r{i}.jpg", quality=70)
        Image.fromarray(pixels).save(root / f"f{i}.png")
        rows += [(f"r{i}.jpg", "real", split), (f"f{i}.png", "fake", split)]
    return rows


def test_container_shortcut_found(tmp_path):
    report = shortcut_check(_manifest(tmp_path, _corpus(tmp_path)))
    assert (report.n_train, report.n_test) == (12, 12)
    assert report.ap > 0.95 and "FAIL" in report.render()
    assert report.skipped == []
    # the command exits 1 on a failure (it printed FAIL and exited 0: no CI step could stop)
    out = subprocess.run(
        [sys.executable, "-m", "detector.cli", "corpus", "check-shortcut", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and out.stdout.rstrip().endswith(
        "FAIL: container features separate the classes"
    )


def test_the_verdict_does_not_move_with_the_share_of_generated_images(tmp_path):
    """Three fakes per real and no shortcut failed (AP 0.78 against a fixed 0.6 bar, chance
    0.75); one fake per six reals with the fakes at a higher JPEG quality passed (AP 0.42)."""
    rng = np.random.default_rng(1)

    def corpus(root: Path, reals: int, fakes: int, fake_quality: int | None) -> ShortcutReport:
        root.mkdir()
        rows = []
        for i in range(24):
            split = "train" if i % 2 else "test"
            for j in range(reals + fakes):
                pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
                label = "real" if j < reals else "fake"
                quality = int(rng.integers(70, 96))
                if label == "fake" and fake_quality is not None:
                    quality = fake_quality
                Image.fromarray(pixels).save(root / f"{label}{i}_{j}.jpg", quality=quality)
                rows.append((f"{label}{i}_{j}.jpg", label, split))
        return shortcut_check(_manifest(root, rows))

    no_shortcut = corpus(tmp_path / "a", 1, 3, None)
    assert no_shortcut.chance == 0.75 and no_shortcut.render().endswith("PASS")
    shortcut = corpus(tmp_path / "b", 6, 1, 98)
    assert shortcut.chance < 0.15 and shortcut.roc_auc > 0.9
    assert shortcut.render().endswith("FAIL: container features separate the classes")
    # and it says which: JPEG quality alone (every fake at 98), in train and in test
    assert shortcut.per_feature["jpeg_quality"][1] > 0.9 > shortcut.per_feature["width"][1]
    assert "    jpeg_quality: " in shortcut.render()


def test_unreadable_images_are_reported(tmp_path):
    rows = _corpus(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows += [("broken.png", "fake", "train"), ("gone.png", "real", "test")]
    report = shortcut_check(_manifest(tmp_path, rows))
    assert (report.n_train, report.n_test) == (12, 12)
    assert len(report.skipped) == 2
    text = report.render()
    assert "skipped 2 unreadable images" in text
    assert "broken.png" in text and "gone.png" in text


def test_a_split_with_one_class_is_refused_not_passed(tmp_path):
    """ROC-AUC is undefined on a test split of fakes only: the check printed nan and PASS."""
    rows = [r for r in _corpus(tmp_path) if r[2] == "train" or r[1] == "fake"]
    with pytest.raises(ValueError, match="the test split needs real and generated images"):
        shortcut_check(_manifest(tmp_path, rows))


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    path = _manifest(tmp_path, [("a.png", "real", "train"), ("b.png", "fake", "test")])
    with pytest.raises(ValueError, match=r"no readable image.*a\.png"):
        shortcut_check(path)


def test_jpeg_quality_estimate():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buf, "JPEG", quality=83)
    image = Image.open(io.BytesIO(buf.getvalue()))
    assert estimate_jpeg_quality(image.quantization[0]) == 83
