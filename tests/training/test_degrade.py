from __future__ import annotations

import numpy as np
import pytest

from detector.image import decode
from training.degrade import (
    DEFAULT_GRID,
    AugmentPolicy,
    Degradation,
    apply_chain,
    chain_name,
    encode_jpeg,
    parse_chain,
    parse_grid,
)
from training.metadata_writers import synthetic_scene

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def img():
    return synthetic_scene(3, 128, 160)


def test_jpeg_quality_sets_the_quantization_tables(img):
    q30 = decode(encode_jpeg(img, 30)).metadata.quantization[0]
    q90 = decode(encode_jpeg(img, 90)).metadata.quantization[0]
    assert sum(q30) > 4 * sum(q90)
    out = Degradation("jpeg", 30).apply(img)
    assert out.shape == img.shape and not np.array_equal(out, img)


def test_lower_quality_loses_more(img):
    err = {
        q: np.abs(Degradation("jpeg", q).apply(img).astype(int) - img).mean() for q in (95, 50, 20)
    }
    assert err[95] < err[50] < err[20]


def test_blur_removes_high_frequencies(img):
    def hf(x):
        return np.abs(np.diff(x.astype(float), axis=1)).mean()

    assert hf(Degradation("blur", 2).apply(img)) < 0.5 * hf(img)
    assert np.array_equal(Degradation("blur", 0).apply(img), img)


def test_resize_changes_the_size(img):
    assert Degradation("resize", 0.5).apply(img).shape == (64, 80, 3)


def test_noise_is_seeded(img):
    a = Degradation("noise", 3).apply(img, np.random.default_rng(1))
    b = Degradation("noise", 3).apply(img, np.random.default_rng(1))
    assert np.array_equal(a, b) and not np.array_equal(a, img)


def test_parse_chain_and_grid():
    assert parse_chain("jpeg:50+blur:1") == [Degradation("jpeg", 50), Degradation("blur", 1)]
    assert parse_chain("none") == []
    grid = parse_grid(DEFAULT_GRID)
    assert [chain_name(c) for c in grid][:3] == ["none", "jpeg:95", "jpeg:75"]
    assert chain_name(grid[-1]) == "jpeg:50+blur:1"


@pytest.mark.parametrize("bad", ["jpeg", "jpeg:abc", "sharpen:2", "jpeg:0", "resize:-1"])
def test_bad_chains_raise(bad):
    with pytest.raises(ValueError):
        parse_chain(bad)


def test_policy_is_deterministic_and_respects_probabilities(img):
    policy = AugmentPolicy(p_blur=1.0, p_jpeg=1.0)
    a = policy.sample(np.random.default_rng(5))
    assert [d.kind for d in a] == ["blur", "jpeg"]
    assert a == policy.sample(np.random.default_rng(5))
    assert AugmentPolicy(p_blur=0, p_jpeg=0).sample(np.random.default_rng(0)) == []
    out = apply_chain(img, a)
    assert out.shape == img.shape


def test_flip_mirrors_with_its_probability_and_spares_the_stream_when_off(img):
    always = AugmentPolicy(p_flip=1.0)
    out = always.flip(img, np.random.default_rng(0))
    assert np.array_equal(out, img[:, ::-1]) and out.flags["C_CONTIGUOUS"]
    assert not np.array_equal(out, img)
    assert AugmentPolicy(p_flip=0.0).flip(img, np.random.default_rng(0)) is img
    # p_flip 0 draws nothing, so recipes from before p_flip sample the same chains
    rng, ref = np.random.default_rng(3), np.random.default_rng(3)
    AugmentPolicy(p_flip=0.0, p_blur=1.0).flip(img, rng)
    assert rng.random() == ref.random()
    flips = [
        AugmentPolicy(p_flip=0.5).flip(img, np.random.default_rng(i)) is not img for i in range(200)
    ]
    assert 70 < sum(flips) < 130


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"p_blur": 1.5}, r"augment.p_blur is a probability in \[0, 1\], got 1.5"),
        ({"p_flip": -0.1}, "augment.p_flip is a probability"),
        ({"jpeg_quality": (90, 50)}, r"jpeg_quality must be \[low, high\]"),
        ({"jpeg_quality": (0, 90)}, "augment.jpeg_quality: jpeg setting 0"),
        ({"resize_scale": (0.0, 1.0)}, "augment.resize_scale: resize setting 0"),
    ],
)
def test_policy_refuses_impossible_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        AugmentPolicy(**settings)
