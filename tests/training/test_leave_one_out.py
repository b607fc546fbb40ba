"""Leave-one-family-out: one run per group, each scored on its own held-out family; the report
is written after every group, and a finished group's scores are not computed twice."""

from __future__ import annotations

import json

import pytest

from tests.training.test_train import FAST
from training.run_eval import leave_one_out

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_groups_are_reported_as_they_finish_and_scores_are_kept(tiny_corpus, tmp_path):
    from training.datasets import load_samples

    twins = sorted({s.source_id for s in load_samples(tiny_corpus / "manifest.csv")
                    if s.label == 0 and s.split == "train"})[0]  # fmt: skip
    holdouts = tmp_path / "holdouts.yaml"
    holdouts.write_text(
        f"gan:\n  exclude: [gan]\n  exclude_sources: [{twins!r}]\nae:\n  exclude: [autoencoder]\n"
    )
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
    assert groups["gan"]["exclude_sources"] == [twins] and groups["ae"]["exclude_sources"] == []
    import torch

    def trained_without(name):
        ckpt = torch.load(runs / f"loo-{name}" / "checkpoints" / "best.pt", weights_only=False)
        return ckpt["train_config"]["exclude_families"], ckpt["train_config"]["exclude_sources"]

    assert trained_without("gan") == (["gan"], [twins])
    assert trained_without("ae") == (["autoencoder"], [])
    _check_card_table(first, tmp_path)
    # each run keeps its group's scores, keyed by its checkpoint: a second report reuses them
    cache = json.loads((runs / "loo-gan" / "held-out-scores.json").read_text())
    assert len(cache) == 1 and cache[0]["key"]["families"] == ["gan"]
    # what another table pairs with these scores: the same images, in held_out_selection's order
    from training.degrade import parse_chain
    from training.run_eval import cached_held_out_scores, held_out_selection

    scored = ("test", "heldout-generators"), "test"  # leave_one_out's fake and real splits
    picked = held_out_selection(load_samples(tiny_corpus / "manifest.csv"), ["gan"], *scored)
    y, p = cached_held_out_scores(runs / "loo-gan", ["gan"], *scored, [])
    assert y.tolist() == [s.label for s in picked] and len(p) == len(picked)
    assert y.tolist() == sorted(y.tolist(), reverse=True)  # its fakes first, then the reals
    assert 0 < y.sum() < len(y) and ((p >= 0) & (p <= 1)).all()
    assert (
        cached_held_out_scores(runs / "loo-gan", ["gan"], *scored, parse_chain("jpeg:90")) is None
    )
    assert cached_held_out_scores(runs / "loo-ae", ["gan"], *scored, []) is None
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
        twins = groups[name]["exclude_sources"]
        assert ("; with the reals of" in row) == bool(twins)
        assert all(f"; with the reals of {t}) |" in row for t in twins)
    assert f"2 of 2 groups: mean AP {report.extra['mean_ap']:.3f}" in out
    bad = subprocess.run([sys.executable, str(script), str(script)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a leave-one-family-out result" in bad.stderr


def test_groups_finished_elsewhere_are_kept_and_only_the_named_ones_run(tiny_corpus, tmp_path):
    """--groups with --previous: a run folder lost (another machine, a cleaned disk) costs only
    the groups still to run; the kept rows are the earlier report's, as written."""
    holdouts = tmp_path / "holdouts.yaml"
    holdouts.write_text("gan:\n  exclude: [gan]\nae:\n  exclude: [autoencoder]\n")
    overrides = [*FAST, "epochs=1", "max_steps=3", "val_max_images=12", "eval_test=false"]
    data = tiny_corpus / "manifest.csv"
    first = leave_one_out(None, overrides, data, tmp_path / "a", holdouts, only=["gan"])
    assert set(first.per_generator) == {"gan"} and "pooled_groups" not in first.extra
    first.write(tmp_path / "first.json")
    previous = json.loads((tmp_path / "first.json").read_text())

    done: list[tuple[list[str], list[str]]] = []
    merged = leave_one_out(
        None, overrides, data, tmp_path / "b", holdouts, previous=previous,
        on_group=lambda report, d, left: done.append((d, left)),
    )  # fmt: skip
    assert done == [(["gan", "ae"], [])]
    assert not (tmp_path / "b" / "loo-gan").exists()  # kept, not retrained
    assert merged.extra["pooled_groups"] == ["ae"]
    runs = merged.extra["leave_one_out"]["as_is"]
    assert runs["groups"]["gan"]["ap"] == pytest.approx(first.per_generator["gan"].ap)
    ap = [runs["groups"][g]["ap"] for g in ("gan", "ae")]
    assert runs["mean_ap"] == pytest.approx(sum(ap) / 2)
    assert merged.overall.n_fake == merged.per_generator["ae"].n_fake  # pooled over "ae" only

    previous["leave_one_out"]["as_is"]["groups"]["gan"]["exclude_sources"] = ["a-real-source"]
    with pytest.raises(ValueError, match=r"defined otherwise.*exclude_sources \['a-real-source'\]"):
        leave_one_out(None, overrides, data, tmp_path / "c", holdouts, previous=previous)
    for kind in previous["leave_one_out"].values():  # a report from before exclude_sources
        del kind["groups"]["gan"]["exclude_sources"]
    kept = leave_one_out(None, overrides, data, tmp_path / "b", holdouts, previous=previous)
    assert kept.extra["leave_one_out"]["as_is"]["groups"]["gan"]["exclude_sources"] == []
    previous["leave_one_out"]["as_is"]["groups"]["gan"]["exclude"] = ["gan", "autoencoder"]
    with pytest.raises(ValueError, match="defined otherwise"):
        leave_one_out(None, overrides, data, tmp_path / "c", holdouts, previous=previous)
    with pytest.raises(ValueError, match="no hold-out group"):
        leave_one_out(None, overrides, data, tmp_path / "c", holdouts, only=["sd9"])
    previous["data"] = "another/manifest.csv"  # rows of another corpus are not merged in
    with pytest.raises(ValueError, match=r"previous report was scored on another/manifest\.csv"):
        leave_one_out(None, overrides, data, tmp_path / "c", holdouts, previous=previous)


def test_cli_rejects_groups_without_leave_one_out_and_an_unreadable_previous(tmp_path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "detector.cli", "evaluate", *args],
                              capture_output=True, text=True, check=False)  # fmt: skip

    done = cli("--model", str(tmp_path), "--data", str(tmp_path), "--groups", "gan")
    assert done.returncode == 2 and "go with --leave-one-out" in done.stderr
    bad = tmp_path / "previous.json"
    bad.write_text("{not json")
    done = cli("--leave-one-out", "--model", str(tmp_path), "--data", str(tmp_path),
               "--previous", str(bad))  # fmt: skip
    assert done.returncode == 2 and "cannot read the previous report" in done.stderr
    assert "Traceback" not in done.stderr
