from __future__ import annotations

import numpy as np
import pytest
import torch

from training.generators import GENERATORS, PrepareContext
from training.generators.trained import ConvAutoencoder, SmallDCGAN, _train_autoencoder
from training.provenance import synthetic_scene

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def crops():
    return np.stack([synthetic_scene(i, 96, 96) for i in range(4)])


def test_registry_names_families_and_pools():
    assert {"realesrgan_x4plus", "realesrgan_animevideov3", "dcgan_faces", "dcgan_texture"} <= set(
        GENERATORS.names()
    )
    assert sum(GENERATORS.get(n).family == "autoencoder" for n in GENERATORS.names()) >= 3
    for name in GENERATORS.names():
        cls = GENERATORS.get(name)
        assert cls.pool in ("crops256", "crops64") and cls.version and cls.family


@pytest.mark.parametrize("kind", ["transposed", "nearest", "bilinear", "pixelshuffle"])
def test_autoencoders_keep_the_size(kind):
    x = torch.rand(1, 3, 64, 64)
    assert ConvAutoencoder(kind)(x).shape == x.shape


def test_training_is_deterministic(crops, tmp_path):
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = ConvAutoencoder("nearest")
        _train_autoencoder(model, PrepareContext(tmp_path, 3, 3, crops, lambda m: None))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_weights_are_cached_and_reused(crops, tmp_path):
    gen = GENERATORS.get("ae_bilinear")()
    logs: list[str] = []
    ctx = PrepareContext(tmp_path, 0, 2, crops, logs.append)
    gen.prepare(ctx)
    again = GENERATORS.get("ae_bilinear")()
    again.prepare(ctx)
    assert "training" in logs[0] and "cached" in logs[1]
    out = again.transform([crops[0]])
    assert out[0].shape == crops[0].shape and out[0].dtype == np.uint8
    assert np.array_equal(out[0], gen.transform([crops[0]])[0])


def test_gan_samples(crops, tmp_path):
    gen = GENERATORS.get("dcgan_texture")()
    gen.prepare(PrepareContext(tmp_path, 0, 2, crops, lambda m: None))
    images = gen.sample(3, np.random.default_rng(0))
    assert len(images) == 3 and images[0].shape == (64, 64, 3)
    assert SmallDCGAN()(torch.randn(2, 64, 1, 1)).shape == (2, 3, 64, 64)
