"""Weak hints from EXIF and XMP free-text fields: software names and camera capture fields.

These fields are written by whatever saved the file last, are trivially edited, and are
stripped by most upload pipelines. They are hints only: a named generative tool is moderate
evidence, camera make/model with exposure settings is weak evidence of a capture, and a photo
editor's name is context that moves nothing. A named generative tool gets a probability with a
low fusion weight; camera fields are reported as weak evidence but the method abstains on them.
"""

from __future__ import annotations

from detector.image import DecodedImage, is_comfyui_graph
from detector.methods.base import (
    Evidence,
    Kind,
    MethodResult,
    PerImageMethod,
    Strength,
    Supports,
)
from detector.methods.registry import register_method
from detector.provenance import find_ai_tool, find_editor
from detector.xmp import NS, XmpError, parse_xmp

__all__ = ["ExifHints"]

# The fields a tool writes its own name in. Not ImageDescription, Artist or Copyright: those are
# people's words (a caption "Vista dalle colline", an artist named Dalle, a news photo about
# Midjourney), and a tool's name in them says nothing about what made the file.
_TEXT_TAGS = ("Software", "HostComputer", "Make", "Model")
_CAPTURE_TAGS = (
    "ExposureTime",
    "FNumber",
    "ISOSpeedRatings",
    "PhotographicSensitivity",
    "FocalLength",
    "LensModel",
)


def _free_text(image: DecodedImage) -> list[tuple[str, str]]:
    """(where, text) pairs from the fields tools sign their names in."""
    exif = _without_graphs(image.metadata.exif)
    found = [(f"EXIF {tag}", str(exif[tag])) for tag in _TEXT_TAGS if exif.get(tag)]
    if image.metadata.text.get("Software"):
        found.append(("PNG text 'Software'", image.metadata.text["Software"]))
    for packet in image.metadata.xmp_packets:
        try:
            props = parse_xmp(packet)
        except XmpError:
            props = {}
        for value in props.get((NS["xmp"], "CreatorTool"), []):
            found.append(("XMP CreatorTool", value))
    return found


def _without_graphs(exif: dict[str, object]) -> dict[str, object]:
    """EXIF without ComfyUI's graphs in Make and Model: not a device, not a tool's signature
    (generator_params reads them)."""
    return {k: v for k, v in exif.items() if not (k in ("Make", "Model") and is_comfyui_graph(v))}


def _device(exif: dict[str, object]) -> str:
    make, model = str(exif.get("Make") or "").strip(), str(exif.get("Model") or "").strip()
    if make and model.lower().startswith(make.lower().split()[0]):
        return model  # "Canon" + "Canon EOS R5" -> "Canon EOS R5"
    return f"{make} {model}".strip()


@register_method("exif_hints")
class ExifHints(PerImageMethod):
    kind = Kind.METADATA
    description = "EXIF/XMP software names and camera fields (weak hints)"

    def score_one(self, image: DecodedImage) -> MethodResult:
        texts = _free_text(image)
        exif = _without_graphs(image.metadata.exif)
        evidence: list[Evidence] = []
        details: dict[str, object] = {}
        ai = [(where, text, tool) for where, text in texts if (tool := find_ai_tool(text))]
        for where, text, tool in ai[:3]:
            evidence.append(
                Evidence(
                    "exif.ai_software",
                    f"{where} names a generative tool ({tool}): {text[:80]!r}",
                    Strength.MODERATE,
                    Supports.GENERATED,
                )
            )
        for where, text in texts:
            if editor := find_editor(text):
                evidence.append(Evidence("exif.editor", f"{where}: edited with {editor}"))
                details["editor"] = editor
                break
        camera = _device(exif)
        settings = [t for t in _CAPTURE_TAGS if exif.get(t) not in (None, "", 0)]
        if camera and settings:
            evidence.append(
                Evidence(
                    "exif.camera",
                    f"EXIF names a camera ({camera}) with capture settings ({', '.join(settings)})",
                    Strength.WEAK,
                    Supports.CAMERA,
                )
            )
            details["camera"] = camera
        elif camera:
            evidence.append(Evidence("exif.camera_name", f"EXIF names a device ({camera})"))
        if ai:
            details["tool"] = ai[0][2]
            return self.result(0.90, evidence, weight=0.5, details=details)
        # Camera fields are reported but give no probability: they are copied, forged and
        # stripped too easily for a camera claim (and absence proves nothing either way).
        return self.abstain(*evidence, **details)
