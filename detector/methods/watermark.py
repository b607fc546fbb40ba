"""Invisible watermarks of Stable Diffusion releases (``invisible-watermark``, method ``dwtDct``).

The reference pipelines embed a fixed payload: SD 1.x the bytes ``StableDiffusionV1`` (136
bits), SD 2.x ``SDV2`` (32 bits), SDXL the 48 bits ``0xB3EC907BB19E``. The ``dwtDct`` scheme
writes each bit into the largest non-DC coefficient of a 4x4 block of the Haar approximation of
the U (chroma) plane, cycling through the payload in raster order, and reads it back by majority
over the blocks that carry that bit.

This module decodes that scheme itself, vectorised with NumPy (the reference decoder loops over
blocks in Python and imports torch and OpenCV); a unit test checks it bit for bit against the
reference decoder. Because some pipelines hand the encoder RGB arrays as if they were BGR, both
channel orders are read.

Decision levels follow the SDXL reference thresholds on matched bits of 48 (<=27 none, <=33
partial, <=35 likely, >35 very likely). For the other payload lengths the levels are set to the
same chance false-match probability under independent fair bits (see ``_level_cutoffs``). The
watermark is public: it can be removed (a JPEG re-encode at quality 75 erases it; q95 keeps it
on smooth content, see the tests, but of the pinned sources' generated files 16.9% read "very
likely" as published and 1.0% after a q90 re-encode) or forged, so it is evidence when
present and says nothing when absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detector.image import DecodedImage
from detector.methods.base import (
    Evidence,
    Kind,
    MethodResult,
    PerImageMethod,
    Strength,
    Supports,
)
from detector.methods.registry import register_method

__all__ = ["PAYLOADS", "Payload", "decode_bits", "match_payloads"]

_SCALE = 36.0  # quantisation step of the reference encoder for the U plane
_BLOCK = 4
MIN_PIXELS = 256 * 256  # the reference codec refuses smaller images
# Measured on the 8,319 files of the pinned sources list, whole (the mark repeats over the
# image's block grid from its corner; a crop scrambles it): "likely" fires on 25 of the 4,249
# generated files and 2 of the 4,070 photos as published (0.59% and 0.05%: likelihood ratio
# 12), and on 25 and 6 after a JPEG q90 re-encode (0.59% and 0.15%: ratio 4; few photo hits,
# so both ratios are rough): P 0.8, the ratio that holds for both. "Very likely" fires on none
# of the photos either way (on 16.9% of the generated files as published, 1.0% after q90) and
# is decisive (benchmarks/results/metadata-rates-wild.json).
LIKELY_PROBABILITY = 0.8


@dataclass(frozen=True)
class Payload:
    key: str
    generator: str
    bits: tuple[int, ...]


def _bits_of_bytes(data: bytes) -> tuple[int, ...]:
    return tuple(int(b) for b in np.unpackbits(np.frombuffer(data, dtype=np.uint8)))


def _bits_of_int(value: int, width: int) -> tuple[int, ...]:
    return tuple(int(c) for c in format(value, f"0{width}b"))


PAYLOADS = {
    p.key: p
    for p in (
        Payload("sd1", "Stable Diffusion 1.x", _bits_of_bytes(b"StableDiffusionV1")),
        Payload("sd2", "Stable Diffusion 2.x", _bits_of_bytes(b"SDV2")),
        Payload("sdxl", "Stable Diffusion XL", _bits_of_int(0xB3EC907BB19E, 48)),
    )
}


def _tail(n: int, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def _level_cutoffs(n: int) -> tuple[int, int, int]:
    """Smallest matched-bit counts for (partial, likely, very likely) at SDXL's tail levels."""
    levels = (_tail(48, 28), _tail(48, 34), _tail(48, 36))
    return tuple(next(k for k in range(n + 1) if _tail(n, k) <= level) for level in levels)


_CUTOFFS = {key: _level_cutoffs(len(p.bits)) for key, p in PAYLOADS.items()}


def _u_plane(pixels: np.ndarray, swap_rb: bool) -> np.ndarray:
    """The U plane of OpenCV's 8-bit BGR->YUV conversion (fixed point, 14-bit shift).

    ``swap_rb`` reads the array as the reference encoder does when handed RGB as if it were BGR.
    """
    p = pixels.astype(np.int32)
    r, g, b = (p[..., 2], p[..., 1], p[..., 0]) if swap_rb else (p[..., 0], p[..., 1], p[..., 2])
    y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    u = ((b - y) * 8061 + (128 << 14) + (1 << 13)) >> 14
    return np.clip(u, 0, 255).astype(np.float64)


_HAAR = 0.7071067811865476  # PyWavelets' Haar filter tap
_STRIPE_PIXELS = 1 << 20  # pixels per step (rows of a multiple of 8): bounds memory
# Pixels read at most: the payload repeats over every 4x4 block in raster order, so the top
# rows of a large image vote for every bit (4 MP: ~65,000 blocks, over 400 votes per bit of
# the longest payload); work and memory stay bounded however large the image is.
MAX_READ_PIXELS = 1 << 22


