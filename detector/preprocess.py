"""The one function that turns decoded pixels into model input.

Generation artifacts live in the highest frequencies, so pixels are never resized: images are
cut into tiles of ``input_size`` at native resolution. At inference the tiles form an even grid
over the image (at most ``max_tiles``; the model averages the tiles' logits); in training one
tile is cut at a random place. An image smaller than a tile is padded by reflection, the same
way for every class, so padding carries no label information.

``PreprocessConfig`` travels with the weights (in checkpoints and beside ONNX files); training,
evaluation, export checks, the server and the benchmarks all call ``preprocess`` with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "MIN_SIDE",
    "PreprocessConfig",
    "is_int",
    "is_number",
    "preprocess",
    "tile_origins",
    "too_small",
]

# The model method judges no image smaller than this on a side: below it, padding would be
# most of what it sees, and a score would look like evidence without being it. The default
# model was trained on images of 64 px and more; downscaled to 32 px, its 64 px GAN pool still
# measured AP 0.86-0.99 (benchmarks/results/accuracy-small-test.json, resize:0.5). Methods
# with coarser statistics pass their own floor to ``too_small``.
MIN_SIDE = 32

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    version: int = 1
    input_size: int = 128
    max_tiles: int = 9
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    pad_mode: str = "reflect"

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16, got {self.input_size}")
        if self.max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1, got {self.max_tiles}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.pad_mode not in ("reflect", "edge", "constant"):
            raise ValueError(f"pad_mode must be reflect, edge or constant, got {self.pad_mode!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values, std > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """From JSON (a sidecar, a checkpoint): a wrong type is a ValueError naming the field,
        never a TypeError from the checks above."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {data!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{unknown[0]} is an unknown field (known: {', '.join(known)})")
        values = dict(data)
        for key in ("version", "input_size", "max_tiles"):
            if key in values and not is_int(values[key]):
                raise ValueError(f"{key} must be an integer, got {values[key]!r}")
        for key in ("mean", "std"):
            if key in values:
                v = values[key]
                if not isinstance(v, list | tuple) or not all(is_number(x) for x in v):
                    raise ValueError(f"{key} must be a list of numbers, got {v!r}")
                values[key] = tuple(float(x) for x in v)
        return cls(**values)


def is_int(v: Any) -> bool:
    """A JSON integer (``true`` is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A JSON number (``true`` is not one)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def tile_origins(height: int, width: int, size: int, max_tiles: int) -> list[tuple[int, int]]:
    """Top-left corners of an even grid of ``size`` tiles covering (height, width).

    The grid has as many rows and columns as needed to cover the image, spread so the first
    and last tiles touch the borders; if that exceeds ``max_tiles`` the grid is thinned evenly.
    """
    full_y = max(1, math.ceil(height / size))
    full_x = max(1, math.ceil(width / size))
    ny, nx = full_y, full_x
    while ny * nx > max_tiles:
        if ny >= nx and ny > 1:
            ny -= 1
        elif nx > 1:
            nx -= 1
        else:
            break

    # The even thinning above keeps rows and columns balanced; where that wastes tiles (a
    # banner's second row of tiles 8 px below the first, an odd max_tiles leaving one unused)
    # the grid of at most max_tiles tiles that covers most of the image is taken instead.
    def covered(n: int, length: int) -> float:
        return min(length, n * size) / length if length > size else 1.0

    best = max(
        ((covered(r, height) * covered(c, width), r * c, r, c)
         for r in range(1, full_y + 1)
         for c in [min(full_x, max_tiles // r)] if c >= 1),
        default=None,
    )  # fmt: skip
    if best is not None and best[0] > covered(ny, height) * covered(nx, width) + 1e-9:
        ny, nx = best[2], best[3]
    ys = _spread(height - size, ny)
    xs = _spread(width - size, nx)
    return [(y, x) for y in ys for x in xs]


def too_small(pixels: np.ndarray, min_side: int = MIN_SIDE) -> str | None:
    """Why a pixel method must not judge this image, or None when it is large enough."""
    h, w = pixels.shape[:2]
    if min(h, w) >= min_side:
        return None
    return f"{w}x{h} px is too small to judge by its pixels (at least {min_side} px on each side)"


def _spread(span: int, n: int) -> list[int]:
    if span <= 0:
        return [0]
    if n == 1:
        return [span // 2]
    return [round(i * span / (n - 1)) for i in range(n)]


def _pad(pixels: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Pad to at least size x size (NumPy reflects repeatedly when the pad exceeds the side)."""
    h, w = pixels.shape[:2]
    if h >= size and w >= size:
        return pixels
    ph, pw = max(0, size - h), max(0, size - w)
    return np.pad(pixels, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode)


def preprocess(
    pixels: np.ndarray,
    config: PreprocessConfig,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (tiles, 3, S, S) float32, normalised.

    Without ``rng``: the inference grid (deterministic). With ``rng``: one random tile, as
    training samples it.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    size = config.input_size
    img = _pad(pixels, size, config.pad_mode)
    h, w = img.shape[:2]
    if rng is not None:
        origins = [(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)))]
    else:
        origins = tile_origins(h, w, size, config.max_tiles)
    tiles = np.stack([img[y : y + size, x : x + size] for y, x in origins])
    # Channels first while still uint8 (a quarter of the bytes to move), then the same float
    # arithmetic per channel plane: bit-identical to normalising in HWC and transposing after,
    # and about 4x faster on 9 tiles of 192 px (it is on every image's path).
    planes = tiles.transpose(0, 3, 1, 2)
    if config.channel_order == "BGR":
        planes = planes[:, ::-1]
    out = np.ascontiguousarray(planes).astype(np.float32)
    out *= np.float32(1 / 255)
    out -= np.asarray(config.mean, dtype=np.float32)[:, None, None]
    out /= np.asarray(config.std, dtype=np.float32)[:, None, None]
    return out
