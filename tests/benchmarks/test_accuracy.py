"""The accuracy benchmark's equalised rows: both classes re-encoded the same way, beside as-is."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.accuracy import _degraded_bytes, _spread, accuracy_benchmark, accuracy_table
from detector.image import ImageError, decode
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


@pytest.fixture
def sorted_manifest(tmp_path):
    """8 camera photos, then 4 fakes of each of two generators declaring themselves (A1111
    parameters): sorted by class, as manifests often are."""
    from training import metadata_writers as P

    rows = ["path,label,split,generator"]
    for i in range(16):
        pixels = P.synthetic_scene(i, 96, 96)
        label, gen = ("real", "real") if i < 8 else ("fake", "genA" if i < 12 else "genB")
        text = {"parameters": P.a1111_parameters()} if label == "fake" else None
        (tmp_path / f"{i}.png").write_bytes(P.encode(pixels, "PNG", png_text=text))
        rows.append(f"{i}.png,{label},test,{gen}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


def _run(manifest, **kwargs):
    return accuracy_benchmark(manifest, log=lambda m: None, **kwargs)


def test_a_named_method_that_cannot_run_is_an_error(sorted_manifest):
    with pytest.raises(
        ValueError, match="method 'known_image' is unavailable: needs a known-image"
    ):
        _run(sorted_manifest, methods=["known_image", "generator_params"])


def test_limit_spreads_over_the_whole_manifest(sorted_manifest):
    picked = _spread(list(range(16)), 10)
    assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 15
    assert sum(i >= 8 for i in picked) == 5  # half from each half, not the first ten rows
    result = _run(sorted_manifest, methods=["generator_params"], limit=10)
    (row,) = [r for r in result["rows"] if r["method"] == "generator_params"]
    assert row["n"] == 10 and row["fake_coverage"] == 1.0 and row["coverage"] == 0.5


def test_a_method_that_judged_one_class_says_how_right_it_was(sorted_manifest, method_options):
    result = _run(sorted_manifest, methods=["model", "generator_params"], options=method_options)
    rows = {r["method"]: r for r in result["rows"]}
    params = rows["generator_params"]  # judged the 8 fakes only (they declare themselves)
    assert params["fake_coverage"] == 1.0 and params["real_coverage"] == 0.0
    assert params["fake_accuracy_at_threshold"] == 1.0 and "ap" not in params
    model = result["model"]
    assert model["name"] == "efficientnet_lite0_default" and model["onnx_sha256"]
    assert rows["fused"]["ms_per_image"] == pytest.approx(
        rows["model"]["ms_per_image"] + params["ms_per_image"]
    )
    assert "model efficientnet_lite0_default" in accuracy_table(result)


def test_the_fused_time_counts_the_fused_methods_only(sorted_manifest, method_options):
    result = _run(sorted_manifest, methods=None, options=method_options, limit=4)
    rows = {r["method"]: r for r in result["rows"]}
    assert "artifact" in rows and "artifact" not in result["fused_methods"]
    want = sum(rows[n]["ms_per_image"] for n in result["fused_methods"])
    assert rows["fused"]["ms_per_image"] == pytest.approx(want)


def test_an_unreadable_image_is_named(sorted_manifest):
    (sorted_manifest.parent / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    with pytest.raises(ImageError, match=r"3\.png: corrupt or truncated"):
        _run(sorted_manifest, methods=["generator_params"], grid="blur:1")


def test_per_generator_rows_compare_fakes_with_the_reals_of_their_pool():
    """`bench accuracy` judged each generator against every real, `evaluate` against the reals
    of the same pool: one model on one set read 0.667 / 0.451 in one, 0.732 / 0.525 in the
    other."""
    import numpy as np

    from benchmarks.accuracy import _metrics_row
    from detector.calibration import Calibration
    from training.datasets import Sample
    from training.evaluate import evaluate_scores, generator_groups

    # pool "a": its reals score low, its fakes in between; pool "b": its reals score high
    scored = [("a", "real", 0.1), ("a", "real", 0.2), ("a", "ga", 0.4), ("a", "ga", 0.5),
              ("b", "real", 0.8), ("b", "real", 0.9), ("b", "gb", 0.95), ("b", "gb", 0.85)]  # fmt: skip
    samples = [Sample(Path(f"{i}.png"), int(gen != "real"), gen, pool=pool)
               for i, (pool, gen, _) in enumerate(scored)]  # fmt: skip
    probs = [p for *_, p in scored]
    labels = np.array([s.label for s in samples])
    row = _metrics_row(labels, probs, 0.5, generator_groups(samples), 1.0)
    logits = np.log(np.array(probs) / (1 - np.array(probs)))
    report = evaluate_scores(samples, logits, Calibration(), "test")
    assert row["per_generator"]["ga"]["ap"] == pytest.approx(1.0)  # 0.5 against every real
    assert {g: r["ap"] for g, r in row["per_generator"].items()} == pytest.approx(
        {g: m.ap for g, m in report.per_generator.items()}
    )
    assert row["per_generator"]["gb"]["coverage"] == 1.0


def test_a_failing_method_is_measured_as_abstaining(sorted_manifest, method_registry):
    """A method that raised ended `bench accuracy` in a traceback, and one that returned a
    wrong number of results in an IndexError; Detector degrades around both (one guard)."""
    from detector.methods import Kind, Method, register_method

    def raising(self, images):
        raise RuntimeError("batch exploded")

    def one_too_many(self, images):
        return [self.result(0.9) for _ in range(len(images) + 1)]

    for name, score in (("raising", raising), ("one_too_many", one_too_many)):
        register_method(name)(type(name, (Method,), {"kind": Kind.METADATA, "score": score}))
    logged: list[str] = []
    result = accuracy_benchmark(sorted_manifest, methods=["generator_params", "raising",
                                "one_too_many"], log=logged.append)  # fmt: skip
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["raising"]["coverage"] == 0 and rows["one_too_many"]["coverage"] == 0
    assert rows["fused"]["fake_coverage"] == 1.0  # the declarations still decide
    assert "  raising failed on 1 batch(es): raising: RuntimeError: batch exploded" in logged
