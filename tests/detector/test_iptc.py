from __future__ import annotations

import pytest

from detector.image import decode
from detector.methods import create_method
from detector.methods.base import Supports
from detector.provenance import IPTC_DST_PREFIX, SourceCategory, parse_source_type
from training import metadata_writers as P

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def method():
    return create_method("iptc_source_type")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("as_attribute", [True, False])
def test_trained_algorithmic_media_is_decisive(method, scene, fmt, as_attribute):
    data = P.encode(
        scene, fmt, xmp=P.iptc_xmp("trainedAlgorithmicMedia", as_attribute=as_attribute)
    )
    res = method.score([decode(data)])[0]
    assert res.decisive and res.probability == pytest.approx(0.98)
    assert res.evidence[0].code == "iptc.ai_generated"
    assert res.details["source_types"] == ["trainedAlgorithmicMedia"]


def test_element_text_form_and_https_variant(method, scene):
    uri = "https://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
        f"<Iptc4xmpExt:DigitalSourceType>{uri}</Iptc4xmpExt:DigitalSourceType>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    res = method.score([decode(P.encode(scene, "JPEG", xmp=xmp))])[0]
    assert res.decisive and res.evidence[0].code == "iptc.ai_composite"


def test_capture_declaration_is_weak_and_not_decisive(method, scene):
    res = method.score([decode(P.encode(scene, "JPEG", xmp=P.iptc_xmp("digitalCapture")))])[0]
    assert not res.decisive and res.probability == pytest.approx(0.25) and res.weight == 0.5
    assert res.evidence[0].supports is Supports.CAMERA


def test_unknown_code_abstains_with_info(method, scene):
    res = method.score([decode(P.encode(scene, "JPEG", xmp=P.iptc_xmp("madeUpCode")))])[0]
    assert res.abstained and res.evidence[0].code == "iptc.unknown_source_type"


def test_other_category_abstains(method, scene):
    res = method.score([decode(P.encode(scene, "JPEG", xmp=P.iptc_xmp("screenCapture")))])[0]
    assert res.abstained and "screenCapture" in res.evidence[0].message


def test_malformed_and_hostile_xmp(method, scene):
    broken = method.score([decode(P.encode(scene, "JPEG", xmp="<x:xmpmeta><rdf:RDF"))])[0]
    assert broken.abstained and broken.evidence[0].code == "xmp.malformed"
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        "<rdf:Description>&lol2;</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    res = method.score([decode(P.encode(scene, "JPEG", xmp=bomb))])[0]
    assert res.abstained and "refused" in res.evidence[0].message


def test_no_xmp_abstains_silently(method, scene):
    res = method.score([decode(P.encode(scene, "JPEG"))])[0]
    assert res.abstained and res.evidence == ()


@pytest.mark.parametrize(
    "value,category",
    [
        ("trainedAlgorithmicMedia", SourceCategory.AI_GENERATED),
        (IPTC_DST_PREFIX + "trainedAlgorithmicMedia", SourceCategory.AI_GENERATED),
        ("https://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture/", SourceCategory.CAPTURE),
        ("algorithmicMedia", SourceCategory.SYNTHETIC),
        ("digitalArt", SourceCategory.OTHER),
    ],
)
def test_source_type_vocabulary(value, category):
    assert parse_source_type(value).category is category


def test_unknown_source_type_is_none():
    assert parse_source_type("http://example.com/whatever") is None


_XMP_HEAD = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    'xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/">'
)


