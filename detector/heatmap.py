"""Where the model saw generation: calibrated probabilities of tiles over the whole image.

The verdict's model score is the mean logit of an even grid of at most ``max_tiles`` tiles
(``detector.preprocess``). A heatmap covers the whole image instead: the full grid of
``input_size`` tiles (``HEATMAP_MAX_TILES`` at most, thinned evenly beyond), each tile's logit
calibrated with the model's temperature. Tiles that overlap (the grid's last row and column
touch the borders) are averaged where they overlap in the overlay. It is an explanation for a
reviewer, not a second verdict: a single tile sees one ``input_size`` square (192 px for the
bundled model) and is far noisier than the image's score.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from detector.engine import ModelBundle
from detector.preprocess import preprocess, tile_origins

__all__ = ["HEATMAP_MAX_TILES", "Heatmap", "overlay_png", "tile_heatmap"]

HEATMAP_MAX_TILES = 256


@dataclass(frozen=True)
class Heatmap:
    tile: int  # side of a tile, px
    boxes: list[tuple[int, int, int, int]]  # (x, y, width, height) in image pixels
    probabilities: list[float]  # calibrated P(generated) per tile
    threshold: float  # the model's threshold, for colouring
    width: int
    height: int

    def to_dict(self, png: bytes | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "tile": self.tile,
            "threshold": self.threshold,
            "tiles": [
                {"box": list(b), "probability": round(p, 4)}
                for b, p in zip(self.boxes, self.probabilities, strict=True)
            ],
        }
        if png is not None:
            d["overlay_png_base64"] = base64.b64encode(png).decode("ascii")
        return d


def tile_heatmap(
    bundle: ModelBundle, pixels: np.ndarray, max_tiles: int = HEATMAP_MAX_TILES
) -> Heatmap:
    """Per-tile calibrated probabilities over the whole image (pixels: (H, W, 3) uint8)."""
    prep = replace(bundle.preprocess, max_tiles=max_tiles)
    size = prep.input_size
    h, w = pixels.shape[:2]
    tiles = preprocess(pixels, prep)
    logits = np.asarray(bundle.logits(tiles), dtype=np.float64).reshape(-1)
    probs = bundle.calibration.probability(logits)
    # Origins in the padded frame; an image smaller than a tile is centred in it (reflect pad).
    ph, pw = max(0, size - h), max(0, size - w)
    boxes = []
    for y, x in tile_origins(h + ph, w + pw, size, max_tiles):
        x0, y0 = max(0, x - pw // 2), max(0, y - ph // 2)
        boxes.append((x0, y0, min(size, w - x0), min(size, h - y0)))
    return Heatmap(size, boxes, [float(p) for p in probs], bundle.calibration.threshold, w, h)


def _colour(p: np.ndarray, threshold: float) -> np.ndarray:
    """Blue (camera) through white at the threshold to red (generated), (..., 3) floats."""
    t = np.where(
        p >= threshold,
        (p - threshold) / max(1e-6, 1 - threshold),
        -(threshold - p) / max(1e-6, threshold),
    )
    red = np.array([220, 30, 30], np.float32)
    blue = np.array([30, 90, 220], np.float32)
    white = np.array([255, 255, 255], np.float32)
    t = np.clip(t, -1, 1)[..., None]
    return np.where(t >= 0, white + (red - white) * t, white + (blue - white) * (-t))


def overlay_png(
    pixels: np.ndarray, heat: Heatmap, alpha: float = 0.45, max_side: int = 1024
) -> bytes:
    """The image with the heatmap blended over it (tile overlaps averaged), as PNG bytes, at
    most ``max_side`` px on a side. The image is scaled down first and the tiles' boxes with
    it, so the work is at the overlay's size (at the image's, an 80 MP image took 5 GB)."""
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    img = Image.fromarray(pixels)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    base = np.asarray(img, dtype=np.float32)
    sh, sw = base.shape[:2]
    acc = np.zeros((sh, sw), np.float32)
    cnt = np.zeros((sh, sw), np.float32)
    for (x, y, bw, bh), p in zip(heat.boxes, heat.probabilities, strict=True):
        x0, y0 = int(x * sw / w), int(y * sh / h)
        x1, y1 = -(-(x + bw) * sw // w), -(-(y + bh) * sh // h)  # ceil: a box keeps >= 1 px
        acc[y0:y1, x0:x1] += p
        cnt[y0:y1, x0:x1] += 1
    covered = cnt > 0
    prob = np.where(covered, acc / np.maximum(cnt, 1), 0)
    colour = _colour(prob, heat.threshold)
    blend = np.where(covered[..., None], base * (1 - alpha) + colour * alpha, base * 0.6)
    img = Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False, compress_level=3)
    return buf.getvalue()
