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


def test_the_fused_row_is_the_default_verdict_unless_methods_are_named(tiny_corpus,
                                                                      method_options):  # fmt: skip
    """Every method gets its own row; "fused" fuses what a user gets: the default set (no
    opt-in artifact method), or the named methods."""
    kwargs = {"grid": "none", "limit": 12, "options": method_options, "log": lambda m: None}
    every = accuracy_benchmark(tiny_corpus / "manifest.csv", **kwargs)
    assert "artifact" in every["methods"] and "artifact" not in every["fused_methods"]
    assert "model" in every["fused_methods"] and "artifact" in {r["method"] for r in every["rows"]}
    named = accuracy_benchmark(tiny_corpus / "manifest.csv", methods=["model", "artifact"],
                               **kwargs)  # fmt: skip
    assert named["fused_methods"] == ["model", "artifact"]
    fused = {r["method"]: r for r in named["rows"]}
    plain = {r["method"]: r for r in every["rows"]}
    # the model's own row is the same in both runs; the fused rows differ by the artifact
    assert fused["model"]["ap"] == pytest.approx(plain["model"]["ap"])
    assert fused["fused"]["ap"] != pytest.approx(plain["fused"]["ap"], abs=1e-9)


def test_equalised_files_are_plain_jpegs_of_the_same_pixels(tiny_corpus):
    sample = next(s for s in load_samples(tiny_corpus / "manifest.csv") if s.path.suffix == ".png")
    data = _degraded_bytes(sample, [], parse_equalise("jpeg:90"))
    image = decode(data)
    original = decode(sample.path.read_bytes())
    assert image.format == "JPEG" and not image.metadata.exif and not image.metadata.text
    assert image.pixels.shape == original.pixels.shape
    diff = abs(image.pixels.astype(int) - original.pixels.astype(int)).mean()
    assert 0 < diff < 6  # re-encoded, not replaced
