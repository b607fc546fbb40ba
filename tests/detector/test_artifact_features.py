"""The artifact method's features against textbook formulations written out in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detector.methods.artifact import FEATURE_NAMES, artifact_features

pytestmark = pytest.mark.unit


def _image(seed: int = 3, h: int = 72, w: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _dct2(block: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II by its defining double sum."""
    n = block.shape[0]
    out = np.zeros((n, n))
    for u in range(n):
        for v in range(n):
            cu = math.sqrt(1 / n) if u == 0 else math.sqrt(2 / n)
            cv = math.sqrt(1 / n) if v == 0 else math.sqrt(2 / n)
            total = 0.0
            for x in range(n):
                for y in range(n):
                    total += (
                        block[x, y]
                        * math.cos((2 * x + 1) * u * math.pi / (2 * n))
                        * math.cos((2 * y + 1) * v * math.pi / (2 * n))
                    )
            out[u, v] = cu * cv * total
    return out


def test_dct_features_match_the_defining_sum():
    pixels = _image()
    grey = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    h, w = grey.shape[0] // 8 * 8, grey.shape[1] // 8 * 8
    blocks = [grey[y : y + 8, x : x + 8] - 128 for y in range(0, h, 8) for x in range(0, w, 8)]
    want = np.log1p(np.mean([np.abs(_dct2(b)) for b in blocks], axis=0)).ravel()[1:]
    got = artifact_features(pixels)
    first = FEATURE_NAMES.index("dct_01")
    np.testing.assert_allclose(got[first : first + 63], want, rtol=1e-9, atol=1e-12)


def test_residual_kurtosis_matches_the_moment_definition():
    pixels = _image(seed=4)
    img = pixels.astype(np.float64)
    npr = img - np.repeat(np.repeat(img[::2, ::2], 2, axis=0), 2, axis=1)
    x = npr.ravel() - npr.mean()
    m2, m4 = np.mean([v * v for v in x]), np.mean([v**4 for v in x])
    got = artifact_features(pixels)[FEATURE_NAMES.index("npr_kurtosis")]
    assert got == pytest.approx(math.log1p(m4 / (m2 * m2 + 1e-12)), rel=1e-9)
