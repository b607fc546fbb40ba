"""The GPU data path: JPEGs decoded on the GPU in batches, tiled and normalised there.

On a GPU host one server process's CPU decoding, not the GPU, limits ``/v1/score?methods=model``
(one H100 runs the model at ~2,000 images/s; one process fed it ~380). Here a batch of JPEG
uploads goes to ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG), the EXIF
orientation is applied, and the tiles are cut and normalised on the device with the same grid
as ``detector.preprocess``; only the tiles come back for the engine.

The same checks as ``detector.image.decode`` run first, on the header, before any pixel is
decoded: byte, pixel and side limits and the progressive-scan limit. Whatever this path does
not take (other formats, CMYK or 16-bit JPEGs, multi-frame MPO, images smaller than a tile,
anything the GPU decoder refuses) goes back to the caller, which uses the CPU decoder: the
answer is the same either way. Without CUDA the same code runs torchvision's CPU decoder
(the tests' fallback, and a parity reference).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.image import DecodeLimits, ImageError
from detector.preprocess import PreprocessConfig, tile_origins

__all__ = ["GpuTiles", "gpu_tiles", "jpeg_header"]

_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class GpuTiles:
    tiles: np.ndarray  # (n, 3, S, S) float32, normalised, as ``preprocess`` makes them
    info: dict[str, Any]  # the verdict's image record (format, size, bytes, sha256, notes)


def jpeg_header(data: bytes, limits: DecodeLimits) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) of a JPEG this path can take, after the same limit
    checks ``decode`` makes; None for anything else (the CPU decoder takes it, and reports
    errors in its own words). Raises ``ImageError`` for a JPEG over a limit."""
    from PIL import Image

    from detector.image import _check_jpeg_scans, _check_size

    if len(data) > limits.max_bytes or not data.startswith(b"\xff\xd8"):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None  # CMYK / YCCK and the like: the CPU decoder converts them
            _check_size(im.size, limits)
            orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
            width, height = im.size
    except ImageError:
        raise
    except Exception:
        return None
    _check_jpeg_scans(data, limits)
    return width, height, orientation if 1 <= orientation <= 8 else 1


def _orient(t, orientation: int):
    """EXIF orientation on a (3, H, W) tensor, as PIL's ``exif_transpose`` does it."""
    import torch

    if orientation == 2:  # mirror left-right
        return torch.flip(t, dims=[2])
    if orientation == 3:  # rotate 180
        return torch.flip(t, dims=[1, 2])
    if orientation == 4:  # mirror top-bottom
        return torch.flip(t, dims=[1])
    if orientation == 5:  # transpose (main diagonal)
        return t.transpose(1, 2)
    if orientation == 6:  # rotate 270 (clockwise 90)
        return torch.rot90(t, k=-1, dims=[1, 2])
    if orientation == 7:  # transverse (anti-diagonal)
        return torch.flip(t.transpose(1, 2), dims=[1, 2])
    if orientation == 8:  # rotate 90
        return torch.rot90(t, k=1, dims=[1, 2])
    return t


def gpu_tiles(
    blobs: list[bytes], prep: PreprocessConfig, limits: DecodeLimits, device: str = "cuda"
) -> list[GpuTiles | ImageError | None]:
    """Per blob: its tiles (decoded on ``device``), an ``ImageError`` (over a limit), or None
    (not for this path: decode it on the CPU)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec; nvJPEG is here
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        from torchvision.io import ImageReadMode, decode_jpeg

    out: list[GpuTiles | ImageError | None] = [None] * len(blobs)
    take: list[int] = []
    headers: dict[int, tuple[int, int, int]] = {}
    size = prep.input_size
    for i, data in enumerate(blobs):
        try:
            head = jpeg_header(data, limits)
        except ImageError as exc:
            out[i] = exc
            continue
        if head is not None and min(head[0], head[1]) >= size:  # smaller: padded on the CPU
            headers[i] = head
            take.append(i)
    if not take:
        return out
    raw = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in take]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        try:
            decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = []
            for r in raw:  # one bad file must not send the others to the CPU
                try:
                    decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
    try:
        mean = torch.tensor(prep.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(prep.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    except RuntimeError:  # the device is unusable (no driver): every image takes the CPU path
        return out
    for i, img in zip(take, decoded, strict=True):
        if img is None:
            continue
        try:
            out[i] = _tiles_of(img, headers[i][2], blobs[i], prep, mean, std, device)
        except RuntimeError:  # out of device memory, a failing device: this one on the CPU
            out[i] = None
    return out


def _tiles_of(img, orientation: int, blob: bytes, prep: PreprocessConfig, mean, std, device):
    """One decoded image (3, H, W) on ``device`` -> its normalised tiles and the info."""
    import torch

    size = prep.input_size
    if orientation != 1:
        img = _orient(img, orientation)
    h, w = img.shape[1:]
    crops = torch.stack(
        [img[:, y : y + size, x : x + size] for y, x in tile_origins(h, w, size, prep.max_tiles)]
    )
    if prep.channel_order == "BGR":
        crops = crops.flip(1)
    tiles = (crops.to(torch.float32) / 255.0 - mean) / std
    notes = ["decoded on the GPU"] if str(device).startswith("cuda") else []
    if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied")
    info = {"format": "JPEG", "width": int(w), "height": int(h), "frames": 1,
            "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
            "notes": notes}  # fmt: skip
    return GpuTiles(np.ascontiguousarray(tiles.cpu().numpy()), info)