def decode_bits(pixels: np.ndarray, swap_rb: bool = False) -> np.ndarray:
    """Per-block bits of the dwtDct scheme, in embedding order (one bool per 4x4 block).

    The Haar approximation is computed in float64 in the same order as PyWavelets (rows, then
    columns), so blocks whose coefficient sits exactly on a decision boundary fall the same way
    as in the reference decoder. Only the top ``MAX_READ_PIXELS`` of the image are read (whole
    rows of blocks): an image of up to 4 MP is read whole, as the reference decoder reads it.
    """
    rows, cols = pixels.shape[0] // 4 * 4, pixels.shape[1] // 4 * 4
    nbr, nbc = rows // 2 // _BLOCK, cols // 2 // _BLOCK
    step = 2 * _BLOCK
    nbr = min(nbr, max(1, MAX_READ_PIXELS // max(1, cols) // step))
    stripe = max(step, _STRIPE_PIXELS // max(1, cols) // step * step)
    out = []
    for top in range(0, nbr * step, stripe):
        u = _u_plane(pixels[top : min(top + stripe, nbr * step), :cols], swap_rb)
        half = _HAAR * u[0::2] + _HAAR * u[1::2]
        ca = _HAAR * half[:, 0::2] + _HAAR * half[:, 1::2]
        blocks = (
            ca[:, : nbc * _BLOCK]
            .reshape(ca.shape[0] // _BLOCK, _BLOCK, nbc, _BLOCK)
            .transpose(0, 2, 1, 3)
            .reshape(-1, _BLOCK * _BLOCK)
        )
        pos = np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1
        val = np.abs(blocks[np.arange(len(blocks)), pos])
        out.append(np.mod(val, _SCALE) > 0.5 * _SCALE)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def _vote(block_bits: np.ndarray, length: int) -> np.ndarray:
    """Majority per payload position, with the reference decoder's rounding (avg*255 > 127)."""
    idx = np.arange(len(block_bits)) % length
    ones = np.bincount(idx, weights=block_bits.astype(np.float64), minlength=length)
    count = np.bincount(idx, minlength=length)
    return ones / np.maximum(count, 1) * 255 > 127


_RANK = {"none": 0, "partial": 1, "likely": 2, "very likely": 3}


@dataclass(frozen=True)
class Match:
    payload: Payload
    matched: int
    swap_rb: bool

    @property
    def level(self) -> str:
        partial, likely, very = _CUTOFFS[self.payload.key]
        if self.matched >= very:
            return "very likely"
        if self.matched >= likely:
            return "likely"
        if self.matched >= partial:
            return "partial"
        return "none"


def match_payloads(pixels: np.ndarray) -> list[Match] | None:
    """Best match of each known payload over both channel orders; None if undecodable."""
    if pixels.shape[0] * pixels.shape[1] < MIN_PIXELS:
        return None
    best: dict[str, Match] = {}
    for swap in (False, True):
        block_bits = decode_bits(pixels, swap)
        if block_bits.size == 0:  # a side under one block (a 4 x 16,384 strip): nothing to read
            return None
        share = float(block_bits.mean())
        if share < 0.02 or share > 0.98:
            continue  # flat chroma (e.g. greyscale): every block reads the same, no signal
        for key, payload in PAYLOADS.items():
            got = _vote(block_bits, len(payload.bits))
            matched = int(np.sum(got == np.array(payload.bits, dtype=bool)))
            if key not in best or matched > best[key].matched:
                best[key] = Match(payload, matched, swap)
    return list(best.values()) if best else None


@register_method("invisible_watermark")
class InvisibleWatermark(PerImageMethod):
    kind = Kind.METADATA
    description = "Stable Diffusion 1.x / 2.x / XL invisible watermarks (dwtDct)"

    def score_one(self, image: DecodedImage) -> MethodResult:
        matches = match_payloads(image.pixels)
        if not matches:
            return self.abstain()
        # the strongest level first (each payload's cutoffs differ: SD 1.x's 'very likely' is a
        # lower share of its 136 bits than SD 2.x's 'partial' of its 32), then the share
        top = max(matches, key=lambda m: (_RANK[m.level], m.matched / len(m.payload.bits)))
        n = len(top.payload.bits)
        details = {
            "generator": top.payload.generator,
            "payload": top.payload.key,
            "matched_bits": top.matched,
            "bits": n,
            "level": top.level,
            "channel_order": "RGB read as BGR" if top.swap_rb else "BGR",
            "all": {m.payload.key: m.matched for m in matches},
        }
        text = f"{top.payload.generator} invisible watermark: {top.matched}/{n} bits match"
        if top.level == "very likely":
            ev = Evidence("watermark.very_likely", text, Strength.STRONG, Supports.GENERATED)
            # The generator's own pipeline wrote this mark (chance match: ~1 in 5,000 for SDXL);
            # like a declaration, it decides: nobody marks a real photo to get it flagged.
            return self.result(0.98, [ev], decisive=True, details=details)
        if top.level == "likely":
            ev = Evidence("watermark.likely", text, Strength.MODERATE, Supports.GENERATED)
            return self.result(LIKELY_PROBABILITY, [ev], details=details)
        # "partial" (SDXL: 28-33 of 48 bits) happens by chance on a large share of unmarked
        # images, so it stays in the details and produces no evidence.
        return self.abstain(**details)
