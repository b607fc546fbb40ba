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


def _link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def test_a_real_fake_split_spreads_flat_files_and_keeps_subfolders_whole(tmp_path):
    """Every file directly in real/ had source group "real" and each generator was one group:
    the hashed validation split took all of a class or none ("the validation split has no
    camera images"). A flat file is now its own group; a subfolder stays one."""
    from training.train import split_samples

    for i in range(100):
        _img(tmp_path / "real" / f"r{i}.png")
        _img(tmp_path / "fake" / "sd" / f"s{i}.png")
        _img(tmp_path / "fake" / "mj" / f"m{i}.png")
    for g in range(30):
        for i in range(3):
            _img(tmp_path / "real" / f"album{g}" / f"a{i}.png")
    samples = load_samples(tmp_path)
    flat = [s for s in samples if s.path.parent.name in ("real", "sd", "mj")]
    assert {s.source_id for s in flat} == {""}
    nested = {s.source_id for s in samples if s not in flat}
    assert nested == {f"real/album{g}" for g in range(30)}
    train, val, _ = split_samples(samples, ())
    for group in ("real", "sd", "mj"):  # each class and generator on both sides
        assert any(s.path.parent.name == group for s in train)
        assert any(s.path.parent.name == group for s in val)
    assert not {s.source_id for s in train if s.source_id} & {s.source_id for s in val}
    assert split_samples(load_samples(tmp_path), ())[1] == val  # the same split every time


def test_a_small_split_less_folder_has_both_classes_in_validation_however_it_is_written(
    tmp_path, monkeypatch
):
    """20 reals and 3 x 5 fakes: the 10% hash gave validation 1 real and no fake ("the
    validation split has no generated images"), and the split hashed the path as written,
    so data=./x and data=/abs/x validated on other images."""
    from training.train import split_samples

    for i in range(20):
        _img(tmp_path / "d" / "real" / f"r{i}.png")
    for gen in ("a", "b", "c"):
        for i in range(5):
            _img(tmp_path / "d" / "fake" / gen / f"{gen}{i}.png")
    train, val, _ = split_samples(load_samples(tmp_path / "d"), ())
    assert {s.label for s in val} == {0, 1} and len(train) + len(val) == 35
    monkeypatch.chdir(tmp_path)
    for spelt in ("d", "./d", "d/../d", str(tmp_path / "d")):
        again = split_samples(load_samples(Path(spelt)), ())[1]
        assert sorted(s.path.resolve() for s in again) == sorted(s.path.resolve() for s in val)


def test_cnndetection_dataset_folder_reads_each_split(tmp_path, monkeypatch):
    """dataset/{train,val,test}/...: the split folders were read as generators "train"/"val",
    all in split test (and test/<generator>/<category>/ was refused)."""
    root = tmp_path / "dataset"
    for split in ("train", "val"):
        for cat in ("airplane", "cat"):
            _img(root / split / cat / "0_real" / "r.png")
            _img(root / split / cat / "1_fake" / "f.png")
    _img(root / "test" / "stylegan" / "car" / "0_real" / "r.png")
    _img(root / "test" / "stylegan" / "car" / "1_fake" / "f.png")
    _img(root / "test" / "biggan" / "0_real" / "r.png")
    _img(root / "test" / "biggan" / "1_fake" / "f.png")
    fakes = {(s.split, s.generator, s.source_id) for s in load_samples(root) if s.label}
    assert fakes == {
        ("train", "airplane", "airplane"),
        ("train", "cat", "cat"),
        ("val", "airplane", "airplane"),
        ("val", "cat", "cat"),
        ("test", "stylegan", "stylegan/car"),
        ("test", "biggan", "biggan"),
    }
    assert {s.split for s in load_samples(root / "val")} == {"val"}
    _img(root / "notes" / "x.png")
    with pytest.raises(DatasetError, match=r"dataset: notes/ beside the split folders"):
        load_samples(root)


@pytest.mark.parametrize(
    "cwd,spelling", [("train", "."), ("train/airplane", ".."), ("train/airplane", "../../train")]
)
def test_the_forensynths_split_does_not_depend_on_how_the_path_is_written(
    tmp_path, monkeypatch, cwd, spelling
):
    """`--data .` in a train/ folder gave split test (Path(".").name is "")."""
    for cat in ("airplane", "cat"):
        _img(tmp_path / "train" / cat / "0_real" / "r.png")
        _img(tmp_path / "train" / cat / "1_fake" / "f.png")
    monkeypatch.chdir(tmp_path / cwd)
    assert {s.split for s in load_samples(spelling)} == {"train"}


