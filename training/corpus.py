"""The offline corpus: real photos and the fakes the project makes from them, one manifest.

Pipeline (``build_corpus``):

1. Real photos: pinned Debian wallpaper photographs (or ``--real-dir``), split by photo into
   train / val / test; pinned opencv-doc photos form ``heldout-real``.
2. Every source photo is first downscaled by a random factor (0.5-0.75, Lanczos). This erases
   the 8x8 grid of the camera's JPEG encode before either class is derived from it, so that
   "carries an old JPEG grid" cannot separate real from fake.
3. Real crops are cut at native resolution: 256x256 for the aligned pool, 64x64 for the GAN
   pool. Generators the project trains (autoencoders, a DCGAN) learn from train-split crops only.
4. Aligned fakes: each real 256 crop is turned into a fake by one (or more) aligned generators
   (super-resolution of its 4x-downscaled self, or an autoencoder reconstruction). Held-out
   generators only transform test-split crops, into the ``heldout-generators`` split.
5. Non-aligned fakes (64x64 GANs) are balanced by as many real 64x64 crops.
6. Wild images (../shared/data/wild-train, when present) join as their own pool, split by
   source so that no source is on two sides.
7. Equalized post-processing: every image, real or fake, is written with metadata stripped, as
   JPEG with a quality drawn from the same range or as PNG with the same probability.

Outputs: ``images/<split>/<real|fake>/<generator>/*``, ``manifest.csv``, ``summary.md``,
``corpus.json`` (config, versions, sources, timing) and ``contact_sheet.png``.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import platform
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from training.datasets import SPLITS
from training.debian import DebianError, cache_dir
from training.degrade import encode_jpeg
from training.generators import GENERATORS, Generator, PrepareContext
from training.pinned import PinnedError, Store
from training.sources import (
    DEBIAN_PHOTOS,
    HELDOUT_PHOTOS,
    SourcePhoto,
    debian_photos,
    folder_photos,
    load_pixels,
    wild_family,
    wild_images,
)

__all__ = [
    "MANIFEST_FIELDS",
    "SIZES",
    "CorpusConfig",
    "CorpusError",
    "CorpusItem",
    "CorpusStats",
    "CorpusWriter",
    "build_corpus",
    "psnr",
    "stream_rng",
    "write_manifest",
]

MANIFEST_FIELDS = [
    "path", "label", "generator", "family", "pool", "source_id", "split",
    "sha256", "width", "height", "format", "quality", "pair",
]  # fmt: skip
WILD_PROVENANCE = ["repo", "commit", "src_path", "licence"]
WILD_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wild-train"


def new_corpus_folder(out: str | Path) -> Path:
    """``out`` as an absolute path, checked before any work: absent or empty, and not the
    current folder or one above it (the build is renamed into place from ``<out>.partial``;
    ``--out .`` failed after the generators were trained, on a path with no name)."""
    given = Path(out)
    out = given.resolve()
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{given} is a file; choose a new --out directory")
    if out.exists() and any(out.iterdir()):
        raise CorpusError(f"{given} is not empty; choose a new --out directory")
    if out == Path.cwd().resolve() or out in Path.cwd().resolve().parents:
        raise CorpusError(f"--out {given} is the current folder or above it; give a new folder")
    partial = _partial(out)
    if partial.exists() and not (partial / PARTIAL_MARK).is_file():  # someone's own folder
        raise CorpusError(
            f"{partial} exists and is not an unfinished build (the build works there and "
            "would delete it): move it away or choose another --out"
        )
    return out


PARTIAL_MARK = ".synthdetect-build"  # in <out>.partial: an unfinished build, safe to remove


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def start_partial(out: Path) -> Path:
    """``<out>.partial``, emptied of an earlier unfinished build and marked as ours."""
    partial = _partial(out)
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    (partial / PARTIAL_MARK).touch()
    return partial


def finish_partial(partial: Path, out: Path) -> None:
    """The finished build takes the place of ``out`` (absent or empty, checked before)."""
    (partial / PARTIAL_MARK).unlink()
    if out.exists():
        out.rmdir()
    partial.rename(out)


class CorpusError(RuntimeError):
    """The corpus cannot be built as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class CorpusConfig:
    size: str
    seed: int = 0
    crop: int = 256
    small_crop: int = 64
    photos: int | None = None  # None: every pinned photo
    crops_per_photo: int | None = 20  # None: every non-overlapping crop
    fakes_per_real: int = 1  # aligned generators applied to each real crop
    gan_images: int = 300  # fakes per non-aligned family
    heldout_real_crops: int = 4  # crops per heldout-real photo
    wild_limit: int | None = None  # None: all wild images
    train_steps: int = 400  # steps for the autoencoders the project trains
    gan_steps: int = 2000  # steps for the GAN the project trains
    source_scale: tuple[float, float] = (0.5, 0.75)
    jpeg_probability: float = 0.7
    jpeg_quality: tuple[int, int] = (70, 98)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    heldout_generators: tuple[str, ...] = ("ae_pixelshuffle",)
    generators: tuple[str, ...] | None = None  # None: every registered generator

    def to_dict(self) -> dict:
        return asdict(self)


