"""The quick benchmark profile, gated against the committed baseline (what CI checks)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from benchmarks.compare import compare_results, load_result
from benchmarks.quick import quick_profile

pytestmark = pytest.mark.integration

BASELINE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quick-baseline.json"


@pytest.mark.slow
def test_quick_profile_passes_the_gate_and_a_degraded_copy_fails(tiny_corpus, tmp_path):
    result = quick_profile(tiny_corpus / "manifest.csv", tmp_path / "quick.json", seconds=2.0)
    baseline = load_result(BASELINE)
    # Accuracy tolerance 0.1: the tiny test split is ~10 images per generator, and generator
    # training differs in the last bits between CPUs; a broken model or preprocessing costs far
    # more. Speed ratios are measured within this run; CI machines are noisy, hence 50%.
    gate = compare_results(baseline, result, accuracy_tol=0.1, speed_tol=0.5)
    assert gate.ok, gate.render()
    # which model ran, as bench accuracy records it (it was a bare path), so the gate can tell
    assert set(result["model"]) == {"path", "name", "onnx_sha256"}
    assert result["model"]["name"] and len(result["model"]["onnx_sha256"]) == 64
    if isinstance(baseline["model"], str):  # a baseline from before: compared, with a note
        assert "has no sha256 (an older result)" in gate.render()
    degraded = copy.deepcopy(result)
    key = next(k for k in degraded["gate"]["accuracy"] if k.startswith("model@"))
    degraded["gate"]["accuracy"][key] -= 0.3
    assert not compare_results(baseline, degraded, accuracy_tol=0.1, speed_tol=0.5).ok
