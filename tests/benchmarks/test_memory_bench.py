"""The known-image memory benchmark on the tiny corpus: its grid, its choice and its lookups."""

from __future__ import annotations

import json

import pytest

from benchmarks.memory import DHASH_LIMITS, PHASH_LIMITS, TRANSFORMS, memory_benchmark

pytestmark = pytest.mark.integration


def test_memory_benchmark_measures_recall_false_matches_and_lookups(tiny_corpus):
    r = memory_benchmark(
        tiny_corpus / "manifest.csv", queries=6, distinct=60, index_size=500, log=lambda m: None
    )
    json.dumps(r)  # the CLI writes it as JSON (numpy scalars would not serialise)
    assert r["distinct_images"] == 60 and r["queries"] == 6
    assert len(r["grid"]) == len(PHASH_LIMITS) * len(DHASH_LIMITS)
    by = {(g["max_phash"], g["max_dhash"]): g for g in r["grid"]}
    for g in r["grid"]:
        assert set(g["recall"]) == set(TRANSFORMS)
        # looser limits never recall less nor match fewer distinct images
        for tp, td in ((g["max_phash"] + 2, g["max_dhash"]),):
            if (tp, td) in by:
                assert by[(tp, td)]["mean_recall"] >= g["mean_recall"]
                assert by[(tp, td)]["false_match_images"] >= g["false_match_images"]
    best = r["measured_rule"]
    within = [g for g in r["grid"] if g["false_match_rate"] <= r["false_match_budget"]]
    assert within, "the tightest rules falsely match nothing among 60 tiny-corpus images"
    assert best["false_match_rate"] <= r["false_match_budget"]
    assert best["mean_recall"] == max(g["mean_recall"] for g in within)
    for g in r["grid"]:
        assert g["false_match_pairs"] >= 0 and g["same_picture_pairs"] >= 0
    # re-compression at q95 keeps every re-upload findable under the shipped rule
    assert r["shipped_rule"]["recall"]["jpeg95"] == 1.0
    lookup = r["lookup"]
    assert lookup["hashes_in_index"] >= 500 and lookup["uploads"] == 6 * len(TRANSFORMS)
    assert lookup["hashes_in_index"] == lookup["records"] * (1 + r["crop_windows"])
    # the crop windows: never less recall than the full frame alone, under the same limits
    full = {(g["max_phash"], g["max_dhash"]): g for g in r["full_frame_grid"]}
    for key, g in by.items():
        for name, value in g["recall"].items():
            assert value >= full[key]["recall"][name]
    assert (
        r["shipped_rule"]["recall"]["crop10"]
        >= r["shipped_rule_full_frame_only"]["recall"]["crop10"]
    )
    assert 0 < lookup["p50_ms"] <= lookup["p99_ms"]
    assert lookup["uploads_matched_under_shipped_rule"] >= r["shipped_rule"]["mean_recall"] - 1e-9
