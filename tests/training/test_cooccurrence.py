"""Co-occurrences of quantised residuals: the hand-made feature view of the probe."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detector.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from training.cooccurrence import CooccurrenceFeatures
from training.datasets import Sample
from training.probe import FeatureCache

pytestmark = pytest.mark.unit

LEVELS = 5  # truncation 2
BINS = LEVELS**4


def normalised(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) tiles normalised as the preprocessing does."""
    x = pixels.transpose(0, 3, 1, 2) / 255.0
    mean, std = (np.asarray(v).reshape(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return ((x - mean) / std).astype(np.float32)


def code(*levels: int) -> int:
    """The bin of a tuple of residual levels in [-2, 2]."""
    out = 0
    for v in levels:
        out = out * LEVELS + v + 2
    return out


def test_a_flat_tile_has_every_residual_at_zero():
    f = CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD)
    out = f(normalised(np.full((2, 16, 16, 3), 117, np.uint8)))
    assert out.shape == (2, f.width) and f.width == 3 * BINS + LEVELS**3
    for r in range(3):
        hist = out[:, r * BINS : (r + 1) * BINS]
        assert np.allclose(hist[:, code(0, 0, 0, 0)], 1.0) and np.allclose(hist.sum(1), 1.0)
    assert np.allclose(out[:, 3 * BINS + (2 * LEVELS + 2) * LEVELS + 2], 1.0)  # (0, 0, 0)


def test_the_histograms_count_what_the_residuals_are():
    """A horizontal ramp of slope 1: first-order residual 1 along rows, 0 along columns;
    higher orders 0 everywhere. Alternating columns 0/3: first order +-3 clipped to +-2."""
    f = CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD)
    x = np.arange(24, dtype=np.uint8)[None, :].repeat(24, 0) + 100
    ramp = np.broadcast_to(x[..., None], (24, 24, 3))[None]
    out = f(normalised(ramp))[0] ** 2  # frequencies back from their square roots
    first = out[:BINS]
    assert first[code(1, 1, 1, 1)] == pytest.approx(0.5)  # the row half of the pooled counts
    assert first[code(0, 0, 0, 0)] == pytest.approx(0.5)  # the column half
    assert out[BINS + code(0, 0, 0, 0)] == pytest.approx(1.0)
    stripes = np.where(np.arange(24) % 2 == 0, 100, 103).astype(np.uint8)
    tile = np.broadcast_to(stripes[None, :, None], (24, 24, 3))[None]  # one row, columns vary
    first = f(normalised(tile))[0, :BINS] ** 2
    assert first[code(2, -2, 2, -2)] + first[code(-2, 2, -2, 2)] == pytest.approx(0.5)
    # the channels' joint residual (along rows): three channels moving together, (1, 1, 1)
    joint = f(normalised(ramp))[0, 3 * BINS :] ** 2
    assert joint[(3 * LEVELS + 3) * LEVELS + 3] == pytest.approx(1.0)


def test_content_at_another_brightness_gives_the_same_features():
    rng = np.random.default_rng(0)
    tile = rng.integers(50, 150, (3, 32, 32, 3)).astype(np.uint8)
    f = CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(f(normalised(tile)), f(normalised(tile + 40)), atol=1e-6)
    noisy = np.clip(tile + rng.normal(0, 6, tile.shape), 0, 255).astype(np.uint8)
    assert np.abs(f(normalised(noisy)) - f(normalised(tile))).max() > 0.05


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="truncation"):
        CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD, truncation=0)
    with pytest.raises(ValueError, match="truncation"):
        CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD, truncation=4, order=5)


def test_the_feature_cache_takes_it_in_place_of_a_network(tmp_path):
    rng = np.random.default_rng(1)
    samples = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, i, "real" if i == 0 else "x"))
    prep = PreprocessConfig(input_size=32, max_tiles=1)
    f = CooccurrenceFeatures(prep.mean, prep.std)
    cache = FeatureCache(f, prep, tmp_path / "cache", log=lambda _: None)
    assert cache.tag == "cooc-t2-o4-r2-s32"
    got = cache.get(samples)
    assert (
        got.shape == (2, f.width) and (tmp_path / "cache" / "cooc-t2-o4-r2-s32-asis.npz").exists()
    )
    np.testing.assert_allclose(FeatureCache(f, prep, tmp_path / "cache").get(samples), got)
