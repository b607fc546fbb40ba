"""Hand-built image files for the tests: the odd and hostile cases encoders refuse to write."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_WILD = Path(__file__).resolve().parents[2] / "shared" / "data" / "wild-train"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG with exactly the IHDR we ask for (including invalid ones) and given raw scanlines."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def png16_rgb(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one) from an (H, W, 3) uint16 array."""
    h, w, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    return raw_png(w, h, 16, 2, rows)


def bomb_png(side: int) -> bytes:
    """A tiny file that declares side x side greyscale pixels (all zero, compresses ~1000:1)."""
    row = b"\x00" * (side + 1)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(min(side, 64))) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def bmp_header_only(width: int, height: int) -> bytes:
    """A BMP whose header claims width x height 24-bit pixels but carries almost no data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info))
    return header + info + b"\x00" * 16


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def wild_real_photos(limit: int) -> list[Path]:
    """Real camera-photo crops from ../shared/data/wild-train (empty list when absent)."""
    manifest = SHARED_WILD / "manifest.csv"
    if not manifest.exists():
        return []
    import csv

    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] == "real"]
    step = max(1, len(rows) // limit)
    return [SHARED_WILD / r["file"] for r in rows[::step][:limit]]


def random_png_samples(folder: Path, n: int, seed: int, side: int = 40) -> list:
    """``n`` PNGs of uniform noise (``side`` px square) written to ``folder``, as real
    ``training.datasets.Sample`` rows: inputs for feature extraction, not for their labels."""
    from training.datasets import Sample

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        path = folder / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, 0, "real"))
    return samples
