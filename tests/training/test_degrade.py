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
        ({"p_shuffle": 2}, "augment.p_shuffle is a probability"),
        ({"shuffle_patch": 31}, "augment.shuffle_patch must be an even number"),
        ({"jpeg_quality": (90, 50)}, r"jpeg_quality must be \[low, high\]"),
        ({"jpeg_quality": (0, 90)}, "augment.jpeg_quality: jpeg setting 0"),
        ({"resize_scale": (0.0, 1.0)}, "augment.resize_scale: resize setting 0"),
    ],
)
def test_policy_refuses_impossible_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        AugmentPolicy(**settings)


def _squares(tile: np.ndarray, p: int) -> list[bytes]:
    _, h, w = tile.shape
    return sorted(
        tile[:, y : y + p, x : x + p].tobytes() for y in range(0, h, p) for x in range(0, w, p)
    )


def test_shuffle_permutes_whole_squares_and_keeps_the_residual_cells():
    import torch

    from detector.features import npr_residual

    tile = np.random.default_rng(0).normal(size=(3, 96, 96)).astype(np.float32)
    out = AugmentPolicy(p_shuffle=1.0, shuffle_patch=32).shuffle(tile, np.random.default_rng(1))
    assert out.shape == tile.shape and out.flags["C_CONTIGUOUS"]
    assert not np.array_equal(out, tile)
    assert _squares(out, 32) == _squares(tile, 32)  # the same 9 squares, moved
    # each square's NPR residual moves with it: the 2x2 cells are never cut
    res_in = npr_residual(torch.from_numpy(tile)[None])[0].numpy()
    res_out = npr_residual(torch.from_numpy(out)[None])[0].numpy()
    assert _squares(res_out, 32) == _squares(res_in, 32)
    # an odd offset would cut cells: a 2-pixel shift of the same tile is not a permutation
    assert _squares(np.roll(tile, 2, axis=2), 32) != _squares(tile, 32)


def test_shuffle_fires_with_its_probability_and_spares_the_stream_when_off():
    tile = np.arange(3 * 64 * 64, dtype=np.float32).reshape(3, 64, 64)
    assert AugmentPolicy().shuffle(tile, np.random.default_rng(0)) is tile
    rng, ref = np.random.default_rng(3), np.random.default_rng(3)
    AugmentPolicy(p_shuffle=0.0).shuffle(tile, rng)
    assert rng.random() == ref.random()
    fired = [
        AugmentPolicy(p_shuffle=0.5, shuffle_patch=16).shuffle(tile, np.random.default_rng(i))
        is not tile
        for i in range(200)
    ]
    assert 70 < sum(fired) < 130
    with pytest.raises(ValueError, match="shuffle_patch 48 does not divide the 64x64 tile"):
        AugmentPolicy(p_shuffle=1.0, shuffle_patch=48).shuffle(tile, np.random.default_rng(0))


def test_config_refuses_a_shuffle_square_that_does_not_divide_the_tile():
    from training.config import load_config

    cfg = load_config(None, ["input_size=192", "augment.p_shuffle=0.5", "augment.shuffle_patch=32"])
    assert cfg.augment.p_shuffle == 0.5 and cfg.augment.shuffle_patch == 32
    with pytest.raises(ValueError, match=r"shuffle_patch \(40\) must divide input_size \(192\)"):
        load_config(None, ["input_size=192", "augment.p_shuffle=0.5", "augment.shuffle_patch=40"])


def test_training_tiles_are_shuffled_after_the_chain(tmp_path):
    from PIL import Image

    from detector.preprocess import PreprocessConfig
    from training.data import TrainDataset
    from training.datasets import Sample

    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 170, 3), np.uint8)).save(path)
    samples, prep = [Sample(path, 1, "g")], PreprocessConfig(input_size=64)
    plain = TrainDataset(samples, prep, AugmentPolicy(p_jpeg=1.0), seed=4)[0][0].numpy()
    cut = TrainDataset(
        samples, prep, AugmentPolicy(p_jpeg=1.0, p_shuffle=1.0, shuffle_patch=16), seed=4
    )[0][0].numpy()
    # the same tile of the same degraded image (the shuffle draws last), its squares moved
    assert not np.array_equal(cut, plain)
    assert _squares(cut, 16) == _squares(plain, 16)


def test_freqmask_zeroes_a_share_of_the_fourier_coefficients():
    tile = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    out = AugmentPolicy(p_freqmask=1.0, freqmask_ratio=0.3).freqmask(tile, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == tile.shape and out.flags["C_CONTIGUOUS"]
    # a real image keeps its spectrum's symmetry: each coefficient is kept whole, kept half
    # (its mirror masked) or zeroed, on the three channels alike, a share 0.3 of them on average
    gain = np.fft.fft2(out, axes=(1, 2)) / np.fft.fft2(tile, axes=(1, 2))
    assert np.allclose(gain.imag, 0, atol=1e-4)
    levels = np.round(gain.real * 2) / 2
    assert np.allclose(gain.real, levels, atol=1e-4) and set(np.unique(levels)) == {0.0, 0.5, 1.0}
    assert np.array_equal(levels[0], levels[2])
    assert abs(levels.mean() - 0.7) < 0.03
    # off: the tile itself, and no draw from the stream
    rng, ref = np.random.default_rng(3), np.random.default_rng(3)
    assert AugmentPolicy().freqmask(tile, rng) is tile and rng.random() == ref.random()
    with pytest.raises(ValueError, match=r"freqmask_ratio is the share .* in \(0, 1\)"):
        AugmentPolicy(freqmask_ratio=1.0)
