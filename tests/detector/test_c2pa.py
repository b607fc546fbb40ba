from __future__ import annotations

import pytest

from detector.image import decode
from detector.methods import create_method
from detector.methods.base import Supports
from tests.imagefiles import png_chunk
from training import metadata_writers as P

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def method():
    return create_method("c2pa")


@pytest.fixture(scope="module")
def jpeg(scene):
    return P.encode(scene, "JPEG")


@pytest.mark.parametrize("fmt,mime", [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_signed_ai_generated_manifest_is_decisive(method, scene, signing_chain, fmt, mime):
    data = P.c2pa_sign(P.encode(scene, fmt), mime, signing_chain, "trainedAlgorithmicMedia")
    res = method.score([decode(data)])[0]
    assert res.probability == pytest.approx(0.99)
    assert res.decisive
    assert res.evidence[0].code == "c2pa.ai_generated"
    assert res.evidence[0].supports is Supports.GENERATED
    assert res.details["validation_state"] == "Valid"
    assert "synthdetect test signer" in res.details["signer"]
    assert res.details["source_types"] == ["trainedAlgorithmicMedia"]
    assert "not in a trust list" in res.evidence[0].message


def test_composite_with_ai_is_decisive(method, jpeg, signing_chain):
    data = P.c2pa_sign(jpeg, "image/jpeg", signing_chain, "compositeWithTrainedAlgorithmicMedia")
    res = method.score([decode(data)])[0]
    assert res.decisive and res.probability == pytest.approx(0.97)
    assert res.evidence[0].code == "c2pa.ai_composite"


def test_capture_claim_is_weak_evidence_for_camera(method, jpeg, signing_chain):
    res = method.score([decode(P.c2pa_sign(jpeg, "image/jpeg", signing_chain, "digitalCapture"))])[
        0
    ]
    assert not res.decisive
    assert res.probability == pytest.approx(0.25) and res.weight == 0.5
    assert res.evidence[0].supports is Supports.CAMERA


def test_trust_anchor_makes_signer_trusted(tmp_path, jpeg, signing_chain):
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(signing_chain.root_pem)
    method = create_method("c2pa", trust_anchors=str(anchors))
    data = P.c2pa_sign(jpeg, "image/jpeg", signing_chain, "digitalCapture")
    res = method.score([decode(data)])[0]
    assert res.details["validation_state"] == "Trusted"
    assert res.probability == pytest.approx(0.05) and res.weight == 1.0


def test_unreadable_trust_anchor_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="trust anchors"):
        create_method("c2pa", trust_anchors=str(tmp_path / "missing.pem"))


def test_bytes_added_after_signing_invalidate_the_manifest(method, scene, signing_chain):
    data = P.c2pa_sign(P.encode(scene, "PNG"), "image/png", signing_chain)
    iend = data.rindex(b"IEND") - 4
    tampered = data[:iend] + png_chunk(b"tEXt", b"Comment\x00added later") + data[iend:]
    res = method.score([decode(tampered)])[0]
    assert any(e.code == "c2pa.invalid" for e in res.evidence)
    assert not res.decisive and res.probability == pytest.approx(0.90)
    assert res.details["validation_state"] == "Invalid"


def test_tampered_jpeg_tail(method, jpeg, signing_chain):
    data = bytearray(P.c2pa_sign(jpeg, "image/jpeg", signing_chain))
    data[-200] ^= 0xFF  # inside the entropy-coded data, still decodable
    res = method.score([decode(bytes(data))])[0]
    codes = [e.code for e in res.evidence]
    assert "c2pa.invalid" in codes and "c2pa.ai_generated" in codes
    assert res.probability == pytest.approx(0.90) and not res.decisive
    assert "assertion.dataHash.mismatch" in res.details["failures"]


def test_manifest_declaring_human_digital_art_abstains_with_evidence(method, jpeg, signing_chain):
    res = method.score([decode(P.c2pa_sign(jpeg, "image/jpeg", signing_chain, "digitalArt"))])[0]
    assert res.abstained
    assert [e.code for e in res.evidence] == ["c2pa.present"]
    assert "digitalArt" in res.evidence[0].message


def test_manifest_without_any_source_type(method):
    store = {
        "active_manifest": "urn:a",
        "manifests": {"urn:a": {"claim_generator_info": [{"name": "Editor"}], "assertions": []}},
        "validation_results": {"activeManifest": {"failure": []}},
    }
    res = method._judge(store, "Valid")
    assert res.abstained and "no digitalSourceType" in res.evidence[0].message


def test_ai_ingredient_in_an_edited_image(method):
    created = {
        "label": "c2pa.actions",
        "data": {
            "actions": [
                {
                    "action": "c2pa.created",
                    "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
                }
            ]
        },
    }
    store = {
        "active_manifest": "urn:edit",
        "manifests": {
            "urn:edit": {
                "assertions": [
                    {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.opened"}]}}
                ]
            },
            "urn:gen": {"assertions": [created]},
        },
        "validation_results": {"activeManifest": {"failure": []}},
    }
    res = method._judge(store, "Valid")
    assert res.probability == pytest.approx(0.90) and not res.decisive
    assert res.evidence[0].code == "c2pa.ai_ingredient"


def test_no_manifest_abstains_silently(method, jpeg):
    res = method.score([decode(jpeg)])[0]
    assert res.abstained and res.evidence == ()


def test_garbage_manifest_is_unreadable_not_an_exception(method, scene):
    # A JPEG whose comment contains the store label but no JUMBF: reader fails, method abstains.
    res = method.score([decode(P.encode(scene, "JPEG", comment="c2pa c2pa c2pa"))])[0]
    assert res.abstained
