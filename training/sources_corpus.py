"""A corpus from a pinned sources list: real photos and real generator outputs from public repos.

``build_sources_corpus`` reads a sources list (``training.pinned.read_sources``), checks every
row against its git repository before anything is written, then for each file:

1. takes the bytes at ``commit:path`` (from a local mirror, or a clone of the pinned commit) and
   checks them against the pinned blob id;
2. decodes them with ``detector.image.decode`` (the one decoder; EXIF orientation applied,
   metadata left behind);
3. cuts it into its images: the tiles of a grid (``grid RxC`` in the row's notes, with tile size
   and padding when given), the crop boxes of a screenshot or multi-image figure
   (``crop_box(es) x0,y0,x1,y1;...``), or the whole file;
4. cuts up to ``crops_per_image`` non-overlapping native-resolution crops of at most
   ``crop`` px a side from each image (never resized), placed at random but reproducibly;
5. writes each crop through the corpus's post-processing (``training.corpus.CorpusWriter``):
   the same JPEG-quality distribution or PNG for both classes, no metadata (crop sizes follow
   the images: generated ones are mostly square, photos of every shape).

Splits are by *split unit*: source groups joined with every other group of the same repository,
so neither a group nor a repository is ever on two sides. Each unit is ranked under its most
common (label, family); within each such stratum the largest unit goes to train, and the rest
go to whichever split is furthest below its share. A family that is only a minority inside
other units follows those units, so it may never be trained on (9 small families of the
shipped list sit only in a mixed validation unit). Whole families stay available for
leave-one-family-out (the ``family`` column). Each manifest row records where its pixels came
from: repository, commit, path, blob, licence, source group and the region cut.

The build is all or nothing: it runs in ``<out>.partial`` and is renamed to ``out`` only when
complete. A row that fails verification (a missing commit or path, another blob) stops the
build before any image is written; a row that cannot be used (undecodable, a layout that cannot
be cut) stops it at the end with every such row listed, unless ``skip_unusable`` is set, in
which case each is recorded in ``corpus.json`` with its reason.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detector.image import DecodeLimits, ImageError, decode
from training.corpus import (
    MANIFEST_FIELDS,
    CorpusError,
    CorpusItem,
    CorpusStats,
    CorpusWriter,
    finish_partial,
    new_corpus_folder,
    psnr,
    start_partial,
    stream_rng,
    write_manifest,
)
from training.generators import Generator
from training.pinned import PinnedError, SourceRow, Store

__all__ = [
    "PROVENANCE_FIELDS",
    "SourcesConfig",
    "assign_splits",
    "build_sources_corpus",
    "regions",
]

PROVENANCE_FIELDS = [
    "repo", "commit", "src_path", "blob_sha", "licence", "source_group", "orig_format", "region",
]  # fmt: skip
POOL = "wild"


@dataclass(frozen=True)
class SourcesConfig:
    seed: int = 0
    crop: int = 384  # largest crop side (px); smaller images are taken whole
    crops_per_image: int = 2  # non-overlapping crops per image (grid tile / box / file)
    min_side: int = 64  # images (tiles, boxes) smaller than this are left out
    jpeg_probability: float = 0.7  # the corpus's post-processing (training.corpus)
    jpeg_quality: tuple[int, int] = (70, 98)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    skip_unusable: bool = False
    families: tuple[str, ...] | None = None  # None: every family in the list
    workers: int = 2
    # Aligned twins: each real crop (a seeded share of them) also goes through these aligned
    # generators (e.g. taef2), giving fakes whose content is a real photo's and whose pixels a
    # generator drew: they sit in the real's split and source group, paired with it.
    twins: tuple[str, ...] = ()
    twin_share: float = 1.0

    def __post_init__(self) -> None:
        if self.crop < 64 or self.crops_per_image < 1 or self.min_side < 16:
            raise ValueError("crop must be >= 64, crops_per_image >= 1, min_side >= 16")
        if not 0 < self.twin_share <= 1:
            raise ValueError(f"twin_share must be in (0, 1], got {self.twin_share}")
        if abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(f"split_fractions must be >= 0 and sum to 1: {self.split_fractions}")

    def to_dict(self) -> dict:
        return asdict(self)


# --- layouts --------------------------------------------------------------------------------

_BOXES = re.compile(r"crop_box(?:\(es\)|es)?\s+((?:\d+,\d+,\d+,\d+;?)+)")
_GRID = re.compile(r"\bgrid (\d+)x(\d+)(?: \((\d+)px tiles, (?:(\d+)px padding|no padding))?")
_SEGMENT = re.compile(r"(\d+) tiles (\d+)x(\d+) \((?:x0=([\d,]+); )?y0=([\d,]+)\)")
_ONLY_BOXES = ("UI screenshot", "multi-image figure")

Box = tuple[int, int, int, int]  # x0, y0, x1, y1


def regions(notes: str, width: int, height: int) -> list[tuple[str, Box]]:
    """The images inside a file, as (name, box), from its notes; ValueError when it cannot tell.

    - ``UI screenshot`` / ``multi-image figure``: only the listed crop boxes (the rest of the
      file is interface or other panels);
    - ``grid RxC (Npx tiles, Ppx padding)``: R rows and C columns of N px tiles, P px apart and
      from the border (CompVis ``make_grid``); ``no padding``: P = 0;
    - ``grid RxC`` alone: the file split into equal parts;
    - ``mixed grid: ... K tiles WxH (x0=..; y0=..) ...``: each segment's tiles at the listed
      origins (x0 by default every W px across the file);
    - anything else: the whole file.
    """
    boxes = [tuple(int(v) for v in b.split(",")) for m in _BOXES.finditer(notes) for b in m.group(1).split(";") if b]  # fmt: skip
    if any(tag in notes for tag in _ONLY_BOXES):
        if not boxes:
            raise ValueError("a screenshot or figure needs crop boxes in its notes")
        return [(f"box {','.join(map(str, b))}", _inside(b, width, height)) for b in boxes]
    if "mixed grid" in notes:
        out = []
        for count, tw, th, xs, ys in _SEGMENT.findall(notes):
            tw, th = int(tw), int(th)
            x0s = [int(v) for v in xs.split(",")] if xs else list(range(0, width - tw + 1, tw))
            tiles = [(x, int(y)) for y in ys.split(",") for x in x0s]
            if len(tiles) < int(count):
                raise ValueError(f"mixed grid: {count} tiles stated, {len(tiles)} found")
            out += [(f"tile {x},{y}", _inside((x, y, x + tw, y + th), width, height)) for x, y in tiles]  # fmt: skip
        if not out:
            raise ValueError(f"cannot read the mixed grid layout {notes!r}")
        return out
    grid = _GRID.search(notes)
    if grid:
        rows, cols = int(grid.group(1)), int(grid.group(2))
        if rows < 1 or cols < 1:  # (1x0 divided by zero: a traceback)
            raise ValueError(f"a grid needs at least one row and column, got {rows}x{cols}")
        if grid.group(3):
            size, pad = int(grid.group(3)), int(grid.group(4) or 0)
            tw = th = size
            step_x = step_y = size + pad
        else:
            pad, tw, th = 0, width // cols, height // rows
            step_x, step_y = tw, th
        return [
            (
                f"grid {r},{c}",
                _inside((pad + c * step_x, pad + r * step_y, pad + c * step_x + tw, pad + r * step_y + th), width, height),
            )
            for r in range(rows)
            for c in range(cols)
        ]  # fmt: skip
    return [("whole", (0, 0, width, height))]


def _inside(box: tuple[int, ...], width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"region {box} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def _crops(
    pixels: np.ndarray, size: int, limit: int, rng: np.random.Generator
) -> list[tuple[Box, np.ndarray]]:
    """Up to ``limit`` non-overlapping crops of at most size x size, on a randomly offset grid."""
    h, w = pixels.shape[:2]
    ch, cw = min(size, h), min(size, w)
    oy, ox = int(rng.integers(0, h % ch + 1)), int(rng.integers(0, w % cw + 1))
    boxes = [(x, y) for y in range(oy, h - ch + 1, ch) for x in range(ox, w - cw + 1, cw)]
    if len(boxes) > limit:
        boxes = [boxes[i] for i in sorted(rng.choice(len(boxes), limit, replace=False))]
    return [
        ((x, y, x + cw, y + ch), np.ascontiguousarray(pixels[y : y + ch, x : x + cw]))
        for x, y in boxes
    ]


# --- splits ---------------------------------------------------------------------------------


def _units(rows: list[SourceRow]) -> dict[str, str]:
    """source_group -> split unit: groups that share a repository are one unit (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for row in rows:
        a, b = find(f"g:{row.source_group}"), find(f"r:{row.repo}")
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        members[find(f"g:{row.source_group}")].append(row.source_group)
    unit_name = {root: min(groups) for root, groups in members.items()}
    return {row.source_group: unit_name[find(f"g:{row.source_group}")] for row in rows}


def assign_splits(
    rows: list[SourceRow], fractions: tuple[float, float, float]
) -> tuple[dict[str, str], dict[str, str]]:
    """-> (source_group -> split, source_group -> split unit).

    A unit's stratum is its most common (label, family). Within a stratum, units are taken
    largest first: the first goes to train, each next one to the split furthest below its
    share of the stratum.
    """
    unit_of = _units(rows)
    size: Counter[str] = Counter()
    strata: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for row in rows:
        u = unit_of[row.source_group]
        size[u] += 1
        strata[u][(row.label, row.family)] += 1
    by_stratum: dict[tuple[str, str], list[str]] = defaultdict(list)
    for u, counts in strata.items():
        by_stratum[max(counts, key=lambda k: (counts[k], k))].append(u)
    split_of_unit = {}
    names = ("train", "val", "test")
    for units in by_stratum.values():
        total = sum(size[u] for u in units)
        filled = dict.fromkeys(names, 0)
        for i, u in enumerate(sorted(units, key=lambda u: (-size[u], u))):
            split = (
                "train"
                if i == 0
                else max(
                    names,
                    key=lambda s: (fractions[names.index(s)] * total - filled[s], s == "train"),
                )
            )
            split_of_unit[u] = split
            filled[split] += size[u]
    return {g: split_of_unit[u] for g, u in unit_of.items()}, unit_of


# --- the build ------------------------------------------------------------------------------


@dataclass
class _Job:
    row: SourceRow
    data: bytes
    split: str


def build_sources_corpus(
    sources: list[SourceRow],
    out: Path,
    store: Store,
    config: SourcesConfig = SourcesConfig(),
    *,
    log: Callable[[str], None] = print,
    sources_file: str = "",
    cache: Path | None = None,
) -> dict:
    """Build the corpus into ``out`` (must not exist or be empty); returns corpus.json's dict.

    ``cache`` holds the weights of twin generators (``config.twins``)."""
    start = time.perf_counter()
    out = new_corpus_folder(out)
    rows = [r for r in sources if config.families is None or r.family in config.families]
    if not rows:
        raise CorpusError(f"no rows of families {config.families} in the sources list")
    log(f"verifying {len(rows)} pinned files in {len({r.repo for r in rows})} repositories")
    problems = store.verify(rows)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CorpusError(f"{len(problems)} pinned files are not as listed:\n  {shown}{more}")
    split_of, unit_of = assign_splits(rows, config.split_fractions)
    empty = [s for s, share in zip(("train", "val", "test"), config.split_fractions, strict=True)
             if share > 0 and s not in set(split_of.values())]  # fmt: skip
    if empty:  # too few repositories to go round: said, not found out by the first run
        log(
            f"warning: no {' or '.join(empty)} split: {len(set(unit_of.values()))} repositories "
            "(a repository is on one side) do not go round; list more sources"
        )
    twins = _twin_generators(config, store, cache, log)
    partial = start_partial(out)
    try:
        stats, unusable = _extract(rows, split_of, store, config, partial, log, twins)
        if unusable and not config.skip_unusable:
            shown = "\n  ".join(f"{r.where}: {why}" for r, why in unusable[:20])
            raise CorpusError(
                f"{len(unusable)} listed files cannot be used:\n  {shown}\n"
                "Pass --skip-unusable to build without them (each is recorded in corpus.json)."
            )
        if not stats.rows:  # every listed file skipped: an empty corpus is no corpus
            first = f" (first: {unusable[0][0].where}: {unusable[0][1]})" if unusable else ""
            raise CorpusError(f"none of the {len(rows)} listed files could be used{first}")
        write_manifest(partial, stats.rows, MANIFEST_FIELDS + PROVENANCE_FIELDS)
        info = _info(rows, stats, unusable, split_of, unit_of, config, sources_file, partial)
        info["build_seconds"] = round(time.perf_counter() - start, 1)
        (partial / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
        (partial / "summary.md").write_text(_summary(stats.rows))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finish_partial(partial, out)
    log(f"built {len(stats.rows)} images from {len(rows) - len(unusable)} files in "
        f"{info['build_seconds']} s -> {out}")  # fmt: skip
    return info


def _twin_generators(config: SourcesConfig, store: Store, cache, log) -> dict[str, Generator]:
    from training.debian import cache_dir
    from training.generators import GENERATORS, PrepareContext

    out = {}
    for name in config.twins:
        if name not in GENERATORS:
            raise CorpusError(
                f"unknown twin generator {name!r}; known: {', '.join(GENERATORS.names())}"
            )
        cls = GENERATORS.get(name)
        if not cls.aligned:
            raise CorpusError(f"twin generator {name!r} is not aligned (it must transform a crop)")
        if cls.trains:  # prepared here on no data: an untrained network's output as fakes
            raise CorpusError(
                f"twin generator {name!r} is trained by corpus build on its crops; twins are "
                "generators with fixed weights (a decoder or an upscaler)"
            )
        if cls.availability():
            raise CorpusError(f"twin generator {name}: {cls.availability()}")
        gen = cls()
        ctx = PrepareContext(
            cache_dir(cache), config.seed, 0, np.zeros((1, 8, 8, 3), np.uint8), log, store
        )
        try:
            gen.prepare(ctx)
        except PinnedError as exc:
            raise CorpusError(f"twin generator {name}: {exc}") from None
        out[name] = gen
    return out


def _extract(
    rows: list[SourceRow],
    split_of: dict[str, str],
    store: Store,
    config: SourcesConfig,
    out: Path,
    log: Callable[[str], None],
    twins: dict[str, Generator],
) -> tuple[CorpusStats, list[tuple[SourceRow, str]]]:
    stats = CorpusStats()
    writer = CorpusWriter(out, config, stats)  # type: ignore[arg-type]  # same post-processing
    unusable: list[tuple[SourceRow, str]] = []
    done = 0
    with ThreadPoolExecutor(max(1, config.workers)) as pool:
        pending = []
        for row, data in store.read(rows):
            job = _Job(row, data, split_of[row.source_group])
            pending.append(pool.submit(_one, job, config, writer, twins))
            if len(pending) >= 4 * max(1, config.workers):  # bounded: blobs can be large
                done += _collect(pending[:1], unusable)
                pending = pending[1:]
            if done and done % 500 == 0:
                log(f"  {done} / {len(rows)} files")
        done += _collect(pending, unusable)
    return stats, unusable


def _collect(futures, unusable: list[tuple[SourceRow, str]]) -> int:
    for fut in futures:
        row, why = fut.result()
        if why:
            unusable.append((row, why))
    return len(futures)


def _one(
    job: _Job, config: SourcesConfig, writer: CorpusWriter, twins: dict[str, Generator]
) -> tuple[SourceRow, str | None]:
    """Decode one file and write its crops; -> (row, why it is unusable or None)."""
    row = job.row
    try:
        image = decode(job.data, DecodeLimits(max_bytes=max(len(job.data), 1)))
        parts = regions(row.notes, image.width, image.height)
    except (ImageError, ValueError) as exc:
        return row, str(exc)
    fake = row.is_fake
    written = 0
    for name, (x0, y0, x1, y1) in parts:
        if min(x1 - x0, y1 - y0) < config.min_side:
            continue
        rng = stream_rng(config.seed, "sources-crop", row.blob_sha, name)
        region = image.pixels[y0:y1, x0:x1]
        for i, ((cx0, cy0, cx1, cy1), pixels) in enumerate(
            _crops(region, config.crop, config.crops_per_image, rng)
        ):
            key = f"{row.source_group}-{row.blob_sha[:12]}-{_slug(name)}-c{i}"
            extra = {
                "repo": row.repo, "commit": row.commit, "src_path": row.path,
                "blob_sha": row.blob_sha, "licence": row.licence,
                "source_group": row.source_group, "orig_format": image.format,
                "region": f"{x0 + cx0},{y0 + cy0},{x0 + cx1},{y0 + cy1}",
            }  # fmt: skip
            real = writer.write(
                CorpusItem(pixels, row.label, row.family if fake else "real", row.family, POOL,
                           row.source_group, job.split, key, extra=extra)
            )  # fmt: skip
            written += 1
            if fake or not twins:
                continue
            if stream_rng(config.seed, "twin", key).random() >= config.twin_share:
                continue
            for gname, gen in twins.items():
                twin = gen.transform([pixels])[0]
                writer.write(
                    CorpusItem(twin, "fake", gname, gen.family, POOL, row.source_group, job.split,
                               f"{key}-{gname}", pair=real, extra=extra)
                )  # fmt: skip
                writer.stats.fidelity[gname].append(psnr(twin, pixels))
    if not written:
        return row, f"no region of at least {config.min_side} px ({image.width}x{image.height})"
    return row, None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _info(rows, stats, unusable, split_of, unit_of, config, sources_file, out) -> dict:
    counts = Counter((r["label"], r["family"], r["split"]) for r in stats.rows)
    return {
        "schema": 1,
        "kind": "sources",
        "sources": sources_file,
        "config": config.to_dict(),
        "files": len(rows) - len(unusable),
        "images": len(stats.rows),
        "skipped": [{"where": r.where, "line": r.line, "reason": why} for r, why in unusable],
        "splits": {g: {"split": split_of[g], "unit": unit_of[g]} for g in sorted(split_of)},
        "families": sorted({r.family for r in rows if r.is_fake}),
        "twins_psnr_db": {
            g: round(float(np.mean(v)), 2) for g, v in sorted(stats.fidelity.items())
        },
        "counts": [
            {"label": lab, "family": fam, "split": sp, "images": n}
            for (lab, fam, sp), n in sorted(counts.items())
        ],
        "repos": sorted({r.repo for r in rows}),
        "licences": sorted({r.licence for r in rows}),
        "machine": platform.machine(),
        "manifest_sha256": hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest(),
    }


def _summary(rows: list[dict]) -> str:
    """Markdown: images per (label, family) and split."""
    counts = Counter((r["label"], r["family"], r["split"]) for r in rows)
    keys = sorted({(lab, fam) for lab, fam, _ in counts}, key=lambda k: (k[0], -sum(counts[(*k, s)] for s in ("train", "val", "test")), k[1]))  # fmt: skip
    lines = ["| label | family | train | val | test | total |", "|---|---|---:|---:|---:|---:|"]
    for lab, fam in keys:
        cells = [counts[(lab, fam, s)] for s in ("train", "val", "test")]
        lines.append(f"| {lab} | {fam} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    return "\n".join(lines) + "\n"
