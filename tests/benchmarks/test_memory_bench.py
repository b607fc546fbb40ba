"""The known-image memory benchmark on the tiny corpus: its grids, its choices, its lookups."""

from __future__ import annotations

import json

import pytest

from benchmarks.memory import (
    DHASH_LIMITS,
    PHASH_LIMITS,
    TRANSFORMS,
    WINDOW_DHASH_LIMITS,
    WINDOW_PHASH_LIMITS,
    memory_benchmark,
)

pytestmark = pytest.mark.integration


def test_memory_benchmark_measures_recall_false_matches_and_lookups(tiny_corpus):
    r = memory_benchmark(
        tiny_corpus / "manifest.csv", queries=6, distinct=60, index_size=500, log=lambda m: None
    )
    json.dumps(r)  # the CLI writes it as JSON (numpy scalars would not serialise)
    assert r["distinct_images"] == 60 and r["queries"] == 6
    full = r["full_frame_grid"]
    assert len(full) == len(PHASH_LIMITS) * len(DHASH_LIMITS)
    assert len(r["grid"]) == len(WINDOW_PHASH_LIMITS) * len(WINDOW_DHASH_LIMITS)
    by = {(g["max_phash"], g["max_dhash"]): g for g in full}
    for g in full:
        assert set(g["recall"]) == set(TRANSFORMS) and g["max_phash_window"] is None
        # looser limits never recall less nor match fewer distinct images
        looser = by.get((g["max_phash"] + 2, g["max_dhash"]))
        if looser:
            assert looser["mean_recall"] >= g["mean_recall"]
            assert looser["false_match_images"] >= g["false_match_images"]
    chosen = r["full_frame_rule"]
    within = [g for g in full if g["false_match_rate"] <= r["false_match_budget"]]
    assert within, "the tightest rules falsely match nothing among 60 tiny-corpus images"
    assert chosen["mean_recall"] == max(g["mean_recall"] for g in within)
    # windows are added to the chosen full-frame rule: never less recall, never fewer matches
    for g in r["grid"]:
        assert (g["max_phash"], g["max_dhash"]) == (chosen["max_phash"], chosen["max_dhash"])
        for name, value in g["recall"].items():
            assert value >= chosen["recall"][name]
        assert g["false_match_images"] >= chosen["false_match_images"]
    best = r["measured_rule"]
    assert best["false_match_rate"] <= r["window_false_match_budget"]
    # re-compression at q95 keeps every re-upload findable under the shipped rule
    assert r["shipped_rule"]["recall"]["jpeg95"] == 1.0
    assert (
        r["shipped_rule"]["recall"]["crop10"]
        >= r["shipped_rule_full_frame_only"]["recall"]["crop10"]
    )
    lookup = r["lookup"]
    assert lookup["hashes_in_index"] >= 500 and lookup["uploads"] == 6 * len(TRANSFORMS)
    assert lookup["hashes_in_index"] == lookup["records"] * (1 + r["crop_windows"])
    assert 0 < lookup["p50_ms"] <= lookup["p99_ms"]
    # the store's lookups agree with the benchmark's own arithmetic for the shipped rule
    mean = r["shipped_rule"]["mean_recall"]
    assert lookup["uploads_matched_under_shipped_rule"] >= mean - 1e-9


def test_an_unreadable_image_is_named(tiny_corpus, tmp_path):
    """A corrupt file stopped the benchmark with 'not a recognized image' and no path."""
    import shutil

    from detector.image import ImageError

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    for image in (corpus / "images").rglob("*.*"):
        image.write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"^/.*: not a recognized image"):
        memory_benchmark(
            corpus / "manifest.csv", queries=2, distinct=4, index_size=10, log=lambda m: None
        )
