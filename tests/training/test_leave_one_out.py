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