SIZES = {
    # tiny: the tests' and the quick benchmark's corpus; its generators are fixed so that it
    # builds offline without pinned weights and its baseline does not move when one is added.
    "tiny": CorpusConfig(
        "tiny", photos=8, crops_per_photo=4, gan_images=12, heldout_real_crops=1,
        wild_limit=48, train_steps=30, gan_steps=30,
        generators=("ae_bilinear", "ae_nearest", "ae_pixelshuffle", "ae_transposed",
                    "dcgan_faces", "dcgan_texture", "realesrgan_animevideov3", "realesrgan_x4plus"),
    ),
    "small": CorpusConfig("small", crops_per_photo=20, gan_images=300, train_steps=400),
    "full": CorpusConfig(
        "full", crops_per_photo=None, fakes_per_real=6, gan_images=2000, train_steps=2000,
        gan_steps=6000,
    ),
}  # fmt: skip


@dataclass
class CorpusItem:
    pixels: np.ndarray
    label: str
    generator: str
    family: str
    pool: str
    source_id: str
    split: str
    key: str  # unique, stable: names the file and seeds its post-processing
    pair: str = ""
    extra: dict[str, object] = field(default_factory=dict)  # more manifest columns (provenance)


@dataclass
class CorpusStats:
    rows: list[dict] = field(default_factory=list)
    sheet: dict[str, list[tuple[np.ndarray, np.ndarray | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    fidelity: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # PSNR


def build_corpus(
    out: Path,
    config: CorpusConfig,
    *,
    real_dir: Path | None = None,
    wild_dir: Path | None = WILD_DEFAULT,
    cache: Path | None = None,
    store: Store | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Build the corpus into ``out`` (must be empty or absent); returns the corpus.json dict.

    ``store`` gives generators with pinned weights (TAEF2) their files: git mirrors, or clones
    of the pinned commits; without it they must already be in the cache.
    """
    start = time.perf_counter()
    out = new_corpus_folder(out)
    cache = cache_dir(cache)
    generators = _generators(config)
    photos = _real_photos(config, real_dir, cache)
    splits = _split_photos(photos, config)
    log(
        f"{len(photos)} source photos: "
        + ", ".join(f"{n} {s}" for s, n in Counter(splits.values()).items())
    )

    crops256, crops64 = _cut_crops(photos, splits, config)
    train_crops = np.stack([it.pixels for it in crops256 if it.split == "train"])
    log(
        f"{len(crops256)} real {config.crop}px crops, {len(crops64)} candidate {config.small_crop}px crops"
    )
    log("preparing generators:")
    for gen in generators.values():
        steps = config.gan_steps if gen.family == "gan" else config.train_steps
        try:
            gen.prepare(PrepareContext(cache, config.seed, steps, train_crops, log, store))
        except PinnedError as exc:
            raise CorpusError(
                f"generator {gen.name}: {exc}. Or leave it out with --generators"
            ) from None

    # Built in <out>.partial and renamed to out only when complete (as `corpus sources` does):
    # an interrupted or failed build leaves nothing that blocks a rerun or that a run would read.
    final, out = out, start_partial(out)
    try:
        return _write_corpus(out, final, config, generators, photos, crops256, crops64,
                             wild_dir, cache, log, start)  # fmt: skip
    except BaseException:  # failed or interrupted: nothing half-built is left behind
        shutil.rmtree(out, ignore_errors=True)
        raise


def _write_corpus(out, final, config, generators, photos, crops256, crops64, wild_dir, cache,
                  log, start) -> dict:  # fmt: skip
    stats = CorpusStats()
    writer = CorpusWriter(out, config, stats)
    for item in crops256:
        writer.write(item)
    fidelity = _aligned_fakes(crops256, generators, config, writer, log)
    log("aligned fakes, mean PSNR to their real twin (dB): " + json.dumps(fidelity))
    _gan_pool(crops64, generators, config, writer, log)
    if wild_dir is not None:
        _wild(wild_dir, config, writer, log)
    try:
        _heldout_real(config, cache, writer)
    except DebianError as exc:
        log(f"heldout-real skipped: {exc}")

    # the wild images' provenance (repo, commit, path), so that a merge with a corpus cut from
    # the same files can tell (training.merge refuses the same file in two corpora)
    extra = [c for c in WILD_PROVENANCE if any(c in r for r in stats.rows)]
    write_manifest(out, stats.rows, MANIFEST_FIELDS + extra)
    summary = _summary_table(stats.rows)
    (out / "summary.md").write_text(summary)
    _contact_sheet(stats.sheet, out / "contact_sheet.png")
    info = {
        "schema": 1,
        "config": config.to_dict(),
        "images": len(stats.rows),
        "build_seconds": round(time.perf_counter() - start, 1),
        "generators": {n: {"family": g.family, "version": g.version, "aligned": g.aligned, "pool": g.pool}
                       for n, g in generators.items()},
        "aligned_psnr_db": fidelity,
        "real_sources": sorted({p.source_id for p in photos}),
        "licences": sorted({p.licence for p in photos}),
        "machine": platform.machine(),
        "manifest_sha256": hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest(),
    }  # fmt: skip
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    finish_partial(out, final)
    log(summary)
    log(f"built {len(stats.rows)} images in {info['build_seconds']} s -> {final}")
    return info


def stream_rng(seed: int, *parts: object) -> np.random.Generator:
    """An independent, reproducible stream per (seed, purpose, item)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _slug(source_id: str) -> str:
    return source_id.split("/")[-1].split(":")[-1].replace(" ", "_")


def _generators(config: CorpusConfig) -> dict[str, Generator]:
    names = list(config.generators) if config.generators else GENERATORS.names()
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        raise CorpusError(f"unknown generators {unknown}; known: {', '.join(GENERATORS.names())}")
    missing = {n: GENERATORS.get(n).availability() for n in names}
    missing = {n: why for n, why in missing.items() if why}
    if missing:
        hints = "; ".join(f"{n}: {why}" for n, why in missing.items())
        raise CorpusError(
            f"generators unavailable here ({hints}). Install them, or choose others with "
            "--generators"
        )
    for name in config.heldout_generators:
        if name in names and not GENERATORS.get(name).aligned:
            raise CorpusError(f"held-out generator {name!r} must be an aligned generator")
    return {n: GENERATORS.get(n)() for n in names}


def _real_photos(config: CorpusConfig, real_dir: Path | None, cache: Path) -> list[SourcePhoto]:
    if real_dir is not None:
        photos = folder_photos(Path(real_dir))
        if config.photos is not None:
            photos = photos[: config.photos]
    else:
        try:
            photos = debian_photos(DEBIAN_PHOTOS, cache, config.photos)
        except DebianError as exc:
            raise CorpusError(f"{exc}. Pass your own photos with --real-dir DIR instead.") from None
    if len(photos) < 3:
        raise CorpusError(f"need at least 3 source photos for train/val/test, found {len(photos)}")
    named: dict[str, str] = {}
    for photo in photos:  # a/x.jpg and b/x.jpg: one name for their crops' files
        first = named.setdefault(_slug(photo.source_id), photo.source_id)
        if first != photo.source_id:
            raise CorpusError(
                f"two source photos share the name {_slug(photo.source_id)!r} ({first} and "
                f"{photo.source_id}): rename one"
            )
    return photos


def _split_photos(photos: list[SourcePhoto], config: CorpusConfig) -> dict[str, str]:
    """Assign whole photos to splits, so no photo's crops are on two sides."""
    order = stream_rng(config.seed, "split").permutation(len(photos))
    n = len(photos)
    n_test = max(1, round(n * config.split_fractions[2]))
    n_val = max(1, round(n * config.split_fractions[1]))
    splits = {}
    for rank, i in enumerate(order):
        splits[photos[i].source_id] = (
            "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        )
    return splits


def _downscale(pixels: np.ndarray, rng: np.random.Generator, config: CorpusConfig) -> np.ndarray:
    h, w = pixels.shape[:2]
    scale = float(rng.uniform(*config.source_scale))
    scale = min(1.0, max(scale, config.crop / min(h, w)))
    if scale >= 0.999:
        return pixels
    size = (round(w * scale), round(h * scale))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.LANCZOS))


def _grid(
    pixels: np.ndarray, size: int, rng: np.random.Generator, limit: int | None
) -> list[np.ndarray]:
    """Non-overlapping native-resolution crops on a randomly offset grid, a random subset."""
    h, w = pixels.shape[:2]
    if h < size or w < size:
        return []
    oy, ox = int(rng.integers(0, h % size + 1)), int(rng.integers(0, w % size + 1))
    boxes = [(y, x) for y in range(oy, h - size + 1, size) for x in range(ox, w - size + 1, size)]
    if limit is not None and len(boxes) > limit:
        boxes = [boxes[i] for i in sorted(rng.choice(len(boxes), limit, replace=False))]
    return [np.ascontiguousarray(pixels[y : y + size, x : x + size]) for y, x in boxes]


def _cut_crops(
    photos: list[SourcePhoto], splits: dict[str, str], config: CorpusConfig
) -> tuple[list[CorpusItem], list[CorpusItem]]:
    crops256: list[CorpusItem] = []
    crops64: list[CorpusItem] = []
    per_photo_64 = max(4, 3 * config.gan_images * 2 // max(1, len(photos)))
    for photo in photos:
        rng = stream_rng(config.seed, "photo", photo.source_id)
        pixels = _downscale(load_pixels(photo.path), rng, config)
        split, slug = splits[photo.source_id], _slug(photo.source_id)
        for i, crop in enumerate(_grid(pixels, config.crop, rng, config.crops_per_photo)):
            crops256.append(
                CorpusItem(
                    crop,
                    "real",
                    "real",
                    "camera",
                    "crops256",
                    photo.source_id,
                    split,
                    f"{slug}-c{i:03d}",
                )
            )
        for i, crop in enumerate(_grid(pixels, config.small_crop, rng, per_photo_64)):
            crops64.append(
                CorpusItem(
                    crop,
                    "real",
                    "real",
                    "camera",
                    "crops64",
                    photo.source_id,
                    split,
                    f"{slug}-s{i:03d}",
                )
            )
    if not crops256:
        raise CorpusError(f"no photo is at least {config.crop}px on both sides after downscaling")
    return crops256, crops64


class CorpusWriter:
    """Equalized post-processing and the manifest rows, for real and fake alike."""

    def __init__(self, out: Path, config: CorpusConfig, stats: CorpusStats) -> None:
        self.out, self.config, self.stats = out, config, stats
        self.by_key: dict[str, str] = {}  # item key -> relative path

    def write(self, item: CorpusItem) -> str:
        rng = stream_rng(self.config.seed, "encode", item.key)
        if rng.random() < self.config.jpeg_probability:
            quality = int(
                rng.integers(self.config.jpeg_quality[0], self.config.jpeg_quality[1] + 1)
            )
            data, fmt, ext = encode_jpeg(item.pixels, quality), "JPEG", "jpg"
        else:
            buf = io.BytesIO()
            Image.fromarray(item.pixels).save(buf, "PNG")
            data, fmt, ext, quality = buf.getvalue(), "PNG", "png", None
        rel = f"images/{item.split}/{item.label}/{item.generator}/{item.key}.{ext}"
        if item.key in self.by_key:
            raise CorpusError(f"duplicate corpus item {item.key}")
        path = self.out / rel
        parts = rel.split("/")
        if ".." in parts or any("\\" in p or not p for p in parts):  # names come from lists
            raise CorpusError(
                f"corpus item {item.key}: {rel!r} would be written outside {self.out}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        h, w = item.pixels.shape[:2]
        self.stats.rows.append(
            {
                "path": rel, "label": item.label, "generator": item.generator,
                "family": item.family, "pool": item.pool, "source_id": item.source_id,
                "split": item.split, "sha256": hashlib.sha256(data).hexdigest(),
                "width": w, "height": h, "format": fmt, "quality": quality if quality else "",
                "pair": item.pair, **item.extra,
            }
        )  # fmt: skip
        self.by_key[item.key] = rel
        return rel

    def sheet(self, generator: str, fake: np.ndarray, real: np.ndarray | None = None) -> None:
        if len(self.stats.sheet[generator]) < 4:
            self.stats.sheet[generator].append((fake, real))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _aligned_fakes(
    reals: list[CorpusItem],
    generators: dict[str, Generator],
    config: CorpusConfig,
    writer: CorpusWriter,
    log,
) -> dict[str, float]:
    """Write the aligned fakes; returns each generator's mean PSNR to its real twins (dB)."""
    aligned = [n for n, g in generators.items() if g.aligned and n not in config.heldout_generators]
    held = [n for n, g in generators.items() if g.aligned and n in config.heldout_generators]
    if not aligned:
        return {}
    jobs: dict[str, list[tuple[CorpusItem, str]]] = defaultdict(list)
    k = min(config.fakes_per_real, len(aligned))
    for i, item in enumerate(reals):
        for j in range(k):
            jobs[aligned[(i + j) % len(aligned)]].append((item, item.split))
        if item.split == "test":
            for name in held:
                jobs[name].append((item, "heldout-generators"))
    fidelity: dict[str, list[float]] = defaultdict(list)
    for name, todo in jobs.items():
        gen = generators[name]
        log(f"  {name}: {len(todo)} fakes")
        for start in range(0, len(todo), 16):
            chunk = todo[start : start + 16]
            fakes = gen.transform([it.pixels for it, _ in chunk])
            for (real, split), fake in zip(chunk, fakes, strict=True):
                writer.write(
                    CorpusItem(fake, "fake", name, gen.family, gen.pool, real.source_id, split,
                          f"{real.key}-{name}", pair=writer.by_key[real.key])
                )  # fmt: skip
                writer.sheet(name, fake, real.pixels)
                fidelity[name].append(psnr(fake, real.pixels))
    return {name: round(float(np.mean(v)), 2) for name, v in sorted(fidelity.items())}


def _index_splits(n: int, config: CorpusConfig, rng: np.random.Generator) -> list[str]:
    """Split labels for n non-aligned samples in the configured proportions."""
    f_train, f_val, _ = config.split_fractions
    n_train, n_val = round(n * f_train), round(n * f_val)
    labels = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    return [labels[i] for i in rng.permutation(n)]


def _gan_pool(
    candidates: list[CorpusItem],
    generators: dict[str, Generator],
    config: CorpusConfig,
    writer,
    log,
) -> None:
    """Non-aligned fakes, balanced per split by as many real crops of the same size."""
    fake_complexity: dict[str, list[float]] = defaultdict(list)
    for name, gen in generators.items():
        if gen.aligned:
            continue
        rng = stream_rng(config.seed, "sample", name)
        splits = _index_splits(config.gan_images, config, rng)
        log(f"  {name}: {config.gan_images} samples")
        for i, (fake, split) in enumerate(
            zip(gen.sample(config.gan_images, rng), splits, strict=True)
        ):
            writer.write(
                CorpusItem(
                    fake,
                    "fake",
                    name,
                    gen.family,
                    gen.pool,
                    f"gen:{name}",
                    split,
                    f"{name}-{i:05d}",
                )
            )
            writer.sheet(name, fake)
            fake_complexity[split].append(_complexity(fake))
    # Real crops matched to the fakes' texture level, split by split: without this, "busy
    # 64px crop" would tell GAN output from the many flat real crops (sky, blur), a shortcut
    # the shortcut check catches through file size.
    for split, fakes in sorted(fake_complexity.items()):
        pool = [c for c in candidates if c.split == split]
        if len(pool) < len(fakes):
            log(
                f"  only {len(pool)} real {config.small_crop}px crops for {len(fakes)} {split} fakes"
            )
        for i in _match_by_complexity(fakes, [_complexity(c.pixels) for c in pool]):
            writer.write(pool[i])
            writer.sheet("real (64px pool)", pool[i].pixels)


def _complexity(pixels: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey image: how busy a crop is."""
    g = pixels.astype(np.float32).mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


def _match_by_complexity(targets: list[float], candidates: list[float]) -> list[int]:
    """For each target (sorted), the unused candidate closest in complexity (greedy)."""
    order = sorted(range(len(candidates)), key=lambda i: candidates[i])
    values = [candidates[i] for i in order]
    chosen = []
    for t in sorted(targets):
        if not order:
            break
        j = bisect.bisect_left(values, t)
        if j == len(values) or (j > 0 and t - values[j - 1] <= values[j] - t):
            j -= 1
        chosen.append(order.pop(j))
        values.pop(j)
    return sorted(chosen)


def _assign_groups(sizes: dict[str, int], fractions: tuple[float, float, float]) -> dict[str, str]:
    """Whole groups to splits, largest first, each to the split furthest below its target."""
    total = sum(sizes.values())
    targets = dict(zip(("train", "val", "test"), (f * total for f in fractions), strict=True))
    filled = dict.fromkeys(targets, 0.0)
    out = {}
    for group in sorted(sizes, key=lambda g: (-sizes[g], g)):
        split = max(targets, key=lambda s: (targets[s] - filled[s], s == "train"))
        out[group] = split
        filled[split] += sizes[group]
    return out


def _wild(root: Path, config: CorpusConfig, writer: CorpusWriter, log) -> None:
    rows = wild_images(Path(root))
    if not rows:
        log(f"wild images: {root} not found, skipped (only developer machines and CI have it)")
        return
    if config.wild_limit is not None:
        rng = stream_rng(config.seed, "wild-limit")
        keep = []
        for label in ("real", "fake"):
            group = [r for r in rows if r.label == label]
            idx = sorted(
                rng.choice(len(group), min(len(group), config.wild_limit // 2), replace=False)
            )
            keep += [group[i] for i in idx]
        rows = keep
    split_of: dict[tuple[str, str], str] = {}
    for label in ("real", "fake"):
        sizes = Counter(r.slug for r in rows if r.label == label)
        split_of.update(
            {(label, g): s for g, s in _assign_groups(sizes, config.split_fractions).items()}
        )
    # one repository on one side: its sources share photographers and post-processing, and
    # some hold both classes (taming-transformers: its photos and their VQGAN remakes); the
    # first assignment of a repository's photos, then of its fakes, holds for all its sources
    repo_of = {r.slug: r.repo or r.slug for r in rows}
    taken: dict[str, str] = {}
    for key in sorted(split_of, key=lambda k: (k[0] != "real", k[1])):
        split_of[key] = taken.setdefault(repo_of[key[1]], split_of[key])
    log(f"  wild: {len(rows)} images from {len(split_of)} sources")
    for row in rows:
        pixels = load_pixels(row.path)
        fake = row.label == "fake"
        item = CorpusItem(
            pixels, row.label, row.slug if fake else "real",
            wild_family(row.slug) if fake else "wild-real", "wild", f"wild:{row.slug}",
            split_of[(row.label, row.slug)], f"wild-{row.path.stem}",
            extra={"repo": row.repo, "commit": row.commit, "src_path": row.src_path,
                   "licence": row.licence},
        )  # fmt: skip
        writer.write(item)
        writer.sheet("wild fake" if fake else "wild real", pixels)


def _heldout_real(config: CorpusConfig, cache: Path, writer: CorpusWriter) -> None:
    for photo in debian_photos(HELDOUT_PHOTOS, cache):
        rng = stream_rng(config.seed, "heldout", photo.source_id)
        pixels = _downscale(load_pixels(photo.path), rng, config)
        for i, crop in enumerate(_grid(pixels, config.crop, rng, config.heldout_real_crops)):
            key = f"heldout-{_slug(photo.source_id)}-c{i:02d}"
            writer.write(
                CorpusItem(
                    crop, "real", "real", "camera", "crops256", photo.source_id, "heldout-real", key
                )
            )
            writer.sheet("heldout-real", crop)


def write_manifest(out: Path, rows: list[dict], fields: list[str] = MANIFEST_FIELDS) -> None:
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["path"]))


def _summary_table(rows: list[dict]) -> str:
    """Markdown: images per generator (rows) and split (columns)."""
    counts = Counter((r["label"], r["pool"], r["generator"], r["split"]) for r in rows)
    gens = sorted({(lab, pool, gen) for lab, pool, gen, _ in counts})
    splits = [s for s in SPLITS if any(k[3] == s for k in counts)]
    lines = [
        "| label | pool | generator | " + " | ".join(splits) + " | total |",
        "|---|---|---|" + "---:|" * (len(splits) + 1),
    ]
    for lab, pool, gen in gens:
        cells = [counts[(lab, pool, gen, s)] for s in splits]
        lines.append(
            f"| {lab} | {pool} | {gen} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |"
        )
    for lab in ("real", "fake"):
        cells = [sum(v for k, v in counts.items() if k[0] == lab and k[3] == s) for s in splits]
        lines.append(f"| **{lab}** | | | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    return "\n".join(lines) + "\n"


def _contact_sheet(
    sheet: dict[str, list[tuple[np.ndarray, np.ndarray | None]]], path: Path
) -> None:
    """One row per generator: aligned fakes beside their real twin, others as they are."""
    from PIL import ImageDraw

    tile, label_w, per_row = 128, 200, 8
    rows = sorted(sheet.items())
    img = Image.new("RGB", (label_w + per_row * tile, max(1, len(rows)) * (tile + 4)), "white")
    draw = ImageDraw.Draw(img)
    for r, (name, pairs) in enumerate(rows):
        y = r * (tile + 4)
        draw.text((6, y + tile // 2 - 6), name, fill="black")
        tiles: list[np.ndarray] = []
        for fake, real in pairs:
            tiles += [real, fake] if real is not None else [fake]
        for c, arr in enumerate(tiles[:per_row]):
            thumb = Image.fromarray(arr)
            thumb = thumb.resize(
                (tile, tile), Image.NEAREST if arr.shape[0] < tile else Image.LANCZOS
            )
            img.paste(thumb, (label_w + c * tile, y))
    img.save(path)
