"""The training-throughput benchmark times real optimizer steps and refuses bad settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.train_throughput import train_throughput, train_throughput_table

pytestmark = pytest.mark.integration


def test_rows_per_model_and_batch_with_positive_rates(tmp_path):
    out = tmp_path / "tt.json"
    result = train_throughput(
        ("mobilenetv3_small",), (2, 4), input_size=64, seconds=0.2, device="cpu", out=out
    )
    assert json.loads(out.read_text())["benchmark"] == "train-throughput"
    rows = result["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("mobilenetv3_small", 2),
        ("mobilenetv3_small", 4),
    ]
    for r in rows:
        assert r["steps"] >= 5 and r["images_per_s"] > 0
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1000 / r["step_ms"])
    table = train_throughput_table(result).splitlines()
    assert len(table) == 4 and all(line.count("|") == 8 for line in table)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "nope"], "unknown model"),
        (["--amp", "bf16", "--device", "cpu"], "CUDA only"),
        (["--amp", "int3", "--device", "cpu"], "amp must be"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "detector.cli", "bench", "train-throughput", *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
