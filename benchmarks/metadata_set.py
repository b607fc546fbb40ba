"""A metadata test set: the same images with their provenance signals, then without them.

Fakes (pixels from a corpus's generated images) are written the way real tools write them:
A1111 ``parameters``, ComfyUI graphs, a signed C2PA manifest, IPTC DigitalSourceType, the SDXL
invisible watermark, an AI tool in EXIF ``Software``. Reals (corpus photos) carry camera EXIF.
The ``stripped`` split holds every image again after a JPEG q90 re-encode without metadata, as
most upload pipelines deliver it. Metadata methods should win on ``declared`` and go silent on
``stripped``; pixel methods should not care.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np

from benchmarks.registry import Benchmark, fail, register_benchmark
from detector.argtypes import positive_int
from detector.image import decode_file
from detector.outputs import staging_folder
from training import metadata_writers as P
from training.datasets import load_samples
from training.degrade import encode_jpeg

__all__ = ["SIGNALS", "build_metadata_set"]

SPLITS = ("declared", "stripped")  # the same images with their signals, then re-encoded without
SIGNALS = ("a1111", "comfyui", "c2pa", "iptc", "sdxl_watermark", "exif_software")


def _declared(signal: str, pixels: np.ndarray, chain: P.SigningChain) -> bytes:
    if signal == "a1111":
        return P.encode(pixels, "PNG", png_text={"parameters": P.a1111_parameters()})
    if signal == "comfyui":
        return P.encode(pixels, "PNG", png_text=P.comfyui_chunks())
    if signal == "c2pa":
        return P.c2pa_sign(P.encode(pixels, "JPEG", quality=92), "image/jpeg", chain)
    if signal == "iptc":
        return P.encode(pixels, "JPEG", quality=92, xmp=P.iptc_xmp("trainedAlgorithmicMedia"))
    if signal == "sdxl_watermark":
        return P.encode(P.embed_watermark(pixels, "sdxl"), "PNG")
    if signal == "exif_software":
        return P.encode(pixels, "JPEG", quality=92, exif=P.software_exif("Midjourney v6"))
    raise ValueError(f"unknown signal {signal!r}")


def build_metadata_set(corpus: Path, out: Path, per_signal: int = 12, min_side: int = 256) -> Path:
    """Write ``out/manifest.csv`` with splits ``declared`` and ``stripped``."""
    samples = [s for s in load_samples(corpus) if s.split == "test"]
    fakes = [s for s in samples if s.label == 1]
    reals = [s for s in samples if s.label == 0]
    chain = P.make_signing_chain("synthdetect benchmark signer")
    out = Path(out)
    if out.exists() and not _replaceable(out):
        raise ValueError(f"--out {out} holds other files than a metadata set; choose a new folder")

    def big(s) -> np.ndarray | None:
        px = decode_file(s.path).pixels
        return px if min(px.shape[:2]) >= min_side else None  # the watermark needs 256x256

    fake_pixels = [p for p in (big(s) for s in fakes) if p is not None]
    real_pixels = [p for p in (big(s) for s in reals) if p is not None]
    if len(fake_pixels) < per_signal or len(real_pixels) < per_signal:
        raise ValueError(f"{corpus}: not enough test images of at least {min_side}px")
    # Each job: (label, signal, index of its source image). With fewer test images than jobs
    # an image serves several jobs; its source_id stays that image's, so that grouping by source
    # (and counting independent images) sees one image, not several.
    jobs = []
    for k, signal in enumerate(SIGNALS):
        for i in range(per_signal):
            jobs.append(("fake", signal, (k * per_signal + i) % len(fake_pixels)))
    for i in range(per_signal * len(SIGNALS)):
        jobs.append(("real", "real", i % len(real_pixels)))
    # built beside ``out`` and moved in whole: a failed build leaves no folder, an earlier set
    # stays as it was until the new one is complete
    # a fresh folder of its own beside out: a folder the user named <out>.partial was deleted
    staging = staging_folder(out)
    try:
        _write(jobs, {"fake": fake_pixels, "real": real_pixels}, chain, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out / "manifest.csv"


def _replaceable(out: Path) -> bool:
    """An earlier metadata set (or an empty folder) that a new build may replace."""
    if not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    return not names or ("manifest.csv" in names and names <= {"manifest.csv", *SPLITS})


def _write(jobs, pixels_of: dict, chain, out: Path) -> None:
    rows = []
    for n, (label, signal, source) in enumerate(jobs):
        pixels = pixels_of[label][source]
        if label == "fake":
            declared = _declared(signal, pixels, chain)
        else:
            declared = P.encode(pixels, "JPEG", quality=92, exif=P.camera_exif())
        for split, data in zip(
            SPLITS, (declared, encode_jpeg(decode_file_bytes(declared), 90)), strict=True
        ):
            ext = "jpg" if data[:3] == b"\xff\xd8\xff" else "png"
            rel = f"{split}/{label}/{signal}-{n:04d}.{ext}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
            rows.append({"path": rel, "label": label, "generator": signal, "family": f"metadata-{signal}" if label == "fake" else "camera",
                         "source_id": f"{label}-image{source}", "split": split, "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def decode_file_bytes(data: bytes) -> np.ndarray:
    from detector.image import decode

    return decode(data).pixels


# --- command line (the benchmark registry) ---------------------------------------------------


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--per-signal", type=positive_int, default=12)


def _run(args: argparse.Namespace) -> int:

    try:
        path = build_metadata_set(args.corpus, args.out, args.per_signal)
    except (ValueError, FileNotFoundError) as exc:
        return fail(exc)
    print(f"wrote {path}")
    return 0


register_benchmark(
    Benchmark(
        "metadata-set", "build the metadata test set (declared vs stripped)", _arguments, _run
    )
)