def test_layout_folder_names_match_in_any_case(tmp_path):
    """mj/val/Nature/ was dropped silently (its reals gone); 0_Real/ and Real/ were refused."""
    gi = tmp_path / "gi"
    _img(gi / "mj" / "Val" / "Nature" / "r.JPEG", "JPEG")
    _img(gi / "mj" / "Val" / "AI" / "f.png")
    _img(gi / "sd" / "train" / "nature" / "r.png")
    _img(gi / "sd" / "train" / "ai" / "f.png")
    assert sorted((s.generator, s.label, s.split) for s in load_samples(gi)) == [
        ("mj", 1, "val"),
        ("real", 0, "train"),
        ("real", 0, "val"),
        ("sd", 1, "train"),
    ]
    fs = tmp_path / "fs"
    _img(fs / "biggan" / "0_Real" / "r.png")
    _img(fs / "biggan" / "1_FAKE" / "f.png")
    _img(fs / "progan" / "cat" / "0_real" / "r.png")
    _img(fs / "progan" / "cat" / "1_fake" / "f.png")
    assert len(load_samples(fs)) == 4
    rf = tmp_path / "rf"
    _img(rf / "Real" / "r.png")
    _img(rf / "FAKE" / "sd" / "f.png")
    assert sorted((s.label, s.generator) for s in load_samples(rf)) == [(0, "real"), (1, "sd")]
    cnnd = tmp_path / "cnnd"
    _img(cnnd / "Train" / "cat" / "0_real" / "r.png")
    _img(cnnd / "Train" / "cat" / "1_fake" / "f.png")
    assert {s.split for s in load_samples(cnnd)} == {"train"}


def _mixed(p: Path) -> None:  # GenImage and ForenSynths generators side by side
    _img(p / "sd" / "val" / "ai" / "f.png")
    _img(p / "sd" / "val" / "nature" / "r.png")
    _img(p / "progan" / "0_real" / "r.png")
    _img(p / "progan" / "1_fake" / "f.png")


def _flat_and_categories(p: Path) -> None:  # a generator with both
    _img(p / "progan" / "0_real" / "r.png")
    _img(p / "progan" / "1_fake" / "f.png")
    _img(p / "progan" / "extra" / "0_real" / "r.png")
    _img(p / "progan" / "extra" / "1_fake" / "f.png")


def _one_class_category(p: Path) -> None:
    _img(p / "stylegan" / "car" / "0_real" / "r.png")
    _img(p / "stylegan" / "car" / "1_fake" / "f.png")
    _img(p / "stylegan" / "cat" / "0_real" / "r.png")


