"""Readers for the dataset layouts researchers use, all producing the same ``Sample`` records.

- our manifest (``manifest.csv`` or ``.jsonl``: path, label, generator, family, source_id,
  split, ...), as written by ``synthdetect corpus build``;
- ForenSynths / CNNDetection: ``root/<generator>/[<category>/]{0_real,1_fake}/``;
- GenImage: ``root/<generator>/{train,val}/{ai,nature}/``;
- a plain pair of folders: ``root/real/`` and ``root/fake/`` (``fake/<generator>/`` optional).

``load_samples(path)`` detects the layout. A path that matches none gets a ``DatasetError``
naming the path and the layouts it was checked against.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.image import DecodeLimits, ImageError, decode_file, file_identity
from detector.scan import IMAGE_EXTENSIONS

__all__ = [
    "SPLITS",
    "DatasetError",
    "Sample",
    "data_digest",
    "file_key",
    "load_samples",
    "read_forensynths",
    "read_genimage",
    "read_manifest",
    "read_pixels",
    "read_real_fake",
    "worker_message",
]

_LAYOUTS = (
    "a manifest (manifest.csv / .jsonl, or a directory containing manifest.csv); "
    "ForenSynths root/<generator>/[<category>/]{0_real,1_fake}/; "
    "GenImage root/<generator>/{train,val}/{ai,nature}/; "
    "or root/real/ + root/fake/"
)
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


def load_samples(path: str | Path) -> list[Sample]:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.is_file():
        return read_manifest(path)
    if (path / "manifest.csv").is_file():
        return read_manifest(path / "manifest.csv")
    if (path / "manifest.jsonl").is_file():
        return read_manifest(path / "manifest.jsonl")
    if (path / "real").is_dir() and (path / "fake").is_dir():
        return read_real_fake(path)
    children = [c for c in path.iterdir() if c.is_dir()]
    if any((c / "train" / "ai").is_dir() or (c / "val" / "ai").is_dir() for c in children):
        return read_genimage(path)
    if any(_has_binary_dirs(c) or any(_has_binary_dirs(g) for g in _subdirs(c)) for c in children):
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
    """``root/<generator>/[<category>/]{0_real,1_fake}/``; the category is the source group."""
    root = Path(root)
    split = root.name if root.name in ("train", "val", "test") else "test"
    samples: list[Sample] = []
    for gen_dir in _subdirs(root):
        holders = (
            [gen_dir]
            if _has_binary_dirs(gen_dir)
            else [c for c in _subdirs(gen_dir) if _has_binary_dirs(c)]
        )
        if not holders:
            raise DatasetError(
                f"{gen_dir}: expected 0_real/ and 1_fake/ here or in category subfolders "
                "(ForenSynths layout)"
            )
        for holder in holders:
            category = holder.name if holder != gen_dir else ""
            source = f"{gen_dir.name}/{category}" if category else gen_dir.name
            for label, sub in ((0, "0_real"), (1, "1_fake")):
                for file in _images(holder / sub):
                    gen = gen_dir.name if label else "real"
                    # the pool is the generator's folder: its reals are its fakes' pairs (LSUN,
                    # CelebA, ImageNet...), and a generator is judged against them, not others'
                    samples.append(
                        Sample(file, label, gen, gen_dir.name, source, split, gen_dir.name)
                    )
    return _non_empty(samples, root)


def read_genimage(root: Path) -> list[Sample]:
    """``root/<generator>/{train,val}/{ai,nature}/``."""
    root = Path(root)
    samples: list[Sample] = []
    for gen_dir in _subdirs(root):
        for split in ("train", "val"):
            base = gen_dir / split
            if not base.is_dir():
                continue
            for label, sub in ((0, "nature"), (1, "ai")):
                for file in _images(base / sub):
                    gen = gen_dir.name if label else "real"
                    samples.append(
                        Sample(file, label, gen, gen_dir.name, gen_dir.name, split, gen_dir.name)
                    )
    return _non_empty(samples, root)


def read_real_fake(root: Path) -> list[Sample]:
    """``root/real/`` and ``root/fake/``; ``fake/<name>/`` names the generator."""
    root = Path(root)
    samples = [Sample(f, 0, "real", "real", f.parent.name, "") for f in _images(root / "real")]
    for file in _images(root / "fake"):
        rel = file.relative_to(root / "fake")
        gen = rel.parts[0] if len(rel.parts) > 1 else "unknown"
        samples.append(Sample(file, 1, gen, gen, gen, ""))
    return _non_empty(samples, root)


def _subdirs(path: Path) -> list[Path]:
    return sorted(c for c in path.iterdir() if c.is_dir()) if path.is_dir() else []


def _has_binary_dirs(path: Path) -> bool:
    return (path / "0_real").is_dir() and (path / "1_fake").is_dir()


def _images(folder: Path) -> list[Path]:
    """Image files under ``folder``, through symlinked folders (``fake/<gen> -> elsewhere``,
    each folder once: a link loop ends), never a folder named like an image."""
    if not folder.is_dir():
        return []
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        identity = file_identity(top)
        if identity in seen:
            dirs[:] = []
            continue
        seen.add(identity)
        # name order, real folders before links to them: a folder reached twice keeps its
        # own name (its generator), whatever order the file system lists them in
        dirs.sort(key=lambda d: (os.path.islink(os.path.join(top, d)), d))
        paths = (Path(top) / f for f in files)
        found += [p for p in paths if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(found)


def _non_empty(samples: list[Sample], root: Path) -> list[Sample]:
    if not samples:
        raise DatasetError(f"{root}: layout recognised but no image files found")
    if not any(s.label == 0 for s in samples) or not any(s.label == 1 for s in samples):
        kind = "real" if not any(s.label == 0 for s in samples) else "generated"
        raise DatasetError(f"{root}: no {kind} images found; a dataset needs both classes")
    return samples
