"""Co-occurrences of quantised residuals: the hand-made feature view of the probe."""

from __future__ import annotations

import numpy as np
import pytest

from detector.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from tests.imagefiles import random_png_samples
from training.cooccurrence import CooccurrenceFeatures
from training.probe import FeatureCache, ProbeError

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
    # the channels' joint residual (along rows), in channel order: slopes +1, 0, -1
    x = np.arange(24)[None, :].repeat(24, 0)
    rgb = np.stack([100 + x, np.full_like(x, 100), 150 - x], -1).astype(np.uint8)[None]
    joint = f(normalised(rgb))[0, 3 * BINS :] ** 2
    assert joint[(3 * LEVELS + 2) * LEVELS + 1] == pytest.approx(1.0)  # levels (3, 2, 1)


def test_extreme_residuals_are_clipped_to_the_outer_levels():
    """Columns alternating 0 / 255: every order's residual is the largest there is."""
    f = CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD)
    stripes = np.where(np.arange(24) % 2 == 0, 0, 255).astype(np.uint8)
    tile = np.broadcast_to(stripes[None, :, None], (24, 24, 3))[None]
    out = f(normalised(tile))[0] ** 2
    for r in range(3):
        hist = out[r * BINS : (r + 1) * BINS]
        assert hist[code(2, -2, 2, -2)] + hist[code(-2, 2, -2, 2)] == pytest.approx(0.5)


def test_content_at_another_brightness_gives_the_same_features():
    rng = np.random.default_rng(0)
    tile = rng.integers(50, 150, (3, 32, 32, 3)).astype(np.uint8)
    f = CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(f(normalised(tile)), f(normalised(tile + 40)), atol=1e-6)
    noisy = np.clip(tile + rng.normal(0, 6, tile.shape), 0, 255).astype(np.uint8)
    assert np.abs(f(normalised(noisy)) - f(normalised(tile))).max() > 0.05


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"need truncation >= 1, .* got 0, 4, 2"):
        CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD, truncation=0)
    with pytest.raises(ValueError, match="got 2, 4, 0"):
        CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD, stride=0)
    with pytest.raises(ValueError, match="make 4084101 bins"):
        CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD, truncation=10, order=5)
    with pytest.raises(ValueError, match="make 1092727 bins"):  # the channels' joint histogram
        CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD, truncation=51, order=2)
    # large but allowed: codes past the int16 range (33^3 of the joint histogram) do not wrap
    f = CooccurrenceFeatures(IMAGENET_MEAN, IMAGENET_STD, truncation=16, order=2)
    rng = np.random.default_rng(2)
    out = f(normalised(rng.integers(0, 256, (2, 16, 16, 3), np.uint8))) ** 2
    joint = out[:, -(33**3) :]
    assert np.allclose(joint.sum(1), 1.0) and joint[:, 32768:].sum() > 0


def test_the_feature_cache_takes_it_in_place_of_a_network(tmp_path):
    samples = random_png_samples(tmp_path, 2, seed=1)
    prep = PreprocessConfig(input_size=32, max_tiles=1)
    f = CooccurrenceFeatures(prep.mean, prep.std)
    logs: list[str] = []
    cache = FeatureCache(f, prep, tmp_path / "cache", log=logs.append)
    assert cache.tag == "cooc1-t2-o4-r2-s32"
    got = cache.get(samples)
    assert got.shape == (2, f.width)
    assert len(list((tmp_path / "cache").glob("cooc1-t2-o4-r2-s32-asis-*.npz"))) == 1
    assert len(logs) == 1 and logs[0].startswith("features (as-is): 2 images")
    again = FeatureCache(f, prep, tmp_path / "cache", log=logs.append).get(samples)
    assert len(logs) == 1  # read back, not extracted again
    np.testing.assert_allclose(again, got)
    with pytest.raises(ProbeError, match="undo the tiles' own normalisation"):
        FeatureCache(CooccurrenceFeatures((0.5,) * 3, (0.5,) * 3), prep)
