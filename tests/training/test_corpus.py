"""The tiny corpus end to end: counts, splits, equal post-processing, manifest integrity."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.corpus import MANIFEST_FIELDS, SIZES, WILD_PROVENANCE, CorpusError, build_corpus
from training.generators import GENERATORS

pytestmark = pytest.mark.integration


def _rows(corpus: Path) -> list[dict]:
    with open(corpus / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_outputs_exist(tiny_corpus):
    for name in ("manifest.csv", "summary.md", "corpus.json", "contact_sheet.png"):
        assert (tiny_corpus / name).is_file()
    with Image.open(tiny_corpus / "contact_sheet.png") as sheet:
        assert sheet.width > 512 and sheet.height > 512
    info = json.loads((tiny_corpus / "corpus.json").read_text())
    assert info["config"]["size"] == "tiny" and info["images"] == len(_rows(tiny_corpus))
    assert set(info["generators"]) == set(SIZES["tiny"].generators) <= set(GENERATORS.names())


def test_manifest_matches_files(tiny_corpus):
    rows = _rows(tiny_corpus)
    wild = [r for r in rows if r["pool"] == "wild"]  # when ../shared/data/wild-train is there
    assert list(rows[0]) == MANIFEST_FIELDS + (WILD_PROVENANCE if wild else [])
    # the wild images name the file they were cut from, so a merge can refuse a second corpus
    # cut from the same files (training.merge)
    assert all(r["repo"] and r["src_path"] and r["commit"] for r in wild)
    for row in rows:
        data = (tiny_corpus / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        with Image.open(tiny_corpus / row["path"]) as im:
            assert im.size == (int(row["width"]), int(row["height"]))
            assert im.format == row["format"]
            assert not im.info.get("exif") and not im.info.get("icc_profile")


def test_every_generator_and_split_is_present(tiny_corpus):
    rows = _rows(tiny_corpus)
    fakes = Counter(r["generator"] for r in rows if r["label"] == "fake")
    for name in SIZES["tiny"].generators:
        assert fakes[name] > 0, name
    splits = Counter(r["split"] for r in rows)
    for split in ("train", "val", "test", "heldout-real", "heldout-generators"):
        assert splits[split] > 0, split
    held = {r["generator"] for r in rows if r["split"] == "heldout-generators"}
    assert held == set(SIZES["tiny"].heldout_generators)
    assert not any(r["generator"] in held for r in rows if r["split"] in ("train", "val", "test"))
    assert all(r["label"] == "real" for r in rows if r["split"] == "heldout-real")


def test_splits_are_disjoint_by_source(tiny_corpus):
    rows = _rows(tiny_corpus)
    sources: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        if r["split"] == "heldout-generators":
            continue  # made from test-split photos on purpose
        sources.setdefault((r["pool"], r["source_id"]), set()).add(r["split"])
    shared = {k: v for k, v in sources.items() if len(v) > 1 and not k[1].startswith("gen:")}
    assert not shared


def test_aligned_fakes_pair_with_a_real_twin_of_the_same_photo(tiny_corpus):
    rows = {r["path"]: r for r in _rows(tiny_corpus)}
    aligned = [r for r in rows.values() if r["pair"]]
    assert aligned
    for fake in aligned:
        twin = rows[fake["pair"]]
        assert twin["label"] == "real" and twin["source_id"] == fake["source_id"]
        assert (twin["width"], twin["height"]) == (fake["width"], fake["height"])


def test_both_classes_get_the_same_post_processing(tiny_corpus):
    rows = [r for r in _rows(tiny_corpus) if r["split"] != "heldout-real"]
    for pool, side in (("crops256", "256"), ("crops64", "64")):
        for label in ("real", "fake"):
            sizes = {
                (r["width"], r["height"]) for r in rows if r["pool"] == pool and r["label"] == label
            }
            assert sizes == {(side, side)}, (pool, label, sizes)
    for label in ("real", "fake"):
        cls = [r for r in rows if r["label"] == label]
        share = sum(r["format"] == "JPEG" for r in cls) / len(cls)
        assert 0.45 < share < 0.95, (label, share)  # 0.7 configured for both classes
        qualities = [int(r["quality"]) for r in cls if r["quality"]]
        assert min(qualities) >= 70 and max(qualities) <= 98


@pytest.mark.slow
def test_same_seed_same_bytes(tiny_corpus, tmp_path):
    # Generator weights come from the cache here; their training is checked for determinism
    # in test_generators.py.
    again = tmp_path / "again"
    build_corpus(again, SIZES["tiny"], wild_dir=None, log=lambda m: None)
    first = {r["path"]: r["sha256"] for r in _rows(tiny_corpus) if r["pool"] != "wild"}
    second = {r["path"]: r["sha256"] for r in _rows(again)}
    assert first == second


def test_a_failed_build_leaves_no_output_folder(tiny_corpus, tmp_path, monkeypatch):
    """The build runs in <out>.partial: a failure midway (here the first image written) leaves
    no out folder, so nothing blocks the rerun and no run reads half a corpus."""
    from training import corpus

    def fail(self, item):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corpus.CorpusWriter, "write", fail)  # generators come from the cache
    out = tmp_path / "c"
    with pytest.raises(OSError, match="No space left"):
        build_corpus(out, SIZES["tiny"], wild_dir=None, log=lambda m: None)
    assert not out.exists()
    assert not (tmp_path / "c.partial").exists()  # (it was left, until the next build)


def test_a_folder_named_like_the_build_s_partial_is_not_deleted(tmp_path):
    """Both builders emptied <out>.partial without asking: a user's folder of that name went."""
    mine = tmp_path / "keep.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match=r"keep\.partial exists and is not an unfinished build"):
        build_corpus(tmp_path / "keep", SIZES["tiny"], log=lambda m: None)
    assert (mine / "notes.txt").read_text() == "mine"


