"""Image degradations: one module for training augmentation and robustness benchmarks.

A ``Degradation`` is one operation with a fixed setting (``jpeg:75``, ``blur:1.5``,
``resize:0.5``, ``noise:3``); a chain applies several in order (``jpeg:50+blur:1``). Benchmarks
evaluate a grid of chains, applied equally to both classes; training samples chains from an
``AugmentPolicy`` (blur + JPEG as CNNDetection found essential).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "DEFAULT_GRID",
    "AugmentPolicy",
    "Degradation",
    "apply_chain",
    "encode_jpeg",
    "parse_chain",
    "parse_grid",
]

Kind = Literal["jpeg", "blur", "resize", "noise"]
_KINDS = ("jpeg", "blur", "resize", "noise")
DEFAULT_GRID = (
    "none,jpeg:95,jpeg:75,jpeg:50,jpeg:30,blur:1,blur:2,resize:0.75,resize:0.5,jpeg:50+blur:1"
)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG with 4:2:0 chroma subsampling, no metadata (Pillow/libjpeg defaults)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


@dataclass(frozen=True)
class Degradation:
    kind: Kind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown degradation {self.kind!r} (known: {', '.join(_KINDS)})")
        lo, hi = {"jpeg": (1, 100), "blur": (0, 50), "resize": (0.01, 4), "noise": (0, 255)}[
            self.kind
        ]
        if not lo <= self.value <= hi:
            raise ValueError(f"{self.kind} setting {self.value} outside [{lo}, {hi}]")

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def apply(self, pixels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """(H, W, 3) uint8 -> degraded (H', W', 3) uint8. ``rng`` is only used by noise."""
        if self.kind == "jpeg":
            with Image.open(io.BytesIO(encode_jpeg(pixels, round(self.value)))) as im:
                return np.asarray(im.convert("RGB"))
        if self.kind == "blur":
            if self.value == 0:
                return pixels
            img = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=self.value))
            return np.asarray(img)
        if self.kind == "resize":
            h, w = pixels.shape[:2]
            size = (max(1, round(w * self.value)), max(1, round(h * self.value)))
            return np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC))
        rng = rng or np.random.default_rng(0)
        noisy = pixels.astype(np.float32) + rng.normal(0, self.value, pixels.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def parse_chain(text: str) -> list[Degradation]:
    """``"jpeg:50+blur:1"`` -> [Degradation("jpeg", 50), Degradation("blur", 1)]; "none" -> []."""
    text = text.strip()
    if text in ("", "none"):
        return []
    chain = []
    for part in text.split("+"):
        kind, sep, value = part.strip().partition(":")
        if not sep:
            raise ValueError(f"degradation {part!r} needs a setting, e.g. jpeg:75")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"degradation {part!r}: {value!r} is not a number") from None
        chain.append(Degradation(kind.strip(), number))  # type: ignore[arg-type]
    return chain


def parse_grid(text: str) -> list[list[Degradation]]:
    """Comma-separated chains, e.g. the benchmark grid ``DEFAULT_GRID``."""
    return [parse_chain(item) for item in text.split(",")]


def chain_name(chain: list[Degradation]) -> str:
    return "+".join(str(d) for d in chain) or "none"


def apply_chain(
    pixels: np.ndarray, chain: list[Degradation], rng: np.random.Generator | None = None
) -> np.ndarray:
    for step in chain:
        pixels = step.apply(pixels, rng)
    return pixels


@dataclass(frozen=True)
class AugmentPolicy:
    """Sampled degradations for training: each operation fires with its probability.

    ``p_flip`` mirrors the image left to right before the chain (content changes side, the
    pixel-level traces stay); it is not a degradation, so benchmarks never apply it.

    ``p_shuffle`` cuts the training tile into ``shuffle_patch`` px squares and permutes them
    (after the chain, on the normalised tile): the scene's layout and objects are broken, every
    square's pixels are kept, so the model must find its evidence locally (Zheng et al. 2024,
    "Breaking Semantic Artifacts"). With an even square size the pixel residual's 2x2 cells
    stay whole; at 32 px the spectrum branch's blocks are the squares themselves, changed only
    along the seams by its 3x3 high-pass. Training only, never scored.

    ``p_freqmask`` zeroes a random ``freqmask_ratio`` of the normalised tile's 2-D Fourier
    coefficients (one mask for the three channels) and keeps the real part of the inverse
    transform, before the shuffle: no single band of frequencies can carry the label, so the
    model has to use several (Doloriel and Cheung 2024, "Frequency Masking for Universal
    Deepfake Detection"). Training only, never scored.
    """

    p_blur: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 3.0)
    p_jpeg: float = 0.1
    jpeg_quality: tuple[int, int] = (30, 100)
    p_resize: float = 0.0
    resize_scale: tuple[float, float] = (0.5, 1.0)
    p_noise: float = 0.0
    noise_sigma: tuple[float, float] = (0.5, 4.0)
    p_flip: float = 0.0
    p_shuffle: float = 0.0
    shuffle_patch: int = 32
    p_freqmask: float = 0.0
    freqmask_ratio: float = 0.15

    def __post_init__(self) -> None:
        for name in (
            "p_blur",
            "p_jpeg",
            "p_resize",
            "p_noise",
            "p_flip",
            "p_shuffle",
            "p_freqmask",
        ):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {p}")
        for name, kind in (
            ("blur_sigma", "blur"),
            ("jpeg_quality", "jpeg"),
            ("resize_scale", "resize"),
            ("noise_sigma", "noise"),
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"augment.{name} must be [low, high], got [{lo}, {hi}]")
            try:  # the ends must be settings the degradation itself accepts
                for end in (lo, hi):
                    Degradation(kind, end)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ValueError(f"augment.{name}: {exc}") from None
        if not 0.0 < self.freqmask_ratio < 1.0:
            raise ValueError(
                f"augment.freqmask_ratio is the share of coefficients zeroed, in (0, 1), "
                f"got {self.freqmask_ratio}"
            )
        if self.shuffle_patch < 2 or self.shuffle_patch % 2:
            raise ValueError(
                f"augment.shuffle_patch must be an even number of pixels (the residual's 2x2 "
                f"cells stay whole), got {self.shuffle_patch}"
            )

    @staticmethod
    def _fires(p: float, rng: np.random.Generator) -> bool:
        """True with probability ``p``; draws from ``rng`` only when ``p`` > 0, so a recipe
        without the option keeps the random stream it had before the option existed."""
        return p > 0 and rng.random() < p

    def flip(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mirrored with probability ``p_flip``."""
        if self._fires(self.p_flip, rng):
            return np.ascontiguousarray(pixels[:, ::-1])
        return pixels

    def shuffle(self, tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(C, S, S) tile with its ``shuffle_patch`` squares permuted, with probability
        ``p_shuffle``."""
        if not self._fires(self.p_shuffle, rng):
            return tile
        c, h, w = tile.shape
        p = self.shuffle_patch
        if h % p or w % p:
            raise ValueError(f"augment.shuffle_patch {p} does not divide the {h}x{w} tile")
        rows, cols = h // p, w // p
        squares = tile.reshape(c, rows, p, cols, p).transpose(1, 3, 0, 2, 4).reshape(-1, c, p, p)
        squares = squares[rng.permutation(rows * cols)]
        out = squares.reshape(rows, cols, c, p, p).transpose(2, 0, 3, 1, 4).reshape(c, h, w)
        return np.ascontiguousarray(out)

    def freqmask(self, tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(C, H, W) tile with ``freqmask_ratio`` of its Fourier coefficients zeroed, with
        probability ``p_freqmask``."""
        if not self._fires(self.p_freqmask, rng):
            return tile
        keep = rng.random(tile.shape[1:]) >= self.freqmask_ratio
        spectrum = np.fft.fft2(tile, axes=(1, 2)) * keep
        return np.ascontiguousarray(np.fft.ifft2(spectrum, axes=(1, 2)).real, dtype=np.float32)

    def sample(self, rng: np.random.Generator) -> list[Degradation]:
        chain: list[Degradation] = []
        if rng.random() < self.p_resize:
            chain.append(Degradation("resize", float(rng.uniform(*self.resize_scale))))
        if rng.random() < self.p_blur:
            chain.append(Degradation("blur", float(rng.uniform(*self.blur_sigma))))
        if rng.random() < self.p_noise:
            chain.append(Degradation("noise", float(rng.uniform(*self.noise_sigma))))
        if rng.random() < self.p_jpeg:
            lo, hi = self.jpeg_quality
            chain.append(Degradation("jpeg", float(rng.integers(lo, hi + 1))))
        return chain