def test_an_ingredients_source_type_is_not_the_images(method, scene):
    """A photo that placed a generated ingredient: the photo declares digitalCapture at the top
    level; the ingredient's trainedAlgorithmicMedia is context, not the image's declaration."""
    xmp = (
        _XMP_HEAD
        + f'<rdf:Description rdf:about="" Iptc4xmpExt:DigitalSourceType="{IPTC_DST_PREFIX}digitalCapture">'
        "<xmpMM:Pantry><rdf:Bag><rdf:li><rdf:Description>"
        f"<Iptc4xmpExt:DigitalSourceType>{IPTC_DST_PREFIX}trainedAlgorithmicMedia</Iptc4xmpExt:DigitalSourceType>"
        "</rdf:Description></rdf:li></rdf:Bag></xmpMM:Pantry>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    res = method.score([decode(P.encode(scene, "JPEG", xmp=xmp))])[0]
    assert not res.decisive and res.probability == pytest.approx(0.25)  # the capture hint
    assert res.details["source_types"] == ["digitalCapture"]
    nested = [e for e in res.evidence if e.code == "iptc.nested_source_type"]
    assert len(nested) == 1 and "trainedAlgorithmicMedia" in nested[0].message


def test_a_qualified_value_is_read(method, scene):
    xmp = (
        _XMP_HEAD + '<rdf:Description rdf:about="">'
        '<Iptc4xmpExt:DigitalSourceType rdf:parseType="Resource">'
        f"<rdf:value>{IPTC_DST_PREFIX}trainedAlgorithmicMedia</rdf:value>"
        "</Iptc4xmpExt:DigitalSourceType></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    res = method.score([decode(P.encode(scene, "JPEG", xmp=xmp))])[0]
    assert res.decisive and res.evidence[0].code == "iptc.ai_generated"


@pytest.mark.parametrize(
    "value",
    [
        "https://evil.example/x/trainedAlgorithmicMedia",
        "notTrained/trainedAlgorithmicMedia",
        "http://cv.iptc.org.evil.example/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
    ],
)
def test_only_the_iptc_namespace_or_a_bare_code_counts(value):
    assert parse_source_type(value) is None
    assert parse_source_type("HTTPS://CV.IPTC.ORG/newscodes/digitalsourcetype/digitalCapture")
    assert parse_source_type("cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia")


def _with_app1_xmp_first(jpeg: bytes, packet: str) -> bytes:
    body = b"http://ns.adobe.com/xap/1.0/\x00" + packet.encode()
    return jpeg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


@pytest.mark.parametrize("first", ["trainedAlgorithmicMedia", "digitalCapture"])
def test_every_xmp_packet_of_a_jpeg_is_read(method, scene, first):
    """Two APP1 XMP packets that disagree: Pillow keeps the last alone, which hid an AI
    declaration behind a later camera one; the most generated declaration decides, whichever
    packet carries it."""
    other = "digitalCapture" if first == "trainedAlgorithmicMedia" else "trainedAlgorithmicMedia"
    data = _with_app1_xmp_first(P.encode(scene, "JPEG", xmp=P.iptc_xmp(other)), P.iptc_xmp(first))
    image = decode(data)
    assert len(image.metadata.xmp_packets) == 2
    res = method.score([image])[0]
    assert res.decisive and res.probability == pytest.approx(0.98)
    assert sorted(res.details["source_types"]) == ["digitalCapture", "trainedAlgorithmicMedia"]
    assert any(e.code == "xmp.packets" for e in res.evidence)


def test_a_png_with_an_itxt_and_a_text_xmp_packet_reads_both(method, scene):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", P.iptc_xmp("digitalCapture"))
    info.add_text("XML:com.adobe.xmp", P.iptc_xmp("trainedAlgorithmicMedia"))
    import io

    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, "PNG", pnginfo=info)
    res = method.score([decode(buf.getvalue())])[0]
    assert res.decisive and res.probability == pytest.approx(0.98)


def test_an_unknown_value_is_quoted_short(method, scene):
    res = method.score([decode(P.encode(scene, "PNG", xmp=P.iptc_xmp("x" * 100_000)))])[0]
    assert res.abstained
    (unknown,) = [e for e in res.evidence if e.code == "iptc.unknown_source_type"]
    assert len(unknown.message) < 200 and unknown.message.endswith(" (+99967 characters)")
