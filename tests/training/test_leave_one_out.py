"""Leave-one-family-out: one run per group, each scored on its own held-out family; the report
is written after every group, and a finished group's scores are not computed twice."""

from __future__ import annotations

import json

import pytest

from tests.training.test_train import FAST
from training.run_eval import leave_one_out

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_groups_are_reported_as_they_finish_and_scores_are_kept(tiny_corpus, tmp_path):
    holdouts = tmp_path / "holdouts.yaml"
    holdouts.write_text("gan:\n  exclude: [gan]\nae:\n  exclude: [autoencoder]\n")
    overrides = [*FAST, "epochs=1", "max_steps=3", "val_max_images=12", "eval_test=false"]
    seen: list[tuple[list[str], list[str], float]] = []

    def on_group(report, done, left):
        seen.append((done, left, report.overall.roc_auc))

    runs = tmp_path / "lofo"
    first = leave_one_out(None, overrides, tiny_corpus / "manifest.csv", runs, holdouts,
                          on_group=on_group)  # fmt: skip
    assert [(d, left) for d, left, _ in seen] == [(["gan"], ["ae"]), (["gan", "ae"], [])]
    assert set(first.per_generator) == {"gan", "ae"}
    groups = first.extra["leave_one_out"]["as_is"]["groups"]
    assert groups["gan"]["exclude"] == ["gan"] and groups["gan"]["n_fake"] > 0
    _check_card_table(first, tmp_path)
    # each run keeps its group's scores, keyed by its checkpoint: a second report reuses them
    cache = json.loads((runs / "loo-gan" / "held-out-scores.json").read_text())
    assert len(cache) == 1 and cache[0]["key"]["families"] == ["gan"]
    import training.run_eval as run_eval

    def no_scoring(*args, **kwargs):
        raise AssertionError("a finished group was scored again")

    original = run_eval.score_held_out_family
    run_eval.score_held_out_family = no_scoring
    try:
        again = leave_one_out(None, overrides, tiny_corpus / "manifest.csv", runs, holdouts)
    finally:
        run_eval.score_held_out_family = original
    assert again.overall.roc_auc == pytest.approx(first.overall.roc_auc)


def _check_card_table(report, tmp_path):
    """The model card's table is rendered from the written report, one row per group."""
    import subprocess
    import sys
    from pathlib import Path

    report.extra = {**report.extra, "groups_done": ["gan", "ae"], "groups_left": []}
    report.write(tmp_path / "lofo.json")
    script = Path(__file__).resolve().parents[2] / "scripts" / "lofo_table.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "lofo.json")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    groups = report.extra["leave_one_out"]["as_is"]["groups"]
    for name in ("gan", "ae"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} ("))
        assert f"{groups[name]['roc_auc']:.3f} / {groups[name]['roc_auc']:.3f}" in row
    assert f"2 of 2 groups: mean AP {report.extra['mean_ap']:.3f}" in out
    bad = subprocess.run([sys.executable, str(script), str(script)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a leave-one-family-out result" in bad.stderr
