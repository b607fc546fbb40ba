"""The regression gate passes an unchanged result and fails a deliberately degraded one."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from benchmarks.compare import compare_results
from benchmarks.loadgen import run_load, score_payload

pytestmark = pytest.mark.unit

BASE = {
    "gate": {
        "accuracy": {"model@none.ap": 0.95, "fused@jpeg:75.ap": 0.90},
        "speed_ratio": {"server_vs_inprocess_tiles_c16": 0.92},
    }
}


def test_identical_and_slightly_noisy_results_pass():
    assert compare_results(BASE, BASE).ok
    noisy = copy.deepcopy(BASE)
    noisy["gate"]["accuracy"]["model@none.ap"] -= 0.01
    noisy["gate"]["speed_ratio"]["server_vs_inprocess_tiles_c16"] *= 0.85
    assert compare_results(BASE, noisy).ok


@pytest.mark.parametrize(
    "kind,name,value",
    [("accuracy", "model@none.ap", 0.90), ("speed_ratio", "server_vs_inprocess_tiles_c16", 0.5)],
)
def test_degraded_result_fails(kind, name, value):
    bad = copy.deepcopy(BASE)
    bad["gate"][kind][name] = value
    gate = compare_results(BASE, bad)
    assert not gate.ok and name in gate.failures[0]


def test_missing_metric_fails():
    bad = copy.deepcopy(BASE)
    del bad["gate"]["accuracy"]["fused@jpeg:75.ap"]
    assert "missing" in compare_results(BASE, bad).failures[0]


def test_cli_exit_codes(tmp_path):
    base, bad = tmp_path / "base.json", tmp_path / "bad.json"
    base.write_text(json.dumps(BASE))
    degraded = copy.deepcopy(BASE)
    degraded["gate"]["accuracy"]["model@none.ap"] = 0.5
    bad.write_text(json.dumps(degraded))
    cmd = [sys.executable, "-m", "detector.cli", "bench", "compare"]
    ok = subprocess.run([*cmd, str(base), str(base)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "gate: PASS" in ok.stdout
    fail = subprocess.run([*cmd, str(base), str(bad)], capture_output=True, text=True, timeout=60)
    assert fail.returncode == 1 and "REGRESSION" in fail.stdout
    broken = subprocess.run(
        [*cmd, str(base), str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode == 2 and "cannot read result" in broken.stderr


def test_load_generator_refuses_non_loopback_targets():
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://example.com:8000", score_payload([b"x"]), 1, requests=1, seconds=1)