@pytest.mark.parametrize(
    "setup,message",
    [
        (_mixed, r"mixes dataset layouts: progan/ \(ForenSynths\), sd/ \(GenImage\)"),
        (
            lambda p: _mixed(p) or _img(p / "real" / "r.png") or _img(p / "fake" / "f.png"),
            "progan/, sd/ beside real/ and fake/ would be left out",
        ),
        (_flat_and_categories, "progan: extra/ beside 0_real/ and 1_fake/ would be left out"),
        (_one_class_category, r"stylegan/cat: has only 0_real/"),
        (
            lambda p: _one_class_category(p) or _img(p / "stylegan" / "car" / "notes" / "n.png"),
            "stylegan/car: notes/ beside 0_real/ and 1_fake/",
        ),
        (
            lambda p: (
                _img(p / "mj" / "val" / "ai" / "f.png") or _img(p / "sd" / "val" / "ai" / "f.png")
            ),
            r"mj/val: has only ai/",
        ),
        (
            lambda p: _mixed(p) or _img(p / "wukong" / "test" / "ai" / "f.png"),
            r"mixes dataset layouts: .* wukong/ \(neither\)",
        ),
        (
            lambda p: (
                _img(p / "sd" / "val" / "ai" / "f.png")
                or _img(p / "sd" / "val" / "nature" / "r.png")
                or _img(p / "sd" / "test" / "ai" / "f.png")
            ),
            r"sd: test/ would be left out; expected train/ and/or val/",
        ),
        (
            lambda p: (
                _img(p / "real" / "r.png")
                or _img(p / "Real" / "s.png")
                or _img(p / "fake" / "f.png")
            ),
            r"Real/, real/ differ only in case",
        ),
    ],
)
def test_data_a_layout_would_leave_out_is_refused_by_name(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message) as info:
        load_samples(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_the_same_file_twice_in_a_folder_layout_is_refused_naming_both(tmp_path):
    """A file symlink, a hard link, fake/oops -> ../real and two generators' 0_real/ linked to one
    folder were all counted twice (reals as fakes too), where a manifest refuses a row listed
    twice."""
    rf = tmp_path / "rf"
    _img(rf / "real" / "r0.png")
    _img(rf / "fake" / "sd" / "f0.png")
    _link(rf / "real" / "r0_copy.png", Path("r0.png"))
    with pytest.raises(DatasetError, match=r"real/r0_copy.png is the same file as .*real/r0.png"):
        load_samples(rf)
    (rf / "real" / "r0_copy.png").unlink()
    (rf / "fake" / "sd" / "hard.png").hardlink_to(rf / "real" / "r0.png")
    with pytest.raises(DatasetError, match=r"sd/hard.png is the same file as .*real/r0.png"):
        load_samples(rf)
    (rf / "fake" / "sd" / "hard.png").unlink()
    _link(rf / "fake" / "oops", Path("../real"))
    with pytest.raises(DatasetError, match=r"fake/oops links to .*real \(read as real\)"):
        load_samples(rf)
    fs = tmp_path / "fs"
    _img(tmp_path / "shared" / "r.png")
    for gen in ("progan", "stylegan"):
        _link(fs / gen / "0_real", tmp_path / "shared")
        _img(fs / gen / "1_fake" / "f.png")
    with pytest.raises(DatasetError, match=r"stylegan/0_real/r.png is the same file as .*progan"):
        load_samples(fs)


def test_a_link_to_another_generator_does_not_take_its_images(tmp_path):
    """fake/a/also_b -> ../b: os.walk went down a/ first, so b's images were labelled a and b
    disappeared."""
    _img(tmp_path / "real" / "r.png")
    _img(tmp_path / "fake" / "a" / "f.png")
    _img(tmp_path / "fake" / "b" / "g.png")
    _link(tmp_path / "fake" / "a" / "also_b", Path("../b"))
    fakes = sorted((s.generator, s.path.name) for s in load_samples(tmp_path) if s.label)
    assert fakes == [("a", "f.png"), ("b", "g.png")]


def test_links_reaching_one_outside_folder_twice_are_refused_and_a_loop_ends(tmp_path):
    root = tmp_path / "data"
    _img(root / "real" / "r.png")
    _img(tmp_path / "elsewhere" / "g.png")
    _link(tmp_path / "elsewhere" / "loop", tmp_path / "elsewhere")
    _link(root / "fake" / "sd", tmp_path / "elsewhere")
    assert len(load_samples(root)) == 2
    _link(root / "fake" / "sd2", tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"fake/sd2 and .*fake/sd are the same folder"):
        load_samples(root)


def test_hidden_files_and_folders_are_skipped(tmp_path):
    """macOS's real/._r0.JPG and real/.hidden.png were counted (evaluate then aborted: "not a
    recognized image"); an empty .ipynb_checkpoints/ beside generators was refused."""
    rf = tmp_path / "rf"
    _img(rf / "real" / "r0.JPG", "JPEG")
    (rf / "real" / "._r0.JPG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    _img(rf / "real" / ".hidden.png")
    _img(rf / "real" / ".thumbs" / "t.png")
    _img(rf / "fake" / "sd" / "f.png")
    _img(rf / "__MACOSX" / "fake" / "sd" / "._f.png")
    assert sorted(s.path.name for s in load_samples(rf)) == ["f.png", "r0.JPG"]
    fs = tmp_path / "fs"
    _img(fs / "progan" / "0_real" / "r.png")
    _img(fs / "progan" / "1_fake" / "f.png")
    (fs / ".ipynb_checkpoints").mkdir()
    (fs / "progan" / ".DS_Store").write_bytes(b"")
    assert len(load_samples(fs)) == 2


def test_phone_formats_the_decoder_reads_are_dataset_images(tmp_path):
    from detector.image import SUPPORTED_FORMATS

    names = {"HEIF": ["p.heic", "p.heif"], "AVIF": ["p.avif"]}
    phone = [n for fmt in SUPPORTED_FORMATS for n in names.get(fmt, [])]
    if not phone:
        pytest.skip("this installation decodes neither HEIF nor AVIF")
    for name in phone:
        _img(tmp_path / "real" / name, "AVIF" if name.endswith(".avif") else "HEIF")
    _img(tmp_path / "fake" / "f.png")
    reals = [s.path for s in load_samples(tmp_path) if s.label == 0]
    assert sorted(p.name for p in reals) == sorted(phone)
    assert all(read_pixels(p).shape == (8, 8, 3) for p in reals)


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_gap(tmp_path, monkeypatch):
    import os

    _img(tmp_path / "real" / "r.png")
    _img(tmp_path / "fake" / "g" / "f.png")
    _img(tmp_path / "fake" / "locked" / "x.png")
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DatasetError, match=r"fake/locked: cannot list folder \(Permission denied"):
        load_samples(tmp_path)


def test_genimage_as_downloaded_with_its_release_folder(tmp_path):
    """The published GenImage nests one folder more (BigGAN/imagenet_ai_0419_biggan/train/ai):
    it was 'no dataset layout recognised'. The generator is named by the outer folder."""
    for gen, release in (("BigGAN", "imagenet_ai_0419_biggan"), ("ADM", "imagenet_ai_0508_adm")):
        for split in ("train", "val"):
            for cls in ("ai", "nature"):
                for i in range(2):
                    _img(tmp_path / gen / release / split / cls / f"{cls}{i}.png")
    samples = load_samples(tmp_path)
    assert len(samples) == 16
    assert {(s.generator, s.split) for s in samples if s.label} == {
        (g, sp) for g in ("BigGAN", "ADM") for sp in ("train", "val")
    }
    assert {s.generator for s in samples if not s.label} == {"real"}
