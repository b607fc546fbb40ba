"""The GPU data path, run on torchvision's CPU decoder here (CUDA where there is one): the
same tiles as the CPU path, the same limits, and everything it does not take handed back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from detector.bundled import DEFAULT_MODEL
from detector.engine import load_bundle
from detector.gpu_decode import GpuTiles, gpu_tiles
from detector.image import DecodeLimits, ImageError, decode
from detector.preprocess import preprocess
from training import metadata_writers as P

pytestmark = pytest.mark.integration  # torch(vision)

PREP = load_bundle(DEFAULT_MODEL).preprocess


def _jpeg(px: np.ndarray, orientation: int = 1, mode: str = "RGB", **kw) -> bytes:
    im = Image.fromarray(px).convert(mode)
    exif = im.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, exif=exif.tobytes(), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiles_match_the_cpu_path_for_every_orientation(orientation):
    blob = _jpeg(P.synthetic_scene(orientation, 300, 420), orientation)
    (got,) = gpu_tiles([blob], PREP, DecodeLimits(), device="cpu")
    assert isinstance(got, GpuTiles)
    image = decode(blob)
    expected = preprocess(image.pixels, PREP)
    assert got.tiles.shape == expected.shape
    # measured: same libjpeg, same grid: float rounding only (nvJPEG on a GPU differs more)
    assert float(np.abs(got.tiles - expected).max()) < 1e-5
    assert (got.info["width"], got.info["height"]) == (image.width, image.height)
    assert got.info["sha256"] == image.sha256


def test_what_the_path_does_not_take_goes_back_and_limits_hold():
    scene = P.synthetic_scene(3, 300, 300)
    grey = _jpeg(scene, mode="L")
    cmyk = _jpeg(scene, mode="CMYK")
    png = P.encode(scene, "PNG")
    small = _jpeg(P.synthetic_scene(4, 100, 100))
    broken = _jpeg(scene)[:600] + b"\x00" * 50 + b"\xff\xd9"
    out = gpu_tiles([grey, cmyk, png, small, broken], PREP, DecodeLimits(), device="cpu")
    assert isinstance(out[0], GpuTiles)  # greyscale JPEGs are taken (expanded to RGB)
    expected = preprocess(decode(grey).pixels, PREP)
    assert float(np.abs(out[0].tiles - expected).max()) < 1e-5
    assert out[1] is None and out[2] is None  # CMYK, PNG: the CPU decoder converts them
    assert out[3] is None  # smaller than a tile: padded on the CPU
    (over,) = gpu_tiles([grey], PREP, DecodeLimits(max_pixels=200 * 200), device="cpu")
    assert isinstance(over, ImageError) and "too many pixels" in str(over)
    assert out[4] is None or isinstance(out[4], GpuTiles)  # the CPU decoder reports a bad file
    scans = _jpeg(scene, progressive=True)
    many = scans[:-2] + b"\xff\xda\x00\x02" * 200 + scans[-2:]  # empty scans before EOI
    (refused,) = gpu_tiles([many], PREP, DecodeLimits(), device="cpu")
    assert isinstance(refused, ImageError) and "too many JPEG scans" in str(refused)


def test_an_unusable_device_sends_every_image_to_the_cpu_path():
    """A GPU decoder asked for where CUDA cannot start (no driver; a CPU-only torch beside
    ONNX Runtime's GPU build) raised out of the request instead of decoding on the CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is usable here")
    blob = P.encode(P.synthetic_scene(7, 256, 256), "JPEG")
    assert gpu_tiles([blob, blob], PREP, DecodeLimits(), device="cuda") == [None, None]
