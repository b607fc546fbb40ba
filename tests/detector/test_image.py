from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from detector.image import DecodedImage, DecodeLimits, ImageError, decode, decode_file
from tests.imagefiles import bmp_header_only, bomb_png, png16_rgb, raw_png, save
from training import metadata_writers as P

pytestmark = pytest.mark.unit


def _jpeg(scene) -> bytes:
    return save(Image.fromarray(scene), "JPEG", quality=90)


# --- the bad-input matrix: every case is one ImageError with a readable reason --------------

BAD_INPUTS = {
    "empty": (b"", "empty input"),
    "text": (b"hello, I am not an image" * 10, "not a recognized image"),
    "html": (b"<html><body>nope</body></html>", "not a recognized image"),
    "png_signature_only": (b"\x89PNG\r\n\x1a\n", "corrupt or truncated"),
    "zero_width_png": (raw_png(0, 10, 8, 0, b""), ""),
    "zero_height_png": (raw_png(10, 0, 8, 0, b""), ""),
    "huge_declared_bmp": (bmp_header_only(200_000, 200_000), ""),
    "bomb_png": (bomb_png(20_000), "too many pixels"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_image_error(name):
    data, expected = BAD_INPUTS[name]
    with pytest.raises(ImageError) as info:
        decode(data)
    assert str(info.value), "the reason must not be empty"
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP"])
def test_truncated_files_raise_image_error(scene, fmt):
    noisy = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data = save(Image.fromarray(noisy), fmt)
    for cut in (len(data) // 2, 40, 12):
        with pytest.raises(ImageError):
            decode(data[:cut])


def test_limits_bytes_pixels_side_frames(scene):
    data = _jpeg(scene)
    with pytest.raises(ImageError, match="file too large"):
        decode(data, DecodeLimits(max_bytes=len(data) - 1))
    with pytest.raises(ImageError, match="too many pixels"):
        decode(data, DecodeLimits(max_pixels=320 * 320 - 1))
    with pytest.raises(ImageError, match="side too long"):
        decode(data, DecodeLimits(max_side=319))
    frames = [Image.fromarray(P.synthetic_scene(i, 32, 32)) for i in range(5)]
    gif = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="too many frames"):
        decode(gif, DecodeLimits(max_frames=4))
    assert decode(data, DecodeLimits(max_pixels=320 * 320)).width == 320


def test_bomb_is_refused_before_decompression():
    # 20000^2 = 400 MP declared in a few kB: refused from the header alone.
    data = bomb_png(20_000)
    assert len(data) < 50_000
    with pytest.raises(ImageError, match="too many pixels"):
        decode(data)
    # past Pillow's own hard limit (2x its 89.5 MP warning level) Pillow refuses first: the
    # message still gives this decoder's limit, not Pillow's
    with pytest.raises(ImageError, match=r"too many pixels: 10000000000 > limit of 80000000$"):
        decode(bomb_png(100_000))


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_limits_validate(bad):
    with pytest.raises(ValueError):
        DecodeLimits(max_pixels=bad)


def test_non_bytes_input():
    with pytest.raises(ImageError, match="expected image bytes"):
        decode("not bytes")  # type: ignore[arg-type]


def test_mutated_files_never_raise_anything_but_image_error(scene):
    """A small fuzz: random byte flips and cuts of valid files of every format."""
    rng = np.random.default_rng(1234)
    small = scene[:96, :96]
    originals = [
        save(Image.fromarray(small), fmt) for fmt in ("JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP")
    ]
    for _ in range(300):
        data = bytearray(originals[int(rng.integers(len(originals)))])
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            image = decode(bytes(data))
        except ImageError:
            continue
        assert image.pixels.dtype == np.uint8 and image.pixels.shape[2] == 3


# --- formats and modes ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_supported_format_decodes_to_rgb(scene, fmt):
    image = decode(save(Image.fromarray(scene), fmt))
    assert isinstance(image, DecodedImage)
    assert image.format == fmt
    assert image.pixels.shape == (320, 320, 3) and image.pixels.dtype == np.uint8
    assert not image.pixels.flags.writeable
    assert image.mime.startswith("image/")
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless
        assert np.array_equal(image.pixels, scene)


def test_cmyk_jpeg(scene):
    data = save(Image.fromarray(scene).convert("CMYK"), "JPEG", quality=95)
    image = decode(data)
    assert image.source_mode == "CMYK"
    assert image.pixels.shape == (320, 320, 3)
    assert any("CMYK" in n for n in image.notes)
    assert np.abs(image.pixels.astype(int) - scene.astype(int)).mean() < 12


def test_16bit_grey_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = decode(save(Image.fromarray(values), "PNG"))
    assert image.pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert any("16-bit" in n for n in image.notes)


def test_16bit_rgb_png():
    values = np.zeros((4, 5, 3), dtype=np.uint16)
    values[..., 0] = 65535
    values[..., 2] = 32768
    image = decode(png16_rgb(values))
    assert image.pixels.shape == (4, 5, 3)
    assert image.pixels[0, 0].tolist() == [255, 0, 128]


def test_animated_gif_scores_first_frame_and_says_so():
    frames = [
        Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))
    ]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    image = decode(data)
    assert image.frames == 3
    assert tuple(image.pixels[0, 0]) == (255, 0, 0)
    assert any("only the first was scored" in n for n in image.notes)


