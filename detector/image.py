"""Safe decoding of untrusted image bytes.

``decode(data)`` is the only way a ``DecodedImage`` is made. It enforces size limits before any
pixel is decompressed, applies the EXIF orientation, converts every pixel mode to 8-bit RGB by an
explicit rule, keeps the container metadata the metadata methods read, and turns every failure
into one ``ImageError`` whose message is fit to show a user. Nothing else escapes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, TiffImagePlugin

__all__ = [
    "SUPPORTED_FORMATS",
    "ContainerMetadata",
    "DecodeLimits",
    "DecodedImage",
    "ImageError",
    "decode",
    "decode_file",
    "file_identity",
    "image_size",
    "is_comfyui_graph",
    "read_file",
]


def _phone_formats() -> tuple[str, ...]:
    """AVIF (Pillow's own plugin, when built with libavif) and HEIF, the iPhone default
    (``pillow-heif``'s plugin), when this installation can read them."""
    from PIL import features

    found = ["AVIF"] if features.check("avif") else []
    try:
        import pillow_heif
    except ImportError:
        return tuple(found)
    pillow_heif.register_heif_opener()  # registers the "HEIF" format with Pillow
    return (*found, "HEIF")


# Pillow plugins we open. Pillow's JPEG plugin also opens MPO, the multi-picture JPEG that many
# cameras and phones write (reported with format "MPO").
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", *_phone_formats())
_MIME = {
    "AVIF": "image/avif",
    "HEIF": "image/heif",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
}
# EXIF tags that are binary blobs or pointers, never useful as text evidence.
_SKIP_EXIF = {0x927C, 0x8769, 0x8825, 0xA005, 0x02BC, 0x83BB, 0x8773, 0x9C9B, 0x9C9C, 0x9C9D}
_MAX_EXIF_TEXT = 64 * 1024
_MAX_XMP = 4 * 1024 * 1024
_MAX_XMP_PACKETS = 8
_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"  # a JPEG APP1 segment that holds XMP


class ImageError(ValueError):
    """The bytes are not an image we can safely score. ``str(err)`` is the reason."""


@dataclass(frozen=True)
class DecodeLimits:
    """Resource limits applied before decompression. Defaults suit a public endpoint.

    ``max_pixels`` stays below Pillow's own decompression-bomb warning level (89.5 MP), so the
    larger of the two never silently decides.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 80_000_000
    max_side: int = 32_768
    max_frames: int = 1_000
    # Progressive JPEG scans. A camera or encoder writes about 10 (libjpeg's default script) and
    # an embedded thumbnail a few more; thousands of tiny scans make the decoder redo the whole
    # image for each (a 98 KB file with ~7,000 empty refinement scans of an 80 MP frame took 35 s).
    max_jpeg_scans: int = 100

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side", "max_frames", "max_jpeg_scans"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecodeLimits.{name} must be a positive integer, got {value!r}")
        ceiling = pillow_pixel_ceiling()
        if ceiling is not None and self.max_pixels > ceiling:
            raise ValueError(
                f"max_pixels {self.max_pixels} is above the {ceiling} pixels Pillow opens at "
                "most (twice its Image.MAX_IMAGE_PIXELS): it would refuse such images anyway"
            )


def pillow_pixel_ceiling() -> int | None:
    """The most pixels ``Image.open`` accepts: past it, it raises DecompressionBombError."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


@dataclass(frozen=True)
class ContainerMetadata:
    """What the file says about itself, before any pixel analysis."""

    exif: dict[str, Any] = field(default_factory=dict)
    xmp: str | None = None  # the first XMP packet
    xmp_extra: tuple[str, ...] = ()  # any further packets (a JPEG can carry several)
    text: dict[str, str] = field(default_factory=dict)  # PNG tEXt / zTXt / iTXt chunks
    comment: str | None = None  # JPEG COM segment, GIF comment extension
    icc_profile: bool = False
    quantization: dict[int, tuple[int, ...]] | None = None  # JPEG quantization tables
    has_gps: bool = False

    @property
    def xmp_packets(self) -> tuple[str, ...]:
        """Every XMP packet, the first one first."""
        return (self.xmp, *self.xmp_extra) if self.xmp else self.xmp_extra


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """RGB pixels after EXIF orientation, plus the original bytes and container metadata."""

    pixels: np.ndarray  # (H, W, 3) uint8, read-only
    data: bytes
    format: str
    metadata: ContainerMetadata
    frames: int = 1
    orientation: int = 1  # the EXIF orientation that was applied (1: none)
    source_mode: str = "RGB"
    notes: tuple[str, ...] = ()

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def mime(self) -> str:
        return _MIME.get(self.format, "application/octet-stream")

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def decode(data: bytes, limits: DecodeLimits | None = None) -> DecodedImage:
    """Decode untrusted bytes into a ``DecodedImage`` or raise ``ImageError`` with the reason."""
    limits = limits or DecodeLimits()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageError("empty input: 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(f"file too large: {len(data)} bytes > limit of {limits.max_bytes}")
    try:
        try:
            return _decode(data, limits)
        except ValueError as exc:
            # Pillow refuses a whole PNG whose compressed text chunks unpack past its text limits
            # (1 MB a chunk, 64 MB in all): score the pixels, say which chunks went unread.
            if "MAX_TEXT" not in str(exc) or not data.startswith(_PNG_MAGIC):
                raise
            kept, dropped = _without_big_text(data)
            image = _decode(kept, limits)
            note = (
                f"PNG text chunk{'s' if len(dropped) > 1 else ''} {', '.join(dropped)} too large "
                "to read (over Pillow's text limits): not checked for metadata"
            )
            return replace(image, data=data, notes=(*image.notes, note))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit (2x its warning level) fired inside Image.open, before ours
        # could: say it as ours does (the count from Pillow's message, the limit ours)
        found = re.search(r"Image size \((\d+) pixels\)", str(exc))
        if found is None:
            raise ImageError(f"too many pixels: refused as a decompression bomb ({exc})") from None
        raise ImageError(
            f"too many pixels: {int(found.group(1))} > limit of {limits.max_pixels}"
        ) from None
    except (OSError, EOFError, SyntaxError) as exc:
        # Pillow reports truncation and corrupt streams as OSError / SyntaxError.
        raise ImageError(f"corrupt or truncated image data ({_short(exc)})") from None
    except MemoryError:
        raise ImageError("image needs more memory than is available") from None
    except Exception as exc:  # the promise: no other exception type escapes decode()
        raise ImageError(f"could not decode image ({type(exc).__name__}: {_short(exc)})") from None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding pixels; None when the header
    cannot be read (``decode`` then says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as im:
            return im.size
    except Exception:  # any header Pillow cannot parse: decode reports it properly
        return None


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names, through symlinks: the same file or folder by any
    name (None where it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file, at most ``max_bytes`` of them, or an ``ImageError``.

    Only regular files are read (after following symlinks): a FIFO is opened without blocking
    and refused, as are devices (``/dev/urandom`` would never end) and sockets; a symlink loop
    or an unreadable file is one clear error; the read stops past the limit whatever ``stat``
    said (a file that grows while it is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read file ({_short(exc.strerror or exc)})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError("is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise ImageError(f"file too large: {info.st_size} bytes > limit of {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read file ({_short(exc.strerror or exc)})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageError(f"file too large: more than {max_bytes} bytes")
    return data


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def decode_file(path: str | os.PathLike[str], limits: DecodeLimits | None = None) -> DecodedImage:
    """Read (``read_file``: regular files only, bounded) and decode a file."""
    limits = limits or DecodeLimits()
    return decode(read_file(path, limits.max_bytes), limits)


def _decode(data: bytes, limits: DecodeLimits) -> DecodedImage:
    try:
        im = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.UnidentifiedImageError:
        sniffed = _sniff(data)
        if sniffed:
            raise ImageError(f"corrupt or truncated {sniffed} file (header unreadable)") from None
        names = ", ".join(SUPPORTED_FORMATS)
        raise ImageError(f"not a recognized image (supported: {names})") from None
    with im:
        fmt = im.format or "unknown"
        _check_size(im.size, limits)
        if fmt in ("JPEG", "MPO"):
            _check_jpeg_scans(data, limits)
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > limits.max_frames:
            raise ImageError(f"too many frames: {frames} > limit of {limits.max_frames}")
        notes: list[str] = []
        if frames > 1:
            kind = "pages" if fmt == "TIFF" else "frames"
            notes.append(f"{fmt} with {frames} {kind}: only the first was scored")
        im.seek(0)
        declared = _orientation(im)  # before load(): Pillow's TIFF loader applies and drops it
        im.load()
        metadata = _metadata(im)
        orientation = _orientation(im)
        source_mode = im.mode
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
            notes.append(f"EXIF orientation {orientation} applied")
        elif declared != 1:  # applied by the loader itself: say so all the same
            orientation = declared
            notes.append(f"EXIF orientation {orientation} applied")
        pixels, mode_note = _to_rgb(im)
    if mode_note:
        notes.append(mode_note)
    pixels.setflags(write=False)
    return DecodedImage(
        pixels=pixels,
        data=data,
        format=fmt,
        metadata=metadata,
        frames=frames,
        orientation=orientation,
        source_mode=source_mode,
        notes=tuple(notes),
    )


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _without_big_text(data: bytes) -> tuple[bytes, list[str]]:
    """The PNG without the compressed text chunks that unpack past Pillow's per-chunk limit
    (without any text chunk, if none does: then their total was too much), and their keys."""
    from PIL import PngImagePlugin

    chunks, pos = [], len(_PNG_MAGIC)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 12 + length
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length], data[pos:end]))
        pos = end
    text = {b"tEXt", b"zTXt", b"iTXt"}

    def too_big(kind: bytes, body: bytes) -> bool:
        _, _, rest = body.partition(b"\0")
        if kind == b"zTXt":
            packed = rest[1:]
        elif kind == b"iTXt" and rest[:1] == b"\x01":
            packed = rest[2:].split(b"\0", 2)[-1]
        else:
            return False
        unpack = zlib.decompressobj()
        try:
            return len(unpack.decompress(packed, PngImagePlugin.MAX_TEXT_CHUNK + 1)) > (
                PngImagePlugin.MAX_TEXT_CHUNK
            )
        except zlib.error:
            return False

    drop = [i for i, (kind, body, _) in enumerate(chunks) if kind in text and too_big(kind, body)]
    if not drop:
        drop = [i for i, (kind, _, _) in enumerate(chunks) if kind in text]
    keys = [repr(chunks[i][1].partition(b"\0")[0].decode("latin-1", "replace")[:79]) for i in drop]
    dropped = set(drop)
    body = b"".join(raw for i, (_, _, raw) in enumerate(chunks) if i not in dropped)
    return _PNG_MAGIC + body + data[pos:], keys


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (_PNG_MAGIC, "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(data: bytes) -> str | None:
    """The format a file claims by its magic bytes, to tell "truncated" from "not an image"."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":  # ISO base media: the brand says which image format
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"heim", b"heis"):
            return "HEIF"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _check_jpeg_scans(data: bytes, limits: DecodeLimits) -> None:
    """Refuse a JPEG with more scans than the limit, before decoding: each progressive scan
    re-decodes the image. Start-of-scan markers (0xFFDA): entropy-coded data stuffs every 0xFF
    with 0x00, so the pair only appears as a marker (or inside an embedded thumbnail's JPEG)."""
    scans = data.count(b"\xff\xda")
    if scans > limits.max_jpeg_scans:
        raise ImageError(
            f"too many JPEG scans: {scans} > limit of {limits.max_jpeg_scans} "
            "(refused before decoding: each progressive scan re-decodes the image)"
        )


def _check_size(size: tuple[int, int], limits: DecodeLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid dimensions {width}x{height}")
    if max(width, height) > limits.max_side:
        raise ImageError(f"image side too long: {width}x{height} > limit of {limits.max_side} px")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"too many pixels: {width}x{height} = {width * height} > limit of {limits.max_pixels}"
        )


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, str | None]:
    """Convert any Pillow mode to (H, W, 3) uint8 RGB, saying what was changed and how."""
    mode = im.mode
    keyed = "transparency" in im.info  # a PNG tRNS colour key: transparent like an alpha 0
    if mode == "RGB" and not keyed:
        return np.array(im, dtype=np.uint8), None
    if mode.startswith("I;16") or mode == "I":
        # 16-bit samples (Pillow opens 16-bit greyscale PNG/TIFF as I;16 or I): the high byte,
        # as Pillow itself reduces 16-bit RGB, so that both colour types give the same pixels
        wide = np.asarray(im).astype(np.int64)
        if mode == "I" and wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise ImageError("32-bit integer pixels outside the 16-bit range are not supported")
        grey = (wide >> 8).astype(np.uint8)
        key = im.info.get("transparency")
        if keyed and isinstance(key, int):  # a tRNS grey key: transparent, as in 8-bit grey
            grey[wide == key] = 255  # onto white, as every other transparent pixel
            return np.repeat(grey[:, :, None], 3, axis=2), (
                "16-bit greyscale reduced to 8-bit RGB, its transparent key composited onto white"
            )
        return np.repeat(grey[:, :, None], 3, axis=2), "16-bit greyscale reduced to 8-bit RGB"
    if mode == "F":
        raise ImageError("floating-point pixel data is not supported")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "RGB", "L") and keyed)
    if has_alpha:
        # Transparent pixels have no colour of their own: composite onto white, deliberately.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
        return np.array(rgb, dtype=np.uint8), f"{mode} alpha composited onto white"
    rgb = im.convert("RGB")
    note = None
    if mode == "CMYK":
        note = "CMYK converted to RGB without colour management"
    elif mode not in ("L", "1", "P"):
        note = f"{mode} converted to RGB"
    return np.array(rgb, dtype=np.uint8), note


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except ValueError as exc:
        if "MAX_TEXT" in str(exc):  # a PNG's getexif() loads its chunks: decode() handles this
            raise
        return 1
    except Exception:  # a broken EXIF block must not make the image undecodable
        return 1
    return value if 2 <= value <= 8 else 1


def _metadata(im: Image.Image) -> ContainerMetadata:
    info = im.info
    exif, has_gps = _exif(im)
    quant = getattr(im, "quantization", None)
    text: dict[str, str] = {}
    if im.format == "PNG":
        text = {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
    comment = info.get("comment")
    packets = _xmp_packets(im)
    return ContainerMetadata(
        exif=exif,
        xmp=packets[0] if packets else None,
        xmp_extra=tuple(packets[1:]),
        text=text,
        comment=_as_text(comment) if comment else None,
        icc_profile=bool(info.get("icc_profile")),
        quantization={int(k): tuple(int(x) for x in v) for k, v in quant.items()}
        if quant
        else None,
        has_gps=has_gps,
    )


def _xmp_packets(im: Image.Image) -> list[str]:
    """Every XMP packet the container carries, in file order, each once: a JPEG can hold
    several APP1 packets (Pillow's ``info`` keeps the last alone), a PNG both an iTXt and a
    tEXt one; at most _MAX_XMP_PACKETS."""
    raws: list[Any] = [
        body[len(_XMP_APP1) :]
        for marker, body in getattr(im, "applist", [])
        if marker == "APP1" and body.startswith(_XMP_APP1)
    ]
    raws += [im.info.get("xmp"), im.info.get("XML:com.adobe.xmp")]
    if isinstance(im, TiffImagePlugin.TiffImageFile):
        raws.append(im.tag_v2.get(700))  # TIFF XMLPacket
    packets: list[str] = []
    for raw in raws:
        text = _as_text(raw)[:_MAX_XMP].strip("\x00 \r\n\t") if raw else ""
        if text and text not in packets:
            packets.append(text)
    return packets[:_MAX_XMP_PACKETS]


def _exif(im: Image.Image) -> tuple[dict[str, Any], bool]:
    """Base IFD + Exif IFD as {tag name: JSON-friendly value}; GPS only as a flag (privacy)."""
    try:
        exif = im.getexif()
        ifds = [dict(exif), dict(exif.get_ifd(ExifTags.IFD.Exif))]
        has_gps = bool(exif.get_ifd(ExifTags.IFD.GPSInfo))
    except Exception:
        return {}, False
    out: dict[str, Any] = {}
    for ifd in ifds:
        for tag, value in ifd.items():
            if tag in _SKIP_EXIF:
                continue
            name = ExifTags.TAGS.get(tag, f"Tag0x{tag:04X}")
            if tag == ExifTags.Base.UserComment:
                value = decode_user_comment(value)
            if tag in (ExifTags.Base.Make, ExifTags.Base.Model) and is_comfyui_graph(value):
                # a JSON graph, kept whole (not cut at 64 KiB as other text is)
                out[name] = value.strip("\x00 ")[:_MAX_EXIF_JSON]
                continue
            clean = _exif_value(value)
            if clean is not None and clean != "":
                out[name] = clean
    return out, has_gps


# ComfyUI's WebP saver writes its graphs into EXIF Make ("workflow:{...}") and Model
# ("prompt:{...}"): a few hundred KB of JSON where a device name belongs.
_COMFYUI_PREFIXES = ("prompt:", "workflow:")
_MAX_EXIF_JSON = 16 * 1024 * 1024


def is_comfyui_graph(value: Any) -> bool:
    """An EXIF Make or Model value that is one of ComfyUI's graphs, not a device name."""
    return isinstance(value, str) and value.startswith(_COMFYUI_PREFIXES)


def _utf16_order(body: bytes) -> str:
    """The byte order of UTF-16 text without a recorded one (EXIF 2.3 leaves UNICODE's open:
    A1111 writes big-endian through piexif, ExifTool the EXIF block's order, little-endian in
    most files). A BOM decides; else the zero bytes do: text in Latin script has a zero high
    byte in every character, at even offsets in big-endian, odd in little-endian."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return "utf-16-be" if body[:2] == b"\xfe\xff" else "utf-16-le"
    even, odd = body[0::2].count(0), body[1::2].count(0)
    if even != odd:
        return "utf-16-be" if even > odd else "utf-16-le"
    candidates = {enc: body.decode(enc, errors="replace") for enc in ("utf-16-be", "utf-16-le")}
    return min(
        candidates, key=lambda e: candidates[e].count("\x00") + candidates[e].count("\ufffd")
    )


def decode_user_comment(value: Any) -> str | None:
    """EXIF UserComment: an 8-byte character-code prefix, then the text."""
    if isinstance(value, str):
        return value.strip("\x00 ")
    if not isinstance(value, bytes):
        return None
    prefix, body = value[:8], value[8:]
    if prefix.startswith(b"UNICODE"):
        text = body.decode(_utf16_order(body), errors="replace").lstrip("\ufeff")
    elif prefix.startswith(b"ASCII") or prefix == b"\x00" * 8:
        text = body.decode("utf-8", errors="replace")
    else:
        text = value.decode("utf-8", errors="replace")
    return text.strip("\x00 ")


def _exif_value(value: Any) -> Any:
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace").strip("\x00 ")
        printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
        return text[:_MAX_EXIF_TEXT] if text and printable / len(text) > 0.95 else None
    if isinstance(value, str):
        return value.strip("\x00 ")[:_MAX_EXIF_TEXT]
    if isinstance(value, TiffImagePlugin.IFDRational):
        return float(value) if value.denominator else None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, tuple):
        items = [_exif_value(v) for v in value[:16]]
        return items if all(v is not None for v in items) else None
    return None


def _as_text(raw: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return str(raw)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__  # one line: messages end in \n too
    return text if len(text) <= limit else text[: limit - 3] + "..."
