from __future__ import annotations

import pytest

from detector.image import decode
from detector.methods import create_method
from detector.methods.base import Strength, Supports
from detector.provenance import find_ai_tool, find_editor
from training import metadata_writers as P

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def method():
    return create_method("exif_hints")


@pytest.mark.parametrize(
    "software", ["Midjourney v6.1", "DALL·E 3", "Adobe Firefly Image 3", "NovelAI"]
)
def test_ai_tool_in_software_is_a_moderate_hint(method, scene, software):
    res = method.score([decode(P.encode(scene, "JPEG", exif=P.software_exif(software)))])[0]
    assert res.probability == pytest.approx(0.9) and res.weight == 0.5 and not res.decisive
    assert res.evidence[0].strength is Strength.MODERATE


def test_ai_tool_in_xmp_creator_tool(method, scene):
    xmp = P.iptc_xmp("digitalArt", creator_tool="Adobe Firefly")
    res = method.score([decode(P.encode(scene, "JPEG", xmp=xmp))])[0]
    assert res.probability == pytest.approx(0.9) and "XMP CreatorTool" in res.evidence[0].message


def test_camera_fields_are_weak_evidence_but_abstain(method, scene):
    res = method.score([decode(P.encode(scene, "JPEG", exif=P.camera_exif()))])[0]
    assert res.abstained
    assert res.evidence[0].code == "exif.camera"
    assert res.evidence[0].strength is Strength.WEAK and res.evidence[0].supports is Supports.CAMERA
    assert res.details["camera"] == "Canon EOS 5D Mark IV"


def test_editor_is_context_only(method, scene):
    res = method.score(
        [decode(P.encode(scene, "JPEG", exif=P.software_exif("Adobe Photoshop 25.0 (Windows)")))]
    )[0]
    assert res.abstained and res.evidence[0].code == "exif.editor"
    assert res.evidence[0].strength is Strength.INFO


def test_no_exif_abstains_silently(method, scene):
    res = method.score([decode(P.encode(scene, "PNG"))])[0]
    assert res.abstained and res.evidence == ()


@pytest.mark.parametrize(
    "text",
    ["Fluxus Editor 2", "Imagenomic Portraiture", "Dreamweaver", "GIMPshop-free text", "Canon EOS"],
)
def test_tool_names_need_word_boundaries(text):
    assert find_ai_tool(text) is None


def test_editor_names():
    assert find_editor("Adobe Lightroom Classic 13.0") == "Adobe Lightroom"
    assert find_editor("GIMP 2.10.34") == "GIMP"


@pytest.mark.parametrize(
    "tag,text",
    [
        ("ImageDescription", "Vista dalle colline di Firenze"),  # Italian "from the"
        ("ImageDescription", "A firefly glowing at dusk"),
        ("ImageDescription", "Imagen 3 de la boda"),  # Spanish "image"
        ("ImageDescription", "Protest against Midjourney outside the courthouse"),  # a news caption
        ("Artist", "Maria Dalle"),
    ],
)
def test_captions_and_names_are_not_tool_fields(method, scene, tag, text):
    from PIL import ExifTags

    exif = P.camera_exif()
    exif[getattr(ExifTags.Base, tag)] = text
    res = method.score([decode(P.encode(scene, "JPEG", exif=exif))])[0]
    assert res.abstained and "tool" not in res.details
    assert res.evidence[0].code == "exif.camera"


@pytest.mark.parametrize("text", ["Dalle", "Firefly", "firefly photo app", "Imagenes"])
def test_plain_words_are_not_tool_names(text):
    assert find_ai_tool(text) is None


@pytest.mark.parametrize(
    "text,tool",
    [("DALLE3", "DALL-E"), ("DALL-E 2", "DALL-E"), ("Firefly Image 2", "Adobe Firefly"),
     ("Google Imagen", "Google Imagen")],
)  # fmt: skip
def test_tool_names_with_their_versions(text, tool):
    assert find_ai_tool(text) == tool
