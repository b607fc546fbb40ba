"""Readers for the dataset layouts researchers use, all producing the same ``Sample`` records.

- our manifest (``manifest.csv`` or ``.jsonl``: path, label, generator, family, source_id,
  split, ...), as written by ``synthdetect corpus build``;
- ForenSynths / CNNDetection: ``root/<generator>/[<category>/]{0_real,1_fake}/``, also
  CNNDetection's whole ``dataset/{train,val,test}/...`` (each folder its split);
- GenImage: ``root/<generator>/{train,val}/{ai,nature}/``;
- a plain pair of folders: ``root/real/`` and ``root/fake/`` (``fake/<generator>/`` optional).

``load_samples(path)`` detects the layout. A path that matches none gets a ``DatasetError``
naming the path and the layouts it was checked against. The layouts' folder names are matched
in any case (``Nature/``, ``0_Real/``); hidden names (``.ipynb_checkpoints/``, ``._x.jpg``,
``__MACOSX/``) are skipped. Nothing is left out unnoticed: a folder a layout does not read (a
second layout beside the first, a category beside ``0_real/``), a generator or category with
one class, and the same file reached twice (a symlink, a hard link) are refused, naming them.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.image import DecodeLimits, ImageError, decode_file, file_identity
from detector.scan import IMAGE_EXTENSIONS, is_hidden

__all__ = [
    "SPLITS",
    "DatasetError",
    "Sample",
    "data_digest",
    "file_key",
    "load_samples",
    "no_images_in_split",
    "read_forensynths",
    "read_genimage",
    "read_manifest",
    "read_pixels",
    "read_real_fake",
    "worker_message",
]

_LAYOUTS = (
    "a manifest (manifest.csv / .jsonl, or a directory containing manifest.csv); "
    "ForenSynths root/[{train,val,test}/]<generator>/[<category>/]{0_real,1_fake}/; "
    "GenImage root/<generator>/{train,val}/{ai,nature}/; "
    "or root/real/ + root/fake/"
)
_SPLIT_DIRS = ("train", "val", "test")  # CNNDetection's split folders
_FS_CLASSES = ("0_real", "1_fake")
_WHAT = {0: "real", 1: "generated"}
_LABELS = {"real": 0, "0": 0, "camera": 0, "fake": 1, "1": 1, "generated": 1}
# A manifest's splits: trained on, validated (model choice, calibration), tested; the held-out
# ones are scored only (photos and generators no split trains on).
SPLITS = ("train", "val", "test", "heldout-real", "heldout-generators")


def file_key(path: str | os.PathLike[str]) -> object:
    """What a path names, whatever its spelling (``img/../x.png``, absolute, a symlink): the
    file's (device, inode), else the normalised absolute path (a file not there)."""
    return file_identity(path) or os.path.abspath(path)


def data_digest(path: str | Path, samples: list[Sample]) -> str:
    """What a run was trained on, to refuse resuming it on other data: the sha256 of the
    manifest (a file, or the one a folder holds), else of the listing of a folder layout's
    images (path, label, generator, family, source group, split)."""
    import hashlib

    from training.debian import sha256_file

    path = Path(path)
    for manifest in (path, path / "manifest.csv", path / "manifest.jsonl"):
        if manifest.is_file():
            return sha256_file(manifest)
    listing = "\n".join(
        f"{s.path}\t{s.label}\t{s.generator}\t{s.family}\t{s.source_id}\t{s.split}"
        for s in sorted(samples, key=lambda s: str(s.path))
    )
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()