def test_exif_orientation_is_applied():
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:5, :5] = (255, 0, 0)  # red marker, stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    image = decode(save(Image.fromarray(img), "JPEG", quality=95, exif=exif.tobytes()))
    assert (image.width, image.height) == (20, 40)
    assert image.orientation == 6
    assert image.pixels[2, -3, 0] > 200 and image.pixels[2, -3, 2] < 60  # now top-right


def test_palette_with_transparency_composited_on_white():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    img.putpixel((0, 0), 1)
    data = save(img, "PNG", transparency=0)
    image = decode(data)
    assert tuple(image.pixels[0, 0]) == (0, 0, 255)
    assert tuple(image.pixels[4, 4]) == (255, 255, 255)  # transparent -> white
    assert any("alpha composited onto white" in n for n in image.notes)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_modes_composited_on_white(mode):
    img = Image.new(mode, (4, 4), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    image = decode(save(img, "PNG"))
    assert image.pixels.min() == 255


@pytest.mark.parametrize("mode", ["L", "1", "P"])
def test_grey_and_palette_modes(mode):
    img = Image.fromarray(P.synthetic_scene(3, 16, 16)).convert(mode)
    image = decode(save(img, "PNG"))
    assert image.pixels.shape == (16, 16, 3)


def test_float_tiff_is_refused_clearly():
    img = Image.fromarray(np.ones((4, 4), dtype=np.float32))
    with pytest.raises(ImageError, match="floating-point"):
        decode(save(img, "TIFF"))


# --- container metadata --------------------------------------------------------------------


def test_jpeg_metadata_kept(scene):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = P.iptc_xmp("digitalCapture")
    exif = P.camera_exif()
    data = P.encode(scene, "JPEG", exif=exif, xmp=xmp, comment="hello")
    img = Image.open(io.BytesIO(data))
    data = save(
        img,
        "JPEG",
        quality=90,
        exif=exif.tobytes(),
        xmp=xmp.encode(),
        icc_profile=icc,
        comment=b"hello",
    )
    meta = decode(data).metadata
    assert meta.exif["Make"] == "Canon" and meta.exif["FNumber"] == 4.0
    assert "digitalCapture" in meta.xmp
    assert meta.icc_profile is True
    assert meta.comment == "hello"
    assert meta.quantization and set(meta.quantization) == {0, 1}
    assert len(meta.quantization[0]) == 64


def test_png_text_and_xmp_kept(scene):
    data = P.encode(scene, "PNG", png_text={"parameters": "x", "Comment": "é"}, xmp=P.iptc_xmp("x"))
    meta = decode(data).metadata
    assert meta.text["parameters"] == "x" and meta.text["Comment"] == "é"
    assert meta.xmp and "DigitalSourceType" in meta.xmp
    assert meta.quantization is None


@pytest.mark.parametrize("chunk", ["zTXt", "iTXt"])
def test_png_with_a_text_chunk_past_pillows_limit_is_scored_and_says_so(scene, chunk):
    """Pillow refuses a whole PNG whose compressed text chunk unpacks past 1 MB: the pixels are
    still decoded, the other chunks still read, and a note names the chunk left unread."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "ComfyUI")
    big = '{"3": {"class_type": "KSampler", "inputs": {"x": "' + "x" * 1_200_000 + '"}}}'
    if chunk == "zTXt":
        info.add_text("prompt", big, zip=True)
    else:
        info.add_itxt("prompt", big, zip=True)
    data = save(Image.fromarray(scene), "PNG", pnginfo=info)
    image = decode(data)
    assert np.array_equal(image.pixels, scene) and image.data == data
    assert image.metadata.text == {"Software": "ComfyUI"}
    assert image.notes == (
        "PNG text chunk 'prompt' too large to read (over Pillow's text limits): not checked for "
        "metadata",
    )


def test_webp_exif_user_comment_decoded(scene):
    data = P.encode(scene, "WEBP", exif=P.user_comment_exif("Steps: 20, Seed: 1"))
    assert decode(data).metadata.exif["UserComment"] == "Steps: 20, Seed: 1"


def test_gps_is_only_a_flag(scene):
    exif = Image.Exif()
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 24.0)  # GPSLatitude
    meta = decode(P.encode(scene, "JPEG", exif=exif)).metadata
    assert meta.has_gps is True
    assert "GPSLatitude" not in meta.exif


def test_sha256_is_of_the_bytes(scene):
    import hashlib

    data = _jpeg(scene)
    assert decode(data).sha256 == hashlib.sha256(data).hexdigest()


def test_decode_file_errors(tmp_path, scene):
    with pytest.raises(ImageError, match="no such file"):
        decode_file(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="directory"):
        decode_file(tmp_path)
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpeg(scene))
    with pytest.raises(ImageError, match="file too large"):
        decode_file(big, DecodeLimits(max_bytes=100))
    assert decode_file(big).width == 320


def test_progressive_jpeg_with_thousands_of_scans_is_refused_before_decoding(scene):
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, "JPEG", quality=85, progressive=True)
    normal = buf.getvalue()
    scans = normal.count(b"\xff\xda")
    assert 2 <= scans <= 20  # an encoder's progressive script
    assert decode(normal).format == "JPEG"
    with pytest.raises(ImageError, match=f"too many JPEG scans: {scans} > limit of 2"):
        decode(normal, DecodeLimits(max_jpeg_scans=2))
    # The hostile file: thousands of empty DC-refinement scans (Ah=1, Al=0) before EOI.
    refine = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x00\x03\x00\x00\x00\x10" + b"\x00"
    hostile = normal[:-2] + refine * 3000 + b"\xff\xd9"
    with pytest.raises(ImageError, match="too many JPEG scans: 30"):
        decode(hostile)


@pytest.mark.parametrize(
    "body",
    [
        "Steps: 20, Seed: 1".encode("utf-16-be"),
        "Steps: 20, Seed: 1".encode("utf-16-le"),  # ExifTool in a little-endian EXIF block
        "\ufeffSteps: 20, Seed: 1".encode("utf-16-le"),  # with a BOM
        "\ufeffSteps: 20, Seed: 1".encode("utf-16-be"),
    ],
)
def test_unicode_user_comment_in_either_byte_order(body):
    from detector.image import decode_user_comment

    assert decode_user_comment(b"UNICODE\x00" + body) == "Steps: 20, Seed: 1"


def test_unicode_user_comment_without_latin_letters():
    from detector.image import decode_user_comment

    text = "夕焼けの灯台"  # no zero bytes to tell the order: the one that decodes cleanly
    assert decode_user_comment(b"UNICODE\x00" + text.encode("utf-16-be")) == text


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_colour_key_is_transparent_like_an_alpha(mode):
    """A PNG tRNS colour key (RGB or greyscale) marks transparent pixels as alpha 0 does:
    composited onto white, with the note, as RGBA, LA and palette transparency are."""
    px = np.zeros((8, 8, 3), np.uint8)
    px[:, 4:] = 200
    im = Image.fromarray(px).convert(mode)
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0 if mode == "L" else (0, 0, 0))
    image = decode(buf.getvalue())
    assert image.pixels[0, 0].tolist() == [255, 255, 255]
    assert image.pixels[0, 7].tolist() == [200, 200, 200]
    assert f"{mode} alpha composited onto white" in image.notes


def test_16_bit_greyscale_and_rgb_reduce_alike():
    values = np.array([[0, 255, 256, 32767, 32768, 65280, 65535, 511]], np.uint16)
    grey = io.BytesIO()
    Image.fromarray(values).save(grey, "PNG")  # colour type 0, 16 bits
    rgb16 = np.repeat(values[:, :, None], 3, axis=2)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)  # colour type 2
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 1, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))  # fmt: skip
    a, b = decode(grey.getvalue()).pixels, decode(png).pixels
    assert a[..., 0].tolist() == b[..., 0].tolist() == [(values >> 8).astype(np.uint8).tolist()[0]]


def test_tiff_orientation_is_reported_though_the_loader_applies_it(scene):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(scene[:40, :100]).save(buf, "TIFF", exif=exif)
    image = decode(buf.getvalue())
    assert image.pixels.shape[:2] == (100, 40)  # applied once
    assert image.orientation == 6 and "EXIF orientation 6 applied" in image.notes


def test_a_big_text_chunk_after_the_pixels_is_dropped_not_fatal(scene):
    """A zTXt past Pillow's limit after IDAT: the EXIF lookup loads the image first, and its
    error was swallowed there, so the PNG became undecodable ("AssertionError") instead of
    being scored without that chunk."""
    import zlib

    data = P.encode(scene, "PNG", png_text={"parameters": P.a1111_parameters()})
    body = b"Comment\0\0" + zlib.compress(b"a" * 8 * 1024 * 1024)
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body
    chunk += zlib.crc32(b"zTXt" + body).to_bytes(4, "big")
    iend = data.rindex(b"IEND") - 4
    image = decode(data[:iend] + chunk + data[iend:])
    assert np.array_equal(image.pixels, scene)
    assert image.metadata.text["parameters"] == P.a1111_parameters()
    assert any("'Comment' too large to read" in note for note in image.notes)


def test_a_pixel_limit_above_pillows_ceiling_is_refused_up_front():
    """--max-pixels 300000000 refused a 200 MP image with 'too many pixels: 200000000 > limit
    of 300000000': Pillow's own ceiling fired first. Such a limit is refused when it is set."""
    from detector.image import pillow_pixel_ceiling

    ceiling = pillow_pixel_ceiling()
    assert DecodeLimits(max_pixels=ceiling).max_pixels == ceiling
    with pytest.raises(ValueError, match=f"above the {ceiling} pixels Pillow opens at most"):
        DecodeLimits(max_pixels=ceiling + 1)


def test_an_error_message_over_several_lines_is_said_on_one(monkeypatch, scene):
    """pillow_heif's truncation error ends in a newline: the CLI's one line per unreadable
    file became two."""
    import detector.image as image_module

    def broken(data, limits):
        raise RuntimeError(
            "Invalid input: Unexpected end of file\n  (points to file position 379)\n"
        )

    monkeypatch.setattr(image_module, "_decode", broken)
    with pytest.raises(ImageError) as err:
        decode(P.encode(scene, "PNG"))
    assert str(err.value) == (
        "could not decode image (RuntimeError: Invalid input: Unexpected end of file "
        "(points to file position 379))"
    )


def test_a_16_bit_grey_transparent_key_is_composited_as_the_8_bit_one():
    """A tRNS grey key made its pixels white in 8-bit greyscale and was ignored in 16-bit."""
    import io

    import numpy as np
    from PIL import Image

    from detector.image import decode

    def png(array: np.ndarray, key: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "PNG", transparency=key)
        return buf.getvalue()

    grey = np.full((8, 8), 214, np.uint8)
    grey[0, 0] = 3
    eight = decode(png(grey, 214))
    sixteen = decode(png(grey.astype(np.uint16) * 257, 214 * 257))
    assert (eight.pixels[1, 1] == 255).all() and (eight.pixels[0, 0] == 3).all()
    np.testing.assert_array_equal(sixteen.pixels, eight.pixels)
    assert "transparent key composited onto white" in sixteen.notes[0]
