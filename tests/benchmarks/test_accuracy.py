"""The accuracy benchmark's equalised rows: both classes re-encoded the same way, beside as-is."""

from __future__ import annotations

import pytest

from benchmarks.accuracy import _degraded_bytes, accuracy_benchmark
from detector.image import decode
from training.datasets import load_samples
from training.run_eval import parse_equalise

pytestmark = pytest.mark.integration


def test_equalised_rows_sit_beside_as_is_rows(tiny_corpus, method_options):
    result = accuracy_benchmark(
        tiny_corpus / "manifest.csv",
        methods=["model", "generator_params"],
        grid="none,blur:1",
        limit=16,
        options=method_options,
        equalise="jpeg:90",
        log=lambda m: None,
    )
    keys = {(r["degradation"], r["equalise"], r["method"]) for r in result["rows"]}
    assert keys == {
        (d, e, m)
        for d in ("none", "blur:1")
        for e in ("none", "jpeg:90")
        for m in ("model", "generator_params", "fused")
    }
    assert result["equalise"] == "jpeg:90"
    assert "model@none|eq=jpeg:90.ap" in result["gate"]["accuracy"]
    assert "model@none.ap" in result["gate"]["accuracy"]


def test_equalised_files_are_plain_jpegs_of_the_same_pixels(tiny_corpus):
    sample = next(s for s in load_samples(tiny_corpus / "manifest.csv") if s.path.suffix == ".png")
    data = _degraded_bytes(sample, [], parse_equalise("jpeg:90"))
    image = decode(data)
    original = decode(sample.path.read_bytes())
    assert image.format == "JPEG" and not image.metadata.exif and not image.metadata.text
    assert image.pixels.shape == original.pixels.shape
    diff = abs(image.pixels.astype(int) - original.pixels.astype(int)).mean()
    assert 0 < diff < 6  # re-encoded, not replaced