class DatasetError(ValueError):
    """The path is not a dataset in a layout we read; the message names what was expected."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 real, 1 generated
    generator: str  # "real" for real images
    family: str = ""
    source_id: str = ""
    split: str = ""
    pool: str = ""


def read_pixels(path: str | Path, limits: DecodeLimits | None = None) -> np.ndarray:
    """A dataset image's RGB pixels (EXIF orientation applied) through detector's decoder; an
    unreadable file's error names it, so one bad file among thousands can be found."""
    try:
        return decode_file(path, limits or DecodeLimits()).pixels
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def worker_message(exc: BaseException) -> str:
    """An error's own message, also when a DataLoader worker raised it: torch re-raises it in
    the main process with the worker's whole traceback as its text."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name = type(exc).__name__
    return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last


def no_images_in_split(data: str | Path, split: str, samples: list[Sample]) -> ValueError:
    """The error for a ``--split`` that selects nothing, naming the splits the data have."""
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.split or "(none)"] = counts.get(s.split or "(none)", 0) + 1
    have = ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "no images"
    hint = "; --split all scores every image" if counts else ""
    return ValueError(f"{data}: no images in split {split!r} (its splits: {have}){hint}")


def load_samples(path: str | Path) -> list[Sample]:
    """The samples of the dataset at ``path``, whatever its layout (the module's docstring)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.is_file():
        return read_manifest(path)
    if (path / "manifest.csv").is_file():
        return read_manifest(path / "manifest.csv")
    if (path / "manifest.jsonl").is_file():
        return read_manifest(path / "manifest.jsonl")
    if _child(path, "real") and _child(path, "fake"):
        return read_real_fake(path)
    children = _subdirs(path)
    if any(c.name.lower() in _SPLIT_DIRS for c in children):  # CNNDetection's dataset/
        return read_forensynths(path)
    kinds = {c: _kind(c) for c in children}
    found = set(kinds.values()) - {""}
    if len(found) > 1:  # one reader would take its own and leave the rest out unnoticed
        listing = ", ".join(f"{c.name}/ ({kind or 'neither'})" for c, kind in kinds.items())
        raise DatasetError(f"{path}: mixes dataset layouts: {listing}; expected one of {_LAYOUTS}")
    if found == {"GenImage"}:
        return read_genimage(path)
    if found == {"ForenSynths"}:
        return read_forensynths(path)
    raise DatasetError(f"{path}: no dataset layout recognised; expected {_LAYOUTS}")


def read_manifest(path: Path) -> list[Sample]:
    """Our manifest (CSV or JSONL); relative paths are relative to the manifest's folder."""
    path = Path(path)
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
        else:
            # utf-8-sig: a spreadsheet's CSV starts with a byte-order mark, which otherwise
            # becomes part of the first column's name ("manifest lacks columns ['path']")
            with open(path, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read manifest ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: manifest has no rows")
    first = 1 if path.suffix == ".jsonl" else 2  # a CSV's line 1 is its header
    for n, row in enumerate(rows, first):  # every JSONL row stands alone: check each
        if not isinstance(row, dict):
            raise DatasetError(f"{path} row {n}: not an object with path and label")
        missing = {"path", "label"} - set(row)
        if missing:
            raise DatasetError(
                f"{path} row {n}: lacks {sorted(missing)}; expected {_LAYOUTS}"
                if n > first
                else f"{path}: manifest lacks columns {sorted(missing)}; expected {_LAYOUTS}"
            )
    samples = []
    seen: dict[object, int] = {}
    for n, row in enumerate(rows, first):
        file = path.parent / str(row["path"])
        where = seen.setdefault(file_key(file), n)  # the same file by another spelling too
        if where != n:  # counted twice, it would weigh twice in every metric
            raise DatasetError(f"{path} row {n}: {row['path']} is listed already (row {where})")
        label = _LABELS.get(str(row["label"]).strip().lower())
        if label is None:
            raise DatasetError(f"{path} row {n}: label {row['label']!r} is not real/fake/0/1")
        samples.append(
            Sample(
                file,
                label,
                str(row.get("generator") or ("real" if label == 0 else "unknown")),
                str(row.get("family") or ""),
                str(row.get("source_id") or ""),
                str(row.get("split") or ""),
                str(row.get("pool") or ""),
            )
        )
    return samples


def read_forensynths(root: Path) -> list[Sample]:
    """``root/<generator>/[<category>/]{0_real,1_fake}/``; the category is the source group.

    The split is the root folder's name where it is one (CNNDetection's ``train/``, ``val/``,
    ``test/``), else test. A root whose folders are those splits (CNNDetection's ``dataset/``)
    is read as each of them, each with its own split.
    """
    root = Path(root)
    children = _subdirs(root)
    splits = [c for c in children if c.name.lower() in _SPLIT_DIRS]
    if splits:
        others = [c for c in children if c not in splits]
        if others:
            raise DatasetError(
                f"{root}: {_names(others)} beside the split folders {_names(splits)} would be "
                "left out; expected root/{train,val,test}/<generator>/[<category>/]"
                "{0_real,1_fake}/ (CNNDetection)"
            )
        _one_per_name(root, splits)
        genimage = [s for s in splits if _child(s, "ai") or _child(s, "nature")]
        if genimage:
            raise DatasetError(
                f"{root}: {_names(genimage)} hold ai/ and nature/: this is one GenImage "
                "generator's folder; give the folder above it (GenImage "
                "root/<generator>/{train,val}/{ai,nature}/)"
            )
        parts = [(s, s.name.lower()) for s in splits]
    else:
        # resolved: the split of `--data .` or `--data ../train` is the folder's own name
        name = root.resolve().name.lower()
        parts = [(root, name if name in _SPLIT_DIRS else "test")]
    classes, meta = [], []
    for base, split in parts:
        for gen_dir in _subdirs(base):
            gen = gen_dir.name
            for holder, real, fake in _forensynths_holders(gen_dir):
                source = gen if holder == gen_dir else f"{gen}/{holder.name}"
                classes += [(real, 0), (fake, 1)]
                meta += [(gen, source, split)] * 2
    samples = [
        # the pool is the generator's folder: its reals are its fakes' pairs (LSUN, CelebA,
        # ImageNet...), and a generator is judged against them, not others'
        Sample(file, label, gen if label else "real", gen, source, split, gen)
        for (_, label), (gen, source, split), files in zip(
            classes, meta, _list_images(root, classes), strict=True
        )
        for file in files
    ]
    return _non_empty(samples, root)


def _forensynths_holders(gen_dir: Path) -> list[tuple[Path, Path, Path]]:
    """(folder, its 0_real/, its 1_fake/) of a ForenSynths generator: itself, or each of its
    categories; a folder that would be left out, or a class missing, is refused."""
    expect = "expected 0_real/ and 1_fake/ here or in category subfolders (ForenSynths layout)"
    subs = _subdirs(gen_dir)
    if any(s.name.lower() in _FS_CLASSES for s in subs):
        extra = [s for s in subs if s.name.lower() not in _FS_CLASSES]
        if extra:  # the reader took one or the other, and dropped the rest unnoticed
            raise DatasetError(
                f"{gen_dir}: {_names(extra)} beside 0_real/ and 1_fake/ would be left out; "
                f"{expect}, not both"
            )
        holders = [gen_dir]
    else:
        holders = subs
    if not holders:
        raise DatasetError(f"{gen_dir}: {expect}")
    found = []
    for holder in holders:
        real, fake = _child(holder, "0_real"), _child(holder, "1_fake")
        extra = [s for s in _subdirs(holder) if s not in (real, fake)]
        if real is None or fake is None:
            has = f"has only {(real or fake).name}/" if real or fake else "has neither"
            raise DatasetError(
                f"{holder}: {has}; {expect} (a generator or category holds both classes)"
            )
        if extra:
            raise DatasetError(
                f"{holder}: {_names(extra)} beside 0_real/ and 1_fake/ would be left out; {expect}"
            )
        found.append((holder, real, fake))
    return found


def _genimage_base(gen_dir: Path) -> Path:
    """Where a GenImage generator's ``{train,val}/`` are: in its folder, or, as the published
    download nests them (``BigGAN/imagenet_ai_0419_biggan/train/ai``), in its one subfolder."""
    subs = _subdirs(gen_dir)
    if len(subs) == 1 and not _child(gen_dir, "train") and not _child(gen_dir, "val"):
        inner = subs[0]
        if _child(inner, "train") or _child(inner, "val"):
            return inner
    return gen_dir


def read_genimage(root: Path) -> list[Sample]:
    """``root/<generator>/{train,val}/{ai,nature}/``, or with the download's one folder more,
    ``root/<generator>/<release>/{train,val}/{ai,nature}/`` (the generator is named by
    ``<generator>``)."""
    root = Path(root)
    expect = "expected train/ and/or val/, each with ai/ and nature/ (GenImage layout)"
    classes, meta = [], []
    for gen_dir in _subdirs(root):
        splits = _subdirs(_genimage_base(gen_dir))
        extra = [s for s in splits if s.name.lower() not in ("train", "val")]
        if extra or not splits:
            left = f"{_names(extra)} would be left out; " if extra else ""
            raise DatasetError(f"{gen_dir}: {left}{expect}")
        _one_per_name(gen_dir, splits)
        for base in splits:
            ai, nature = _child(base, "ai"), _child(base, "nature")
            extra = [s for s in _subdirs(base) if s not in (ai, nature)]
            if ai is None or nature is None or extra:
                has = (
                    f"{_names(extra)} would be left out"
                    if ai and nature
                    else f"has only {(ai or nature).name}/"
                    if ai or nature
                    else "has neither ai/ nor nature/"
                )
                raise DatasetError(f"{base}: {has}; {expect}")
            classes += [(nature, 0), (ai, 1)]
            meta += [(gen_dir.name, base.name.lower())] * 2
    samples = [
        Sample(file, label, gen if label else "real", gen, gen, split, gen)
        for (_, label), (gen, split), files in zip(
            classes, meta, _list_images(root, classes), strict=True
        )
        for file in files
    ]
    return _non_empty(samples, root)


def read_real_fake(root: Path) -> list[Sample]:
    """``root/real/`` and ``root/fake/``; ``fake/<name>/`` names the generator.

    A subfolder deeper down (``real/flickr/``, ``fake/sd/cats/``) is a source group, kept on one
    side of the train/val split; a file directly in ``real/`` or in a generator's folder is a
    group of its own (source_id ""), so the split spreads them.
    """
    root = Path(root)
    real, fake = _child(root, "real"), _child(root, "fake")
    if real is None or fake is None:
        raise DatasetError(f"{root}: expected real/ and fake/ folders")
    extra = [c for c in _subdirs(root) if c not in (real, fake)]
    if extra:
        raise DatasetError(
            f"{root}: {_names(extra)} beside real/ and fake/ would be left out; expected only "
            "root/real/ + root/fake/[<generator>/] (a folder of another layout is a dataset of "
            "its own)"
        )
    reals, fakes = _list_images(root, [(real, 0), (fake, 1)])

    def group(file: Path, depth: int) -> str:
        # a whole folder on one side of the split: crops or frames of one source stay together
        deep = len(file.relative_to(root).parts) > depth + 1
        return file.parent.relative_to(root).as_posix() if deep else ""

    samples = [Sample(f, 0, "real", "real", group(f, 1), "") for f in reals]
    for file in fakes:  # fake/<generator>/... (fake/x.png: generator unknown)
        rel = file.relative_to(fake)
        gen = rel.parts[0] if len(rel.parts) > 1 else "unknown"
        samples.append(Sample(file, 1, gen, gen, group(file, 2), ""))
    return _non_empty(samples, root)


def _subdirs(path: Path) -> list[Path]:
    """The folders in ``path`` (through symlinks), without hidden ones (``.ipynb_checkpoints``,
    ``__MACOSX``)."""
    try:
        with os.scandir(path) as entries:
            return sorted(Path(e.path) for e in entries if not is_hidden(e.name) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise DatasetError(f"{path}: cannot list folder ({exc.strerror or exc})") from None


def _names(folders: list[Path]) -> str:
    return ", ".join(f"{f.name}/" for f in folders)


def _one_per_name(parent: Path, folders: list[Path]) -> None:
    """Refuses two folders whose names differ only in case (``Real/`` and ``real/``): layout
    names are matched in any case, and one of them would be left out."""
    by_name: dict[str, list[Path]] = {}
    for folder in folders:
        by_name.setdefault(folder.name.lower(), []).append(folder)
    for same in by_name.values():
        if len(same) > 1:
            raise DatasetError(
                f"{parent}: {_names(same)} differ only in case, and the layout reads one "
                "folder by that name; merge them"
            )


def _child(path: Path, name: str) -> Path | None:
    """The layout folder ``name`` in ``path``, in any case (``Nature/``, ``0_Real/``, ``Real/``)."""
    found = [c for c in _subdirs(path) if c.name.lower() == name]
    _one_per_name(path, found)
    return found[0] if found else None


def _kind(folder: Path) -> str:
    """The layout a child of a dataset root belongs to: "GenImage", "ForenSynths" or ""."""
    subs = _subdirs(folder)
    if any(
        s.name.lower() in ("train", "val") and (_child(s, "ai") or _child(s, "nature"))
        for s in _subdirs(_genimage_base(folder))
    ):
        return "GenImage"
    if any(c.name.lower() in _FS_CLASSES for f in (folder, *subs) for c in _subdirs(f)):
        return "ForenSynths"
    return ""


def _list_images(root: Path, classes: list[tuple[Path, int]]) -> list[list[Path]]:
    """The image files in each class folder ``(folder, label)`` of a layout under ``root``,
    sorted, through subfolders and symlinked folders (``fake/<gen> -> elsewhere``); hidden
    names (``._x.jpg``, ``.ipynb_checkpoints/``, ``__MACOSX/``) are not read.

    Every folder is read under its own name, whatever the order of the walk: the folders in the
    class folders are listed before any link is followed, and a link to one of them (an alias
    ``fake/sdxl-latest -> sdxl``, ``fake/a/also_b -> ../b``, a loop back up) is not followed;
    one that would put it under the other label is refused. A folder reached only by links is
    read once (a loop ends); two links to it are refused. Last, each file once: the same file by
    two paths (a symlink, a hard link, two class folders linked to one folder) is refused,
    naming both, as ``read_manifest`` refuses a file listed twice.
    """
    owned: dict[object, tuple[Path, int | None]] = {}  # the dataset's own folders, by identity
    for folder, _ in classes:  # the layout's folders above the class folders hold both labels
        for above in (p for p in folder.parents if p == root or root in p.parents):
            owned[file_identity(above)] = (above, None)
    files: list[list[tuple[Path, object]]] = []
    links: deque[tuple[Path, int]] = deque()
    for i, (folder, label) in enumerate(classes):
        found: list[tuple[Path, object]] = []
        for top in _walk_images(folder, i, links, found):
            owned[file_identity(top)] = (Path(top), label)
        files.append(found)
    linked: dict[object, Path] = {}  # folders outside them, reached through a link
    while links:
        link, i = links.popleft()
        folder, label = classes[i]
        target = file_identity(link)
        if target is None:  # a broken link
            continue
        if target in owned:
            where, owner = owned[target]
            if owner == label:
                continue  # read already, under its own name
            what = "a folder of the layout" if owner is None else f"read as {_WHAT[owner]}"
            raise DatasetError(
                f"{link} links to {where} ({what}): its images would be read again, as "
                f"{_WHAT[label]}; remove the link"
            )
        if target in linked:
            above = {file_identity(p) for p in link.parents if p == folder or folder in p.parents}
            if target in above:
                continue  # a loop
            raise DatasetError(
                f"{link} and {linked[target]} are the same folder: its images would be read "
                "twice; remove one link"
            )
        for top in _walk_images(link, i, links, files[i]):
            linked[file_identity(top)] = Path(top)
    first: dict[object, Path] = {}
    for path, key in (p for found in files for p in sorted(found)):
        where = first.setdefault(key, path)
        if where != path:  # counted twice, it would weigh twice in every metric
            raise DatasetError(
                f"{path} is the same file as {where} (a link or hard link): each image is "
                "read once; remove one"
            )
    return [sorted(path for path, _ in found) for found in files]


def _walk_images(
    start: Path, i: int, links: deque[tuple[Path, int]], found: list[tuple[Path, object]]
) -> Iterator[str]:
    """Each folder under ``start`` (hidden ones left out), yielded as it is listed: its image
    files go into ``found``, its symlinked subfolders into ``links`` with class index ``i``."""
    for top, dirs, names in os.walk(start, onerror=_unlisted):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        links += [(Path(top, d), i) for d in dirs if os.path.islink(os.path.join(top, d))]
        found += _image_files(top, names)
        yield top


def _image_files(top: str, names: list[str]) -> list[tuple[Path, object]]:
    """(path, file identity) of the image files among ``names`` in the folder ``top``: regular
    files (through symlinks), never a folder named like an image nor a broken link."""
    found = []
    for name in names:
        if is_hidden(name) or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            st = os.stat(os.path.join(top, name))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((Path(top, name), (st.st_dev, st.st_ino)))
    return found


def _unlisted(exc: OSError) -> None:
    """os.walk's error handler: a folder that cannot be listed would be left out unnoticed."""
    raise DatasetError(f"{exc.filename}: cannot list folder ({exc.strerror or exc})")


def _non_empty(samples: list[Sample], root: Path) -> list[Sample]:
    if not samples:
        raise DatasetError(f"{root}: layout recognised but no image files found")
    if not any(s.label == 0 for s in samples) or not any(s.label == 1 for s in samples):
        kind = "real" if not any(s.label == 0 for s in samples) else "generated"
        raise DatasetError(f"{root}: no {kind} images found; a dataset needs both classes")
    return samples
