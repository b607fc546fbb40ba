from __future__ import annotations

import numpy as np
import pytest

from detector.preprocess import MIN_SIDE, PreprocessConfig, preprocess, tile_origins, too_small

pytestmark = pytest.mark.unit


def test_grid_covers_the_image_and_is_capped():
    assert tile_origins(128, 128, 128, 9) == [(0, 0)]
    assert tile_origins(256, 256, 128, 9) == [(0, 0), (0, 128), (128, 0), (128, 128)]
    origins = tile_origins(300, 200, 128, 9)
    assert origins[0] == (0, 0) and origins[-1] == (300 - 128, 200 - 128)
    assert len(tile_origins(4000, 3000, 128, 9)) == 9


def _grid(origins):
    return len({y for y, _ in origins}), len({x for _, x in origins})


def test_a_thinned_grid_spends_its_tiles_where_they_cover_most():
    # a banner: one row of 16 tiles, not two rows 8 px apart of 8
    assert _grid(tile_origins(200, 5000, 192, 16)) == (1, 16)
    assert _grid(tile_origins(200, 2000, 192, 4)) == (1, 4)
    assert _grid(tile_origins(900, 600, 192, 16)) == (5, 3)  # every row covered, 15 tiles
    # where balanced rows and columns cover as much, they stay (the grid most images get)
    for h, w in [(1024, 1024), (1080, 1920), (3000, 4000), (768, 768)]:
        assert _grid(tile_origins(h, w, 192, 16)) == (4, 4)
    assert _grid(tile_origins(512, 512, 192, 9)) == (3, 3)


def test_inference_tiles_are_native_pixels_normalised():
    cfg = PreprocessConfig(input_size=32, max_tiles=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tiles = preprocess(img, cfg)
    assert tiles.shape == (4, 3, 32, 32) and tiles.dtype == np.float32
    expected = (img[:32, 32:64].astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(tiles[1], expected.transpose(2, 0, 1), atol=1e-6)


def test_small_images_are_reflect_padded_not_resized():
    cfg = PreprocessConfig(input_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    img = np.random.default_rng(1).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    tile = preprocess(img, cfg)[0]
    assert tile.shape == (3, 32, 32)
    # the original pixels sit unchanged in the middle
    np.testing.assert_allclose(tile[:, 11:21, 6:26], img.transpose(2, 0, 1) / 255, atol=1e-6)


def test_random_crop_is_seeded():
    cfg = PreprocessConfig(input_size=32)
    img = np.random.default_rng(2).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    a = preprocess(img, cfg, np.random.default_rng(7))
    b = preprocess(img, cfg, np.random.default_rng(7))
    assert a.shape == (1, 3, 32, 32) and np.array_equal(a, b)


def test_bgr_order():
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 255
    tile = preprocess(
        img, PreprocessConfig(input_size=16, channel_order="BGR", mean=(0, 0, 0), std=(1, 1, 1))
    )
    assert tile[0, 2].min() == 1.0 and tile[0, 0].max() == 0.0


def test_config_round_trip_and_validation():
    cfg = PreprocessConfig(input_size=96)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"size": 3})
    with pytest.raises(ValueError):
        PreprocessConfig(channel_order="GBR")
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4), np.uint8), cfg)


def test_too_small_is_the_size_floor_of_pixel_methods():
    assert MIN_SIDE == 32
    assert too_small(np.zeros((32, 5000, 3), np.uint8)) is None
    assert too_small(np.zeros((31, 5000, 3), np.uint8)) == (
        "5000x31 px is too small to judge by its pixels (at least 32 px on each side)"
    )
    assert too_small(np.zeros((1, 1, 3), np.uint8)) is not None
    # a method with coarser statistics passes its own floor
    assert too_small(np.zeros((48, 48, 3), np.uint8), 64).endswith("(at least 64 px on each side)")


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_tiles_are_bit_identical_to_normalising_before_the_transpose(order):
    # The formula every shipped model was trained and exported with: normalise in HWC, then
    # channels first. The fast path reorders memory, never the arithmetic, so scores and the
    # moderation memory's stored results do not move by a single bit.
    cfg = PreprocessConfig(
        input_size=48,
        max_tiles=9,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        channel_order=order,
    )
    img = np.random.default_rng(3).integers(0, 256, (130, 100, 3), dtype=np.uint8)
    tiles = np.stack([img[y : y + 48, x : x + 48] for y, x in tile_origins(130, 100, 48, 9)])
    if order == "BGR":
        tiles = tiles[..., ::-1]
    ref = tiles.astype(np.float32) * np.float32(1 / 255)
    ref -= np.asarray(cfg.mean, dtype=np.float32)
    ref /= np.asarray(cfg.std, dtype=np.float32)
    got = preprocess(img, cfg)
    assert got.flags.c_contiguous and np.array_equal(got, ref.transpose(0, 3, 1, 2))
