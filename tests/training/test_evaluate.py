"""Evaluation reports: per-pool and per-generator groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.calibration import Calibration
from training.datasets import Sample
from training.evaluate import evaluate_scores
from training.metrics import generator_groups

pytestmark = pytest.mark.unit


def _samples(rows: list[tuple[str, str]]) -> list[Sample]:
    return [
        Sample(Path(f"{i}.png"), int(gen != "real"), gen, pool=pool)
        for i, (pool, gen) in enumerate(rows)
    ]


def test_a_generator_is_grouped_with_the_reals_of_its_own_pools():
    samples = _samples([("a", "real"), ("a", "ga"), ("b", "real"), ("b", "gb"), ("c", "real")])
    groups = generator_groups(samples)
    assert list(groups) == ["ga", "gb"]
    assert groups["ga"].tolist() == [True, True, False, False, False]
    assert groups["gb"].tolist() == [False, False, True, True, False]


def test_a_one_class_pool_reports_its_class_accuracy_without_an_ap():
    """Held-out real photos form a pool of reals alone: its row gives their accuracy at the
    threshold (no AP to rank), as the committed held-out evaluations show."""
    samples = _samples([("a", "real"), ("a", "ga"), ("wild", "real"), ("wild", "real")])
    logits = np.array([-2.0, 2.0, -1.0, 1.0])
    report = evaluate_scores(samples, logits, Calibration(), "test")
    assert set(report.per_pool) == {"a", "wild"}
    wild = report.per_pool["wild"]
    assert (wild.n_real, wild.n_fake) == (2, 0) and np.isnan(wild.ap)
    assert wild.real_accuracy_at_threshold == 0.5
    assert report.per_pool["a"].ap == 1.0


@pytest.mark.parametrize("command", [["evaluate", "--model", "BUNDLED"], ["bench", "accuracy"]])
def test_a_split_the_data_lack_names_the_splits_they_have(tmp_path, command):
    """real/ + fake/ folders have no splits: the default --split test said only 'no images in
    split test', not what there is or that --split all scores everything."""
    import subprocess
    import sys

    from PIL import Image

    from detector.bundled import DEFAULT_MODEL

    for folder in ("real", "fake/sd"):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (i * 90, 30, 60)).save(tmp_path / folder / f"{i}.png")
    args = [str(DEFAULT_MODEL) if a == "BUNDLED" else a for a in command]
    out = subprocess.run(
        [sys.executable, "-m", "detector.cli", *args, "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "no images in split 'test' (its splits: (none) 4); --split all scores" in out.stderr
