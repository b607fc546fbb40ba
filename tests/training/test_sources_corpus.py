"""A corpus from a pinned sources list, extracted from git repositories the tests build themselves."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import metadata_writers as P
from training.corpus import CorpusError
from training.pinned import PinnedError, Store, git_blob_id, read_sources
from training.sources_corpus import SourcesConfig, assign_splits, build_sources_corpus, regions

pytestmark = pytest.mark.unit
REPO = "someone/gallery"
COLUMNS = ["repo", "commit", "path", "blob_sha", "bytes", "width", "height", "format", "label",
           "generator", "family", "source_group", "licence", "notes"]  # fmt: skip


def _git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def _png(seed: int, h: int, w: int) -> bytes:
    return P.encode(P.synthetic_scene(seed, h, w), "PNG")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """A repository with photos, generated images, a 2x2 grid, a screenshot with a crop box and a
    file that is not an image; a later commit changes a photo (the pin must keep the old one)."""
    root = tmp_path_factory.mktemp("gallery")
    work = root / "work"
    work.mkdir()
    _git(work, "init", "-q")
    files = {
        "photos/a.png": _png(1, 300, 420),
        "photos/b.png": _png(2, 260, 260),
        "photos/c.png": _png(3, 800, 900),
        "outputs/x.png": _png(4, 512, 512),
        "outputs/y.png": _png(5, 300, 300),
        "outputs/grid.png": _png(6, 256, 256),
        "outputs/screen.png": _png(7, 400, 600),
        "outputs/broken.jpg": b"\xff\xd8\xff\xe0 this is no JPEG",
    }
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    _git(work, "add", ".")
    _git(work, "commit", "-qm", "images")
    commit = _git(work, "rev-parse", "HEAD")
    (work / "photos/a.png").write_bytes(_png(99, 300, 420))
    _git(work, "commit", "-qam", "replace a")
    mirror = root / "mirror"
    mirror.mkdir()
    _git(root, "clone", "-q", "--bare", str(work), str(mirror / "someone+gallery" / "repo"))
    remote = root / "remote" / "someone"
    remote.mkdir(parents=True)
    _git(root, "clone", "-q", "--bare", str(work), str(remote / "gallery.git"))
    meta = {
        "photos/a.png": ("real", "camera", "camera", "photos-a", ""),
        "photos/b.png": ("real", "camera", "camera", "photos-b", ""),
        "photos/c.png": ("real", "camera", "camera", "photos-c", ""),
        "outputs/x.png": ("fake", "SD 1.5", "sd1", "out-x", ""),
        "outputs/y.png": ("fake", "FLUX.1", "flux", "out-y", ""),
        "outputs/grid.png": ("fake", "SD 1.5", "sd1", "out-grid", "grid 2x2"),
        "outputs/screen.png": ("fake", "SD 1.5", "sd1", "out-screen",
                               "UI screenshot: use only the crop box region; crop_box(es) 100,50,356,306"),
    }  # fmt: skip
    rows = []
    for name, (label, gen, fam, group, notes) in meta.items():
        data = files[name]
        rows.append({"repo": REPO, "commit": commit, "path": name, "blob_sha": git_blob_id(data),
                     "bytes": len(data), "width": "", "height": "", "format": "PNG", "label": label,
                     "generator": gen, "family": fam, "source_group": group, "licence": "MIT",
                     "notes": notes})  # fmt: skip
    broken = files["outputs/broken.jpg"]
    bad = {**rows[3], "path": "outputs/broken.jpg", "blob_sha": git_blob_id(broken),
           "source_group": "out-broken"}  # fmt: skip
    return {"root": root, "mirror": mirror, "remote": root / "remote", "rows": rows,
            "broken": bad, "files": files, "commit": commit}  # fmt: skip


def _sources(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def _manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_good_rows_extract_cut_and_record_provenance(gallery, tmp_path):
    rows = read_sources(_sources(tmp_path / "s.csv", gallery["rows"]))
    out = tmp_path / "corpus"
    logs: list[str] = []
    info = build_sources_corpus(
        rows, out, Store(gallery["mirror"]), SourcesConfig(crop=192), log=logs.append
    )
    manifest = _manifest(out)
    assert info["files"] == 7 and info["images"] == len(manifest) and not info["skipped"]
    # one repository: every row on train, and the build says so (it exited 0 in silence)
    assert {r["split"] for r in manifest} == {"train"}
    assert "warning: no val or test split: 1 repositories" in "\n".join(logs)
    by_path = {}
    for r in manifest:
        by_path.setdefault(r["src_path"], []).append(r)
        assert r["repo"] == REPO and r["commit"] == gallery["commit"] and r["licence"] == "MIT"
        assert r["pool"] == "wild" and r["source_id"] == r["source_group"]
        # never resized: each crop is the region it names, at most crop x crop
        x0, y0, x1, y1 = map(int, r["region"].split(","))
        assert (int(r["width"]), int(r["height"])) == (x1 - x0, y1 - y0)
        assert max(int(r["width"]), int(r["height"])) <= 192
    # the pinned (first) version of a.png, not the later one
    first = by_path["photos/a.png"][0]
    pixels = np.asarray(Image.open(out / first["path"]).convert("RGB"), dtype=np.float64)
    x0, y0, x1, y1 = map(int, first["region"].split(","))
    original = P.synthetic_scene(1, 300, 420)[y0:y1, x0:x1].astype(np.float64)
    assert np.abs(pixels - original).mean() < 4  # JPEG q>=70 or PNG of the same pixels
    # a 2x2 grid of 128 px tiles gives 4 images, each inside one quarter
    grid = by_path["outputs/grid.png"]
    assert len(grid) == 4 and {r["width"] for r in grid} == {"128"}
    assert {tuple(int(v) // 128 for v in r["region"].split(",")[:2]) for r in grid} == {
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    }
    # a screenshot only through its crop box
    (screen,) = by_path["outputs/screen.png"]
    x0, y0, x1, y1 = map(int, screen["region"].split(","))
    assert x0 >= 100 and x1 <= 356 and y0 >= 50 and y1 <= 306
    # a large photo gives two non-overlapping crops; the pool's labels and families
    assert len(by_path["photos/c.png"]) == 2
    assert {(r["label"], r["family"], r["generator"]) for r in manifest} == {
        ("real", "camera", "real"), ("fake", "sd1", "sd1"), ("fake", "flux", "flux")}  # fmt: skip
    # no source group on two sides of a split
    split_of = {}
    for r in manifest:
        assert split_of.setdefault(r["source_group"], r["split"]) == r["split"]
    json.loads((out / "corpus.json").read_text())
    assert (out / "summary.md").exists() and not (tmp_path / "corpus.partial").exists()


def test_the_build_is_reproducible(gallery, tmp_path):
    rows = read_sources(_sources(tmp_path / "s.csv", gallery["rows"]))
    a = build_sources_corpus(rows, tmp_path / "a", Store(gallery["mirror"]), log=lambda m: None)
    b = build_sources_corpus(rows, tmp_path / "b", Store(gallery["mirror"]), log=lambda m: None)
    assert a["manifest_sha256"] == b["manifest_sha256"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"blob_sha": "0" * 40}, "differs from the pinned"),
        ({"path": "outputs/missing.png"}, "no file at that path"),
        ({"commit": "1" * 40}, "is not in the repository"),
    ],
)
def test_a_row_not_as_pinned_stops_the_build_before_anything_is_written(
    gallery, tmp_path, change, message
):
    rows = [dict(r) for r in gallery["rows"]]
    rows[1].update(change)
    sources = read_sources(_sources(tmp_path / "s.csv", rows))
    out = tmp_path / "corpus"
    with pytest.raises(CorpusError, match=message) as err:
        build_sources_corpus(sources, out, Store(gallery["mirror"]), log=lambda m: None)
    assert "photos/b.png" in str(err.value) or "missing.png" in str(err.value)
    assert not out.exists() and not (tmp_path / "corpus.partial").exists()


def test_an_undecodable_file_stops_the_build_or_is_skipped_on_request(gallery, tmp_path):
    sources = read_sources(_sources(tmp_path / "s.csv", [*gallery["rows"], gallery["broken"]]))
    out = tmp_path / "corpus"
    with pytest.raises(
        CorpusError, match=r"1 listed files cannot be used:\n.*broken\.jpg.*corrupt"
    ):
        build_sources_corpus(sources, out, Store(gallery["mirror"]), log=lambda m: None)
    assert not out.exists() and not (tmp_path / "corpus.partial").exists()
    info = build_sources_corpus(
        sources,
        out,
        Store(gallery["mirror"]),
        SourcesConfig(skip_unusable=True),
        log=lambda m: None,
    )
    (skipped,) = info["skipped"]
    assert "broken.jpg" in skipped["where"] and "corrupt" in skipped["reason"]
    assert all(r["src_path"] != "outputs/broken.jpg" for r in _manifest(out))


def test_skipping_every_listed_file_is_refused(gallery, tmp_path):
    sources = read_sources(_sources(tmp_path / "s.csv", [gallery["broken"]]))
    out = tmp_path / "corpus"
    with pytest.raises(CorpusError, match=r"none of the 1 listed files could be used.*broken"):
        build_sources_corpus(
            sources, out, Store(gallery["mirror"]), SourcesConfig(skip_unusable=True),
            log=lambda m: None,
        )  # fmt: skip
    assert not out.exists() and not (tmp_path / "corpus.partial").exists()


def test_a_grid_that_does_not_fit_is_unusable(gallery, tmp_path):
    rows = [dict(r) for r in gallery["rows"]]
    rows[4]["notes"] = (
        "multi-image figure (grid/strip): tile via crop boxes; crop_box(es) 0,0,900,900"
    )
    sources = read_sources(_sources(tmp_path / "s.csv", rows))
    with pytest.raises(CorpusError, match="outside the 300x300 image"):
        build_sources_corpus(sources, tmp_path / "c", Store(gallery["mirror"]), log=lambda m: None)


def test_without_a_mirror_the_pinned_commit_is_cloned(gallery, tmp_path):
    rows = read_sources(_sources(tmp_path / "s.csv", gallery["rows"]))
    store = Store(None, tmp_path / "cache", url_base=str(gallery["remote"]) + "/")
    a = build_sources_corpus(rows, tmp_path / "a", store, log=lambda m: None)
    b = build_sources_corpus(rows, tmp_path / "b", Store(gallery["mirror"]), log=lambda m: None)
    assert a["manifest_sha256"] == b["manifest_sha256"]
    offline = Store(None, tmp_path / "cache2", url_base=str(tmp_path / "nowhere") + "/")
    with pytest.raises(CorpusError, match=r"cannot fetch commit .* Pass --mirror"):
        build_sources_corpus(rows, tmp_path / "c", offline, log=lambda m: None)


def test_a_mirror_folder_without_the_repository_is_named(gallery, tmp_path):
    rows = read_sources(_sources(tmp_path / "s.csv", gallery["rows"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no git mirror at .*someone\+gallery"):
        build_sources_corpus(rows, tmp_path / "c", Store(tmp_path / "empty"), log=lambda m: None)
    with pytest.raises(PinnedError, match="does not exist"):
        Store(tmp_path / "absent")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(PinnedError, match="is a file, not a folder"):
        Store(tmp_path / "a-file")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": "maybe"}, "is not real or fake"),
        ({"blob_sha": "xyz"}, "is not a 40-digit git object id"),
        ({"repo": "no-slash"}, "is not owner/name"),
        ({"path": "../etc/passwd"}, "not a path inside the repository"),
        ({"path": "a\nb.png"}, "holds a control character"),
        ({"source_group": ""}, "needs a family and a source_group"),
        # they name the corpus's files: ../../x wrote outside --out
        ({"source_group": "../../../escaped"}, "source_group '../../../escaped' is not a plain"),
        ({"family": "a/b"}, "family 'a/b' is not a plain name"),
        ({"path": "./a.png"}, "not a path inside the repository"),  # git: a fatal error
        ({"path": "dir//a.png"}, "not a path inside the repository"),
    ],
)
def test_a_bad_sources_list_is_refused_with_its_line(gallery, tmp_path, change, message):
    rows = [dict(r) for r in gallery["rows"]]
    rows[2].update(change)
    with pytest.raises(PinnedError, match=f"line 4: .*{message}"):
        read_sources(_sources(tmp_path / "s.csv", rows))


def test_ragged_rows_and_line_numbers_as_an_editor_shows_them(gallery, tmp_path):
    """A row with an unquoted comma had its notes cut (a grid's tile size lost, the file cut
    in equal parts); lines were counted as rows (off after a blank line or a multi-line
    field)."""
    good = _sources(tmp_path / "s.csv", gallery["rows"]).read_text().splitlines()
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("\n".join([*good, good[1] + ",grid 3x2 (128px tiles, 2px padding)"]) + "\n")
    with pytest.raises(PinnedError, match=f"line {len(good) + 1}: more fields than the header"):
        read_sources(ragged)
    spaced = tmp_path / "spaced.csv"
    bad = good[2].replace(",real,", ",maybe,").replace(",fake,", ",maybe,")
    spaced.write_text("\n".join([good[0], good[1], "", "", bad]) + "\n")
    with pytest.raises(PinnedError, match="line 5: label 'maybe'"):
        read_sources(spaced)


def test_the_cli_reports_a_bad_list_in_one_line(gallery, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("repo,commit\nx,y\n")
    done = subprocess.run(
        [sys.executable, "-m", "detector.cli", "corpus", "sources", "--sources", str(bad),
         "--mirror", str(gallery["mirror"]), "--out", str(tmp_path / "c")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "missing columns" in done.stderr
    assert "Traceback" not in done.stderr


def test_regions_read_every_layout_the_list_uses():
    assert regions("grid 2x1 (512px tiles, 2px padding, CompVis make_grid)", 516, 1030) == [
        ("grid 0,0", (2, 2, 514, 514)), ("grid 1,0", (2, 516, 514, 1028))]  # fmt: skip
    assert [b for _, b in regions("grid 2x4 (256px tiles, no padding)", 1024, 512)][-1] == (
        768,
        256,
        1024,
        512,
    )
    assert len(regions("grid 2x2; in wild-train; crop_box(es) 1,1,5,5", 1024, 1024)) == 4
    mixed = "mixed grid: row 0 = 3 tiles 512x512 (x0=0,512,1024; y0=0); rows 1-2 = 6 tiles 256x256 (y0=512,768)"
    boxes = [b for _, b in regions(mixed, 1536, 1024)]
    assert boxes[:3] == [(0, 0, 512, 512), (512, 0, 1024, 512), (1024, 0, 1536, 512)]
    assert len(boxes) == 15 and boxes[-1] == (1280, 768, 1536, 1024)
    assert regions("in wild-train; crop_box(es) 90,27,410,347", 500, 375) == [
        ("whole", (0, 0, 500, 375))
    ]
    with pytest.raises(ValueError, match="needs crop boxes"):
        regions("UI screenshot", 100, 100)
    for empty in ("grid 1x0", "grid 0x3"):  # (a ZeroDivisionError traceback)
        with pytest.raises(ValueError, match="at least one row and column"):
            regions(empty, 100, 100)


def test_splits_keep_groups_and_repositories_on_one_side():
    from training.pinned import SourceRow

    def row(repo, group, label="fake", family="sd1", i=0):
        return SourceRow(
            repo,
            "a" * 40,
            f"{group}/{i}.png",
            f"{i:040x}",
            label=label,
            family=family,
            source_group=group,
        )

    rows = [row("o/r1", "g1", i=i) for i in range(50)] + [
        row("o/r1", "g2", i=100 + i) for i in range(5)
    ]
    rows += [row(f"o/s{k}", f"h{k}", i=200 + 10 * k + i) for k in range(6) for i in range(10)]
    rows += [row("o/p", "p", "real", "camera", i=400 + i) for i in range(30)]
    split, unit = assign_splits(rows, (0.7, 0.15, 0.15))
    assert unit["g1"] == unit["g2"] and split["g1"] == split["g2"]  # one repository, one side
    assert split["g1"] == "train"  # the largest unit of each family trains
    assert {split[f"h{k}"] for k in range(6)} >= {"val", "test"}


def test_twins_remake_real_crops_in_their_split_and_group(gallery, tmp_path):
    from training.generators import GENERATORS

    if GENERATORS.get("span_x2").availability():
        pytest.skip(GENERATORS.get("span_x2").availability())
    rows = read_sources(_sources(tmp_path / "s.csv", gallery["rows"]))
    out = tmp_path / "corpus"
    config = SourcesConfig(crop=192, twins=("span_x2",))
    info = build_sources_corpus(
        rows, out, Store(gallery["mirror"]), config, log=lambda m: None, cache=tmp_path / "cache"
    )
    manifest = _manifest(out)
    by_path = {r["path"]: r for r in manifest}
    twins = [r for r in manifest if r["generator"] == "span_x2"]
    reals = [r for r in manifest if r["label"] == "real"]
    assert len(twins) == len(reals) > 0
    for twin in twins:
        real = by_path[twin["pair"]]
        assert real["label"] == "real" and twin["label"] == "fake" and twin["family"] == "sr-span"
        assert (twin["split"], twin["source_id"], twin["region"]) == (
            real["split"],
            real["source_id"],
            real["region"],
        )
        assert (twin["width"], twin["height"]) == (real["width"], real["height"])
    assert 25 < info["twins_psnr_db"]["span_x2"] < 60
    half = build_sources_corpus(rows, tmp_path / "half", Store(gallery["mirror"]),
                                SourcesConfig(crop=192, twins=("span_x2",), twin_share=0.5),
                                log=lambda m: None, cache=tmp_path / "cache")  # fmt: skip
    assert 0 < sum(r["generator"] == "span_x2" for r in _manifest(tmp_path / "half")) < len(twins)
    del half
    with pytest.raises(CorpusError, match="not aligned"):
        build_sources_corpus(rows, tmp_path / "x", Store(gallery["mirror"]),
                             SourcesConfig(twins=("dcgan_faces",)), log=lambda m: None)  # fmt: skip
    # an autoencoder the project trains: prepared on no data, its fakes were noise (10.8 dB)
    with pytest.raises(CorpusError, match="'ae_bilinear' is trained by corpus build"):
        build_sources_corpus(rows, tmp_path / "x", Store(gallery["mirror"]),
                             SourcesConfig(twins=("ae_bilinear",)), log=lambda m: None)  # fmt: skip
    assert not (tmp_path / "x").exists()
