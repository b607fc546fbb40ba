"""The metadata test set built from a tiny manifest the test writes: both splits, every signal,
an earlier set replaced whole, and a failed build leaving nothing behind."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from benchmarks.metadata_set import SIGNALS, build_metadata_set

pytestmark = pytest.mark.unit


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    root.mkdir()
    rows = [("small.png", "fake", "test")]  # under 256 px: not used (the watermark needs 256)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(root / "small.png")
    for i in range(2):
        for label in ("real", "fake"):
            pixels = rng.integers(0, 256, (256, 288, 3), np.uint8)
            Image.fromarray(pixels).save(root / f"{label}{i}.png")
            rows.append((f"{label}{i}.png", label, "test"))
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    return root


def _rows(manifest):
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def test_both_splits_and_every_signal(corpus, tmp_path):
    out = tmp_path / "set"
    manifest = build_metadata_set(corpus, out, per_signal=2)
    rows = _rows(manifest)
    assert len(rows) == 2 * 2 * 2 * len(SIGNALS)  # (fakes + as many reals) x 2 splits
    assert {r["split"] for r in rows} == {"declared", "stripped"}
    assert {r["generator"] for r in rows if r["label"] == "fake"} == set(SIGNALS)
    assert all((out / r["path"]).is_file() for r in rows)
    stripped = [r for r in rows if r["split"] == "stripped"]
    assert all(r["path"].endswith(".jpg") for r in stripped)
    # 12 fakes and 12 reals made from 2 images each: grouped by source, 2 of each
    assert {r["source_id"] for r in rows} == {
        "fake-image0",
        "fake-image1",
        "real-image0",
        "real-image1",
    }
    assert not (tmp_path / "set.partial").exists()


def test_an_earlier_set_is_replaced_whole(corpus, tmp_path):
    mine = tmp_path / "set.partial"  # a folder of the user's that the build used to delete
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    out = tmp_path / "set"
    build_metadata_set(corpus, out, per_signal=2)
    assert (mine / "thesis.txt").read_text() == "precious"
    assert not any(p.name.startswith(".set-") for p in tmp_path.iterdir())  # no staging left
    (out / "declared" / "stale.png").write_bytes(b"left from before")
    build_metadata_set(corpus, out, per_signal=1)
    assert len(_rows(out / "manifest.csv")) == 2 * 2 * len(SIGNALS)
    assert not (out / "declared" / "stale.png").exists()


def test_refusals_leave_nothing(corpus, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files than a metadata set"):
        build_metadata_set(corpus, other, per_signal=1)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    out = tmp_path / "set"
    with pytest.raises(ValueError, match="not enough test images of at least 256px"):
        build_metadata_set(corpus, out, per_signal=3)
    assert not out.exists() and not any(p.name.startswith(".set-") for p in tmp_path.iterdir())
