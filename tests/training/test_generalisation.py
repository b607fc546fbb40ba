"""Choosing a model by generalisation: merged corpora, sampling weights, equalised evaluation,
the generalisation report and hold-out groups."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.engine import load_bundle
from training.datasets import Sample, load_samples
from training.merge import merge_manifests
from training.run_eval import (
    evaluate_model,
    excluded_families,
    generalisation,
    parse_equalise,
    read_holdouts,
    score_held_out_family,
    training_config,
)
from training.train import BalancedSampler, sample_weights, split_samples

pytestmark = pytest.mark.unit


def _s(label, gen, pool="p", source="s", family=None):
    return Sample(Path("x.png"), label, gen, family or gen, source, "train", pool)


def test_sample_weights_balance_classes_generators_and_pools():
    samples = (
        [_s(0, "real", source=f"r{i % 2}") for i in range(6)]
        + [_s(1, "big") for _ in range(100)]
        + [_s(1, "one")]
        + [_s(0, "real", pool="q"), _s(1, "qgen", pool="q")]
    )
    w = np.array(sample_weights(samples))
    assert w.sum() == pytest.approx(1)
    labels = np.array([s.label for s in samples])
    assert w[labels == 0].sum() == pytest.approx(0.5)
    gens = np.array([s.generator for s in samples])
    # power 0: every generator alike, the lone image as often as the hundred together
    assert w[gens == "one"].sum() == pytest.approx(w[gens == "big"].sum())
    w = np.array(sample_weights(samples, power=0.5))
    assert w[gens == "big"].sum() / w[gens == "one"].sum() == pytest.approx(10)
    w = np.array(sample_weights(samples, power=0.5, pool_weights={"p": 3, "q": 1}))
    pools = np.array([s.pool for s in samples])
    assert w[pools == "q"].sum() == pytest.approx(0.25) and w[pools == "p"].sum() == pytest.approx(
        0.75
    )
    assert w[(pools == "q") & (labels == 1)].sum() == pytest.approx(0.125)
    w = np.array(sample_weights(samples, pool_weights={"p": 1}))
    assert w[pools == "q"].sum() == 0  # a pool without a weight is not drawn
    with pytest.raises(ValueError, match="not in the data"):
        sample_weights(samples, pool_weights={"nowhere": 1})
    sampler = BalancedSampler(samples, 4000, seed=0, power=0.5, pool_weights={"p": 3, "q": 1})
    drawn = np.array([samples[i].pool for i in sampler])
    assert 0.2 < (drawn == "q").mean() < 0.3


def test_config_reads_pool_weights_and_checks_them():
    from training.config import load_config

    c = load_config(None, ["pool_weights={wild: 0.7, crops256: 0.3}", "balance_power=0.5"])
    assert c.pool_weights == {"wild": 0.7, "crops256": 0.3} and c.balance_power == 0.5
    with pytest.raises(ValueError, match="must be a mapping"):
        load_config(None, ["pool_weights=3"])
    with pytest.raises(ValueError, match="must be a number"):
        load_config(None, ["pool_weights={wild: lots}"])
    with pytest.raises(ValueError, match="balance_power"):
        load_config(None, ["balance_power=2"])


def _write(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_merge_rewrites_paths_keeps_columns_and_refuses_shared_sources(tmp_path):
    a = _write(tmp_path / "a", [{"path": "images/1.png", "label": "real", "split": "train", "source_id": "s1", "pool": "crops256"},
                                {"path": "images/2.png", "label": "fake", "split": "val", "source_id": "s2", "pool": "wild"}])  # fmt: skip
    b = _write(tmp_path / "b", [{"path": "img/3.png", "label": "fake", "split": "test", "source_id": "g1", "pool": "wild", "repo": "o/r"}])  # fmt: skip
    info = merge_manifests([a, b], tmp_path / "m", exclude_pools=())
    rows = list(csv.DictReader((tmp_path / "m" / "manifest.csv").read_text().splitlines()))
    assert [r["path"] for r in rows] == ["../a/images/1.png", "../a/images/2.png", "../b/img/3.png"]
    assert rows[2]["repo"] == "o/r" and rows[0]["repo"] == "" and info["rows"] == 3
    merged = load_samples(tmp_path / "m" / "manifest.csv")
    assert merged[2].path.resolve() == (tmp_path / "b" / "img" / "3.png").resolve()
    info = merge_manifests([a, b], tmp_path / "m2", exclude_pools=("wild",))
    assert info["rows"] == 1
    c = _write(tmp_path / "c", [{"path": "z.png", "label": "real", "split": "train", "source_id": "s1", "pool": "wild"}])  # fmt: skip
    with pytest.raises(ValueError, match="source 's1' is in both"):
        merge_manifests([a, c], tmp_path / "m3")
    with pytest.raises(ValueError, match="exists"):
        merge_manifests([a, b], tmp_path / "m")
    # A ragged row is refused before anything is written, and nothing is left to block a rerun.
    ragged = tmp_path / "d" / "manifest.csv"
    ragged.parent.mkdir()
    ragged.write_text("path,label,split,source_id\nq.png,real,train,s9\nr.png,real,train,s8,x\n")
    with pytest.raises(ValueError, match=r"manifest\.csv row 3: more fields than the header"):
        merge_manifests([a, ragged.parent], tmp_path / "m4")
    ragged.write_text("path,label,split,source_id\nq.png,real,train\n")
    with pytest.raises(ValueError, match=r"row 2: fewer fields than the header"):
        merge_manifests([a, ragged.parent], tmp_path / "m4")
    assert not (tmp_path / "m4" / "manifest.csv").exists()
    assert merge_manifests([a, b], tmp_path / "m4")["rows"] == 3
    assert sorted(f.name for f in (tmp_path / "m4").iterdir()) == ["manifest.csv", "merge.json"]


def test_a_merge_written_through_a_symlinked_folder_names_its_images(tmp_path):
    """Paths were made relative to --out as spelt (link/m), but the system resolves ".." from
    the folder the link points to: every row named nothing."""
    a = _write(tmp_path / "a", [{"path": "images/1.png", "label": "real", "split": "train", "source_id": "s1"}])  # fmt: skip
    b = _write(tmp_path / "b", [{"path": "images/2.png", "label": "fake", "split": "train", "source_id": "s2"}])  # fmt: skip
    for corpus, name in ((a, "1.png"), (b, "2.png")):
        (corpus / "images").mkdir()
        (corpus / "images" / name).write_bytes(b"x")
    (tmp_path / "far" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "far" / "deep" / "er")
    merge_manifests([a, b], tmp_path / "link" / "m")
    samples = load_samples(tmp_path / "link" / "m" / "manifest.csv")
    assert all(s.path.is_file() for s in samples) and len(samples) == 2


def test_merge_refuses_one_image_by_two_spellings_and_a_repository_on_two_splits(tmp_path):
    """The same file listed as a/images/1.png and alt/../a/images/1.png (one real, one fake)
    was merged twice; two corpora built apart (--families) put one repository's groups on
    train and test."""
    a = _write(tmp_path / "a", [{"path": "images/1.png", "label": "real", "split": "train", "source_id": "s1"}])  # fmt: skip
    alt = _write(tmp_path / "alt", [{"path": "../a/images/1.png", "label": "fake", "split": "test", "source_id": "t1"}])  # fmt: skip
    with pytest.raises(ValueError, match=r"listed twice .*1\.png \(real\) and .*1\.png \(fake\)"):
        merge_manifests([a, alt], tmp_path / "m")
    real = _write(tmp_path / "r", [{"path": "r.png", "label": "real", "split": "train", "source_id": "g-real", "repo": "o/r0", "src_path": "r.png"}])  # fmt: skip
    fake = _write(tmp_path / "f", [{"path": "f.png", "label": "fake", "split": "test", "source_id": "g-fake", "repo": "o/r0", "src_path": "f.png"}])  # fmt: skip
    with pytest.raises(ValueError, match=r"repository o/r0 is on splits \['test', 'train'\]"):
        merge_manifests([real, fake], tmp_path / "m2")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


def test_merge_refuses_one_source_file_in_two_corpora_and_an_empty_result(tmp_path):
    """The own corpus's wild-train images and the sources corpus cut crops from the same files
    under other source ids, and split them independently: crops of one image on two splits."""
    own = _write(tmp_path / "own", [
        {"path": "i/r.png", "label": "real", "split": "train", "source_id": "s1", "pool": "crops256", "pair": "", "repo": "", "src_path": ""},
        {"path": "i/f.png", "label": "fake", "split": "train", "source_id": "s1", "pool": "crops256", "pair": "i/r.png", "repo": "", "src_path": ""},
        {"path": "i/w.png", "label": "fake", "split": "val", "source_id": "wild:cn11", "pool": "wild", "pair": "", "repo": "o/cn", "src_path": "a/b.png"},
    ])  # fmt: skip
    wild = _write(tmp_path / "wild", [
        {"path": "x/c0.jpg", "label": "fake", "split": "test", "source_id": "wt-cn", "pool": "wild", "pair": "", "repo": "o/cn", "src_path": "a/b.png"},
        {"path": "x/c1.jpg", "label": "fake", "split": "test", "source_id": "wt-cn", "pool": "wild", "pair": "", "repo": "o/cn", "src_path": "a/c.png"},
    ])  # fmt: skip
    with pytest.raises(
        ValueError, match=r"o/cn:a/b\.png is a source of both .*own.*'wild:cn11'.*'wt-cn'"
    ):
        merge_manifests([own, wild], tmp_path / "m")
    assert not (tmp_path / "m" / "manifest.csv").exists()
    # without the own corpus's wild pool the two are disjoint; the twin's pair is rewritten
    # like its path, so it still names the real file
    merge_manifests([own, wild], tmp_path / "m", exclude_pools=("wild",))
    rows = list(csv.DictReader((tmp_path / "m" / "manifest.csv").read_text().splitlines()))
    assert rows[1]["pair"] == "../own/i/r.png" and rows[0]["pair"] == ""
    assert (tmp_path / "m" / rows[1]["pair"]).resolve() == (own / "i" / "r.png").resolve()
    with pytest.raises(ValueError, match=r"no rows left to merge \(--exclude-pools wild\)"):
        merge_manifests([_write(tmp_path / "w2", [dict(r, source_id="y") for r in [
            {"path": "q.png", "label": "fake", "split": "test", "pool": "wild"}]]), wild],
            tmp_path / "m5", exclude_pools=("wild",))  # fmt: skip


def test_excluded_families_read_from_checkpoints_and_exported_models():
    from types import SimpleNamespace

    ckpt = SimpleNamespace(meta={"train_config": {"exclude_families": ["flux", "gan"]}})
    onnx = SimpleNamespace(meta={"training": {"exclude_families": ["midjourney"]}})
    assert excluded_families(ckpt) == ["flux", "gan"]
    assert excluded_families(onnx) == ["midjourney"]
    assert excluded_families(SimpleNamespace(meta={"training": {"epoch": 3}})) == []


def test_training_config_read_from_checkpoints_and_exported_models():
    from types import SimpleNamespace

    recipe = {"input_size": 192, "lr": 0.0003, "ema_decay": 0.998}
    assert training_config(SimpleNamespace(meta={"train_config": recipe})) == recipe
    assert training_config(SimpleNamespace(meta={"training": {"config": recipe}})) == recipe
    assert training_config(SimpleNamespace(meta={"training": {"epoch": 3}})) is None


def test_equalise_takes_a_jpeg_quality_only():
    assert str(parse_equalise("jpeg:90")[0]) == "jpeg:90"
    assert parse_equalise(None) == [] and parse_equalise("none") == []
    for bad in ("blur:1", "jpeg:90+blur:1", "jpeg", "jpeg:101"):
        with pytest.raises(ValueError):
            parse_equalise(bad)


@pytest.mark.integration
def test_evaluate_reports_equalised_numbers_beside_as_is(exported_model, tiny_corpus, tmp_path):
    report = evaluate_model(
        exported_model, tiny_corpus / "manifest.csv", "test", equalise="jpeg:90"
    )
    assert report.equalise == "none" and report.equalised.equalise == "jpeg:90"
    d = report.to_dict()
    assert d["equalised"]["overall"]["n_real"] == d["overall"]["n_real"]
    assert "equalise=jpeg:90" in report.render()
    # the equalised scores are those of the re-encoded pixels: they differ from as-is
    assert (
        d["equalised"]["overall"]["ap"] != d["overall"]["ap"]
        or d["equalised"]["overall"]["ece"] != d["overall"]["ece"]
    )
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "detector.cli", "evaluate", "--model", str(exported_model), "--data",
         str(tiny_corpus / "manifest.csv"), "--equalise", "blur:2", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "--equalise takes jpeg:QUALITY" in done.stderr


@pytest.mark.integration
def test_generalisation_never_reads_the_test_split(exported_model, tiny_corpus):
    samples = load_samples(tiny_corpus / "manifest.csv")
    bundle = load_bundle(exported_model)
    seen: list[Sample] = []
    import training.run_eval as R

    original = R.predict_logits

    def recording(run, chosen, *a, **k):
        seen.extend(chosen)
        return original(run, chosen, *a, **k)

    R.predict_logits = recording
    try:
        report = generalisation(bundle, samples, held_out=["gan"], equalise="jpeg:90")
    finally:
        R.predict_logits = original
    assert seen and all(s.split != "test" for s in seen)
    assert {s.split for s in seen} >= {"val", "heldout-real"}
    for kind in ("as_is", "equalised"):
        r = report[kind]
        assert "gan" in r["held_out"] and "gan" not in r["val"]["families"]
        assert r["held_out"]["gan"]["n_real"] == sum(
            1 for s in samples if s.split == "val" and s.label == 0 and s.pool == "crops64"
        )
        assert 0 <= r["heldout_real_flagged"] <= 1
        groups = r["val"]["source_groups"]
        val = [s for s in samples if s.split == "val" and s.family != "gan"]
        assert set(groups) == {s.source_id for s in val}
        assert sum(g["n"] for g in groups.values()) == len(val)
        for name, g in groups.items():
            labels = {s.label for s in val if s.source_id == name}
            assert g["label"] == {frozenset({0}): "real", frozenset({1}): "fake"}.get(
                frozenset(labels), "mixed"
            )
            pools = {s.pool for s in val if s.source_id == name}
            reals = any(s.label == 0 and s.pool in pools for s in val)
            assert 0 <= g["flagged"] <= 1
            assert ("roc_auc" in g) == (g["label"] == "fake" and reals)
    assert report["equalised"]["equalise"] == "jpeg:90"
    assert report["train_config"] is None  # the fixture's checkpoint records no run config
    json.dumps(report)
    grouped = generalisation(
        bundle, samples, held_out={"all": ["gan", "autoencoder"]}, equalise=None
    )
    assert list(grouped["as_is"]["held_out"]) == ["all"] and "equalised" not in grouped
    assert not {"gan", "autoencoder"} & set(grouped["as_is"]["val"]["families"])


@pytest.mark.integration
def test_held_out_family_from_every_split_but_test(exported_model, tiny_corpus):
    samples = load_samples(tiny_corpus / "manifest.csv")
    bundle = load_bundle(exported_model)
    labels, _ = score_held_out_family(bundle, samples, ["gan"], ("train", "val"), "val")
    fakes = [s for s in samples if s.family == "gan" and s.split in ("train", "val")]
    reals = [s for s in samples if s.label == 0 and s.split == "val" and s.pool == "crops64"]
    assert labels.tolist() == [1] * len(fakes) + [0] * len(reals)


def test_holdout_groups_from_yaml(tmp_path):
    samples = [_s(1, "a"), _s(1, "b"), _s(1, "c"), _s(0, "real", source="twins", family="camera")]
    assert read_holdouts(None, samples) == {
        f: {"exclude": [f], "score": [f], "exclude_sources": []} for f in "abc"
    }
    f = tmp_path / "h.yaml"
    f.write_text("ab: [a, b]\nc:\n  exclude: [c, a]\n  score: [c]\n  exclude_sources: [twins]\n")
    assert read_holdouts(f, samples) == {
        "ab": {"exclude": ["a", "b"], "score": ["a", "b"], "exclude_sources": []},
        "c": {"exclude": ["c", "a"], "score": ["c"], "exclude_sources": ["twins"]},
    }
    f.write_text("x: [a, nope]\n")
    with pytest.raises(ValueError, match="not in the data: \\['nope'\\]"):
        read_holdouts(f, samples)
    f.write_text("x: 3\n")
    with pytest.raises(ValueError, match="needs a list"):
        read_holdouts(f, samples)
    # a whole training run for a row of n = 0; a string read letter by letter
    for text, message in (("x: []\n", "holds out or scores no family"),
                          ("x:\n  exclude: [a]\n  score: []\n", "holds out or scores no family"),
                          ("x:\n  exclude: [a]\n  score: a\n", "score must be a list")):  # fmt: skip
        f.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_holdouts(f, samples)
    from training.run_eval import parse_equalise

    assert parse_equalise(None) == [] == parse_equalise("none")
    with pytest.raises(ValueError, match="--equalise is empty"):
        parse_equalise("  ")
    f.write_text("x:\n  exclude: [a]\n  exclude_sources: [twins, elsewhere]\n")
    with pytest.raises(ValueError, match="sources not in the data: \\['elsewhere'\\]"):
        read_holdouts(f, samples)
    f.write_text("x:\n  exclude: [a]\n  exclude_source: [twins]\n")  # misspelt: not ignored
    with pytest.raises(ValueError, match="unknown keys \\['exclude_source'\\]"):
        read_holdouts(f, samples)
    f.write_text("x:\n  exclude: [a]\n  exclude_sources: twins\n")
    with pytest.raises(ValueError, match="exclude_sources must be a list"):
        read_holdouts(f, samples)
    f.write_text("g:\n  exclude: [a]\n  score: [a, b]\n")  # b trained on, then 'held out'
    with pytest.raises(ValueError, match="scores \\['b'\\], which it does not exclude"):
        read_holdouts(f, samples)


def test_excluded_sources_leave_every_split_with_the_excluded_families():
    samples = [
        Sample(Path(f"{i}.png"), label, gen, gen, source, split)
        for i, (label, gen, source, split) in enumerate(
            [
                (0, "real", "twins", "train"),
                (0, "real", "twins", "val"),
                (0, "real", "other", "train"),
                (0, "real", "other", "val"),
                (0, "real", "other", "test"),
                (1, "ldm", "ldm-src", "train"),
                (1, "sd", "sd-src", "train"),
                (1, "sd", "sd-src", "val"),
            ]
        )
    ]
    train, val, test = split_samples(samples, ["ldm"], ["twins"])
    assert [s.path.name for s in train] == ["2.png", "6.png"]
    assert [s.path.name for s in val] == ["3.png", "7.png"]
    assert [s.path.name for s in test] == ["4.png"]
    train, val, _ = split_samples(samples, ["ldm"])
    assert "0.png" in {s.path.name for s in train} and "1.png" in {s.path.name for s in val}


def test_splits_that_cannot_train_or_validate_are_refused():
    """Validation without one of the classes (its AP is undefined: no best checkpoint was ever
    written), training without one, and images on both sides (validation would measure what was
    learned): each refused before any training, naming what is wrong."""
    from training.train import need_both_classes

    def rows(*spec):
        return [Sample(Path(p), label, "g", "g", p, split) for p, label, split in spec]

    good = [("a.png", 0, "train"), ("b.png", 1, "train"), ("c.png", 0, "val"), ("d.png", 1, "val")]
    train, val, _ = split_samples(rows(*good), [])
    assert len(val) == 2
    need_both_classes(train, "training")
    with pytest.raises(ValueError, match="the validation split has no generated images"):
        split_samples(rows(*good[:3]), [])
    with pytest.raises(ValueError, match="validation images are training images too"):
        split_samples(rows(*good, ("b.png", 1, "val")), [])
    train, _, _ = split_samples(rows(good[0], *good[2:]), [])
    with pytest.raises(ValueError, match="the training split has no generated images"):
        need_both_classes(train, "training")


def test_train_checks_its_files_and_what_it_leaves_out_before_it_starts(tmp_path):
    from training.train import check_data

    (tmp_path / "a.png").write_bytes(b"x")
    rows = [Sample(tmp_path / "a.png", 0, "real", "camera", "s1", "train")]
    check_data(rows, ["camera"], ["s1"])
    with pytest.raises(
        ValueError, match=r"exclude_families names families not in the data: \['gna'\]"
    ):
        check_data(rows, ["gna"], [])
    with pytest.raises(
        ValueError, match=r"exclude_sources names sources not in the data: \['s2'\]"
    ):
        check_data(rows, [], ["s2"])
    rows.append(Sample(tmp_path / "gone.png", 1, "g", "g", "s3", "train"))
    with pytest.raises(
        ValueError, match=r"1 images of the manifest are not there \(e\.g\. .*gone\.png\)"
    ):
        check_data(rows, [], [])


def test_the_shipped_holdout_groups_cover_every_family_of_the_sources_list():
    """configs/holdouts-wild.yaml names every fake family of the pinned list, each once
    as scored (skips where ../shared is absent)."""
    import yaml

    sources = (
        Path(__file__).resolve().parents[3] / "shared" / "data" / "wild-sources" / "sources.csv"
    )
    if not sources.exists():
        pytest.skip(
            "../shared/data/wild-sources is absent (only developer machines and CI have it)"
        )
    groups = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "configs" / "holdouts-wild.yaml").read_text()
    )
    rows = list(csv.DictReader(sources.read_text(encoding="utf-8").splitlines()))
    families = {r["family"] for r in rows if r["label"] == "fake"}
    excluded = {f for g in groups.values() for f in g["exclude"]}
    scored = [f for g in groups.values() for f in g.get("score", g["exclude"])]
    assert excluded == families and len(scored) == len(set(scored))
    # sources that leave with a group are real photo groups of the list
    real_groups = {r["source_group"] for r in rows if r["label"] == "real"}
    twins = {x for g in groups.values() for x in g.get("exclude_sources", [])}
    assert twins and twins <= real_groups


@pytest.mark.integration
@pytest.mark.parametrize(
    "held, message",
    [
        ("gan,nosuch", "--held-out names no generated family of"),  # not in the data
        ("gan", "--held-out gan: the model was trained on it"),  # seen in training: not held out
    ],
)
def test_cli_generalisation_refuses_a_family_that_is_not_held_out(
    exported_model, tiny_corpus, held, message
):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "detector.cli", "evaluate", "--generalisation",
         "--model", str(exported_model), "--data", str(tiny_corpus / "manifest.csv"),
         "--held-out", held],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr and message in out.stderr
