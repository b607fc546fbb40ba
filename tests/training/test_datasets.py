"""Each dataset reader on a small tree the test writes, and clear errors on bad layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.image import ImageError
from training.datasets import DatasetError, load_samples, read_manifest, read_pixels, worker_message

pytestmark = pytest.mark.unit


def _img(path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path, fmt)


def test_forensynths_with_and_without_categories(tmp_path):
    root = tmp_path / "test"
    for cat in ("airplane", "cat"):
        _img(root / "progan" / cat / "0_real" / f"{cat}1.png")
        _img(root / "progan" / cat / "1_fake" / f"{cat}2.png")
    _img(root / "stylegan" / "0_real" / "a.png")
    _img(root / "stylegan" / "1_fake" / "b.jpg", "JPEG")
    samples = load_samples(root)
    assert len(samples) == 6
    fakes = sorted((s.generator, s.source_id) for s in samples if s.label == 1)
    assert fakes == [
        ("progan", "progan/airplane"),
        ("progan", "progan/cat"),
        ("stylegan", "stylegan"),
    ]
    assert {s.split for s in samples} == {"test"}
    assert all(s.generator == "real" for s in samples if s.label == 0)


def test_genimage(tmp_path):
    for split in ("train", "val"):
        _img(tmp_path / "sdv1.4" / split / "ai" / "x.png")
        _img(tmp_path / "sdv1.4" / split / "nature" / "y.JPEG", "JPEG")
    samples = load_samples(tmp_path)
    assert sorted((s.split, s.label) for s in samples) == [
        ("train", 0),
        ("train", 1),
        ("val", 0),
        ("val", 1),
    ]
    assert {s.generator for s in samples if s.label} == {"sdv1.4"}


def test_real_fake_folders(tmp_path):
    _img(tmp_path / "real" / "a.png")
    _img(tmp_path / "real" / "sub" / "b.png")
    _img(tmp_path / "fake" / "midjourney" / "c.png")
    _img(tmp_path / "fake" / "d.png")
    samples = load_samples(tmp_path)
    assert sorted((s.label, s.generator) for s in samples) == [
        (0, "real"),
        (0, "real"),
        (1, "midjourney"),
        (1, "unknown"),
    ]


def test_symlinked_generator_folders_are_read_and_folders_named_like_images_are_not(tmp_path):
    """rglob did not follow ``fake/<gen> -> elsewhere`` (its images were silently left out)
    and took a folder ``weird.png/`` for an image."""
    root = tmp_path / "data"
    _img(root / "real" / "a.png")
    _img(tmp_path / "elsewhere" / "sdxl" / "b.png")
    (root / "fake").mkdir()
    (root / "fake" / "sdxl").symlink_to(tmp_path / "elsewhere" / "sdxl")
    (root / "fake" / "sdxl" / "loop").symlink_to(root / "fake")  # a loop ends
    (root / "fake" / "weird.png").mkdir()
    (root / "fake" / "gone.png").symlink_to(tmp_path / "missing.png")  # broken: not a file
    samples = load_samples(root)
    assert sorted((s.label, s.generator, s.path.name) for s in samples) == [
        (0, "real", "a.png"),
        (1, "sdxl", "b.png"),
    ]


@pytest.mark.parametrize("alias", ["a", "zz"])
def test_a_folder_reached_twice_keeps_its_own_name(tmp_path, alias):
    """fake/sdxl and a link fake/<alias> -> sdxl: the images were labelled with whichever name
    the file system listed first; the real folder's name wins, before or after the link's."""
    _img(tmp_path / "real" / "r.png")
    _img(tmp_path / "fake" / "sdxl" / "x.png")
    (tmp_path / "fake" / alias).symlink_to(tmp_path / "fake" / "sdxl")
    fakes = [(s.generator, s.path.name) for s in load_samples(tmp_path) if s.label == 1]
    assert fakes == [("sdxl", "x.png")]


def test_manifest_csv_and_jsonl(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "manifest.csv").write_text(
        "path,label,generator,split\na.png,real,real,train\nb.png,fake,x,test\n"
    )
    samples = load_samples(tmp_path)
    assert [(s.path.name, s.label, s.split) for s in samples] == [
        ("a.png", 0, "train"),
        ("b.png", 1, "test"),
    ]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.png", "label": 0}\n{"path": "b.png", "label": 1}\n')
    assert [s.label for s in read_manifest(jsonl)] == [0, 1]
    # a spreadsheet's CSV starts with a byte-order mark ("manifest lacks columns ['path']")
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "manifest.csv").read_bytes())
    assert [s.path.name for s in read_manifest(bom)] == ["a.png", "b.png"]


def test_the_same_file_by_another_spelling_is_a_duplicate(tmp_path):
    _img(tmp_path / "img" / "a.png")
    _img(tmp_path / "img" / "b.png")
    for other in ("img/../img/a.png", str(tmp_path / "img" / "a.png")):
        (tmp_path / "manifest.csv").write_text(
            f"path,label\nimg/a.png,real\nimg/b.png,fake\n{other},real\n"
        )
        with pytest.raises(DatasetError, match=r"row 4: .*a.png is listed already \(row 2\)"):
            load_samples(tmp_path)


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: None, "no dataset layout recognised"),
        (lambda p: _img(p / "x" / "y.png"), "no dataset layout recognised"),
        (lambda p: (p / "real").mkdir() or (p / "fake").mkdir(), "no image files"),
        (lambda p: _img(p / "real" / "a.png") or (p / "fake").mkdir(), "no generated images"),
        (lambda p: (p / "manifest.csv").write_text("file,kind\n"), "manifest has no rows"),
        (lambda p: (p / "manifest.csv").write_text("file,kind\na,b\n"), "lacks columns"),
        (
            lambda p: (p / "manifest.csv").write_text("path,label\na.png,maybe\n"),
            "row 2: label 'maybe'",
        ),
        (
            lambda p: (p / "manifest.jsonl").write_text(
                '{"path": "a.png", "label": 0}\n{"path": "b.png"}\n'
            ),
            r"row 2: lacks \['label'\]",
        ),
        (
            lambda p: (p / "manifest.jsonl").write_text('{"path": "a.png", "label": 0}\n[1, 2]\n'),
            "row 2: not an object with path and label",
        ),
        (
            lambda p: (p / "manifest.csv").write_text("path,label\na.png,0\nb.png,1\na.png,0\n"),
            r"row 4: a.png is listed already \(row 2\)",
        ),
        (
            lambda p: (
                _img(p / "g" / "0_real" / "a.png")
                or _img(p / "g" / "1_fake" / "b.png")
                or (p / "h" / "0_real").mkdir(parents=True)
            ),
            "expected 0_real/ and 1_fake/",
        ),
    ],
)
def test_bad_layouts_name_the_path_and_the_expectation(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message) as info:
        load_samples(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_samples(tmp_path / "nope")


def test_read_pixels_decodes_and_names_an_unreadable_file(tmp_path):
    _img(tmp_path / "ok.png")
    assert read_pixels(tmp_path / "ok.png").shape == (8, 8, 3)
    bad = tmp_path / "deep" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(ImageError, match=r"deep/bad\.jpg: .*JPEG"):
        read_pixels(bad)
    with pytest.raises(ImageError, match=r"missing\.png: no such file"):
        read_pixels(tmp_path / "missing.png")


def test_worker_message_is_the_errors_own_words():
    import torch.utils.data as tud

    class Broken(tud.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int):
            raise ImageError("x.png: corrupt or truncated image data")

    with pytest.raises(ImageError) as err:
        next(iter(tud.DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(err.value)  # what torch makes of it
    assert worker_message(err.value) == "x.png: corrupt or truncated image data"
    assert worker_message(ValueError("plain")) == "plain"


def test_forensynths_pairs_each_generator_with_its_own_reals(tmp_path):
    for gen in ("progan", "stylegan"):
        _img(tmp_path / gen / "0_real" / "r.png")
        _img(tmp_path / gen / "1_fake" / "f.png")
    pools = {(s.generator, s.label, s.pool) for s in load_samples(tmp_path)}
    assert pools == {("real", 0, "progan"), ("progan", 1, "progan"),
                     ("real", 0, "stylegan"), ("stylegan", 1, "stylegan")}  # fmt: skip