def test_real_photos_that_share_a_name_are_refused_before_any_work(tmp_path):
    """a/x.jpg and b/x.jpg: their crops' files share names; it failed after the generators
    trained ("duplicate corpus item x.jpg-c000")."""
    for sub in ("a", "b", "c"):
        (tmp_path / "photos" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(
            tmp_path / "photos" / sub / f"{sub}.png"
        )
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(tmp_path / "photos" / "b" / "a.png")
    with pytest.raises(CorpusError, match=r"two source photos share the name 'a\.png'"):
        build_corpus(
            tmp_path / "c", SIZES["tiny"], real_dir=tmp_path / "photos", log=lambda m: None
        )
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(CorpusError, match="not empty"):
        build_corpus(tmp_path, SIZES["tiny"], log=lambda m: None)
    assert (tmp_path / "x").read_text() == "keep me"


def test_refuses_the_current_folder_and_a_file_before_any_work(tmp_path, monkeypatch):
    """--out . in an empty folder passed the check, trained the generators, then failed on a
    path with no name (``.partial`` is made beside the output and renamed into place)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(CorpusError, match=r"--out \. is the current folder or above it"):
        build_corpus(".", SIZES["tiny"], log=lambda m: None)
    (tmp_path / "file").write_text("")
    with pytest.raises(CorpusError, match="is a file"):
        build_corpus(tmp_path / "file", SIZES["tiny"], log=lambda m: None)


def test_unknown_generator_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="unknown generators"):
        build_corpus(
            tmp_path / "c", replace(SIZES["tiny"], generators=("nope",)), log=lambda m: None
        )


def test_real_dir_with_too_few_photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(folder / "a.png")
    with pytest.raises(CorpusError, match="at least 3 source photos"):
        build_corpus(
            tmp_path / "c", SIZES["tiny"], real_dir=folder, wild_dir=None, log=lambda m: None
        )


def test_a_wild_repository_s_sources_share_one_split(tmp_path):
    """Splits were drawn per (label, source): one repository's photos on train and their VQGAN
    remakes on test (taming-transformers in wild-train)."""
    from training import corpus

    root = tmp_path / "wild"
    lines = ["file,label,generator_or_source,repo,path_in_repo,commit,license"]
    sources = [("real", f"shared-{k}", "o/shared") for k in "abcd"] + [
        ("fake", "shared-gan", "o/shared")
    ]
    sources += [
        (label, f"{label}{i}", f"o/r{label}{i}") for label in ("real", "fake") for i in range(6)
    ]
    rng = np.random.default_rng(0)
    for label, slug, repo in sources:
        for n in range(2):
            name = f"{label}/{slug}__{n:04d}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(root / name)
            lines.append(f"{name},{label},x,{repo},{slug}-{n}.png,{'0' * 40},MIT")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    stats = corpus.CorpusStats()
    config = replace(SIZES["tiny"], wild_limit=None)
    corpus._wild(root, config, corpus.CorpusWriter(tmp_path / "out", config, stats), lambda m: None)
    splits = Counter(r["split"] for r in stats.rows)
    assert len(splits) == 3  # the others still spread over train, val and test
    assert len({r["split"] for r in stats.rows if r["repo"] == "o/shared"}) == 1
