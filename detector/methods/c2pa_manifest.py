"""C2PA Content Credentials: a signed manifest that can declare how an image was made.

The active manifest's ``c2pa.actions`` assertion may carry an IPTC ``digitalSourceType``;
``trainedAlgorithmicMedia`` (or ``compositeWithTrainedAlgorithmicMedia``) on a manifest whose
signature and hashes validate is an explicit, cryptographically bound declaration of AI
generation, and decides the verdict. A manifest that fails validation (the pixels or the claim
changed after signing) is reported as tampered and trusted less.

Network access is disabled (no remote manifests, no OCSP). Signers are "untrusted" unless trust
anchors are configured: pass ``trust_anchors=PEM_PATH`` or set ``SYNTHDETECT_C2PA_TRUST_ANCHORS``.
"""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Any, ClassVar

from detector.image import DecodedImage
from detector.methods.base import (
    Evidence,
    Kind,
    MethodResult,
    PerImageMethod,
    Strength,
    Supports,
)
from detector.methods.registry import register_method
from detector.provenance import SourceCategory, SourceType, parse_source_type

__all__ = ["C2paManifest"]

try:  # the native library may be missing on exotic platforms; the method then reports why
    import c2pa

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the platform
    c2pa = None
    _IMPORT_ERROR = f"c2pa-python cannot be imported ({exc})"

TRUST_ENV = "SYNTHDETECT_C2PA_TRUST_ANCHORS"
# Validation failures that mean "unknown signer", not "modified": reported, not held against it.
_TRUST_CODES = {"signingCredential.untrusted", "signingCredential.ocsp.skipped"}
# P(generated) by rule for a manifest that validates; see README "Fusion".
_VALID = {
    SourceCategory.AI_GENERATED: (0.99, Strength.STRONG, Supports.GENERATED, True),
    SourceCategory.AI_COMPOSITE: (0.97, Strength.STRONG, Supports.GENERATED, True),
    SourceCategory.SYNTHETIC: (0.90, Strength.MODERATE, Supports.GENERATED, False),
}


@register_method("c2pa")
class C2paManifest(PerImageMethod):
    kind = Kind.METADATA
    description = "C2PA Content Credentials: signed digitalSourceType declarations"
    options: ClassVar[tuple[str, ...]] = ("trust_anchors",)

    def __init__(self, trust_anchors: str | None = None) -> None:
        path = trust_anchors or os.environ.get(TRUST_ENV)
        self._anchors: str | None = None
        if path:
            try:
                with open(path, encoding="utf-8") as fh:
                    self._anchors = fh.read()
            except OSError as exc:
                raise ValueError(f"cannot read C2PA trust anchors {path!r}: {exc}") from None
        self._local = threading.local()

    @classmethod
    def availability(cls, **options: Any) -> str | None:
        return _IMPORT_ERROR

    def _context(self) -> Any:
        # One native context per thread: the server scores from a worker pool.
        ctx = getattr(self._local, "context", None)
        if ctx is None:
            settings: dict[str, Any] = {
                "verify": {
                    "remote_manifest_fetch": False,
                    "ocsp_fetch": False,
                    "verify_trust": self._anchors is not None,
                }
            }
            if self._anchors:
                settings["trust"] = {"trust_anchors": self._anchors}
            ctx = c2pa.Context(c2pa.Settings.from_dict(settings))
            self._local.context = ctx
        return ctx

    def score_one(self, image: DecodedImage) -> MethodResult:
        if b"c2pa" not in image.data:  # every manifest store is labelled "c2pa"; skip the parse
            return self.abstain()
        try:
            reader = c2pa.Reader(image.mime, io.BytesIO(image.data), context=self._context())
        except Exception as exc:
            if "ManifestNotFound" in type(exc).__name__ or "ManifestNotFound" in str(exc):
                return self.abstain()
            return self.abstain(
                Evidence("c2pa.unreadable", f"C2PA data present but unreadable: {exc}")
            )
        with reader:
            store = json.loads(reader.json())
            state = reader.get_validation_state() or "Unknown"
        return self._judge(store, state)

    def _judge(self, store: dict[str, Any], state: str) -> MethodResult:
        manifests = store.get("manifests") or {}
        active = manifests.get(store.get("active_manifest") or "", {})
        failures = _failure_codes(store)
        tampered = sorted(set(failures) - _TRUST_CODES)
        valid = state in ("Valid", "Trusted") and not tampered
        signer = _signer(active)
        trust = "trusted signer" if state == "Trusted" else "signer not in a trust list"
        tool = _claim_generator(active)
        declared = _source_types(active)
        ingredients = [
            t
            for label, m in manifests.items()
            if label != store.get("active_manifest")
            for t in _source_types(m)
        ]
        details = {
            "validation_state": state,
            "failures": failures,
            "signer": signer,
            "claim_generator": tool,
            "source_types": [t.code for t in declared],
            "ingredient_source_types": sorted({t.code for t in ingredients}),
        }
        evidence: list[Evidence] = []
        if tampered:
            evidence.append(
                Evidence(
                    "c2pa.invalid",
                    f"C2PA manifest fails validation ({', '.join(tampered)}): the image or its "
                    "claim changed after signing",
                    Strength.MODERATE,
                )
            )
        best = max(declared, key=_rank, default=None)
        ingredient_ai = [t for t in ingredients if t.category == SourceCategory.AI_GENERATED]
        how = f"valid signature, {trust}" if valid else "signature or hashes do not validate"
        by = f" by {tool}" if tool else ""
        if best is not None and best.category in _VALID:
            prob, strength, supports, decisive = _VALID[best.category]
            message = f"C2PA manifest ({how}) declares {best.code} ({best.label}){by}"
            if not valid:  # a declaration of generation survives tampering, but less strongly
                prob, strength, decisive = 0.90, Strength.MODERATE, False
            evidence.insert(0, Evidence(f"c2pa.{best.category.value}", message, strength, supports))
            return self.result(prob, evidence, decisive=decisive, details=details)
        if ingredient_ai:
            evidence.insert(
                0,
                Evidence(
                    "c2pa.ai_ingredient",
                    f"C2PA manifest ({how}) lists an ingredient declared as "
                    f"{ingredient_ai[0].code}",
                    Strength.MODERATE,
                    Supports.GENERATED,
                ),
            )
            return self.result(0.90, evidence, details=details)
        if best is not None and best.category == SourceCategory.CAPTURE and valid:
            trusted = state == "Trusted"
            evidence.insert(
                0,
                Evidence(
                    "c2pa.capture",
                    f"C2PA manifest ({how}) declares {best.code} ({best.label}){by}",
                    Strength.STRONG if trusted else Strength.WEAK,
                    Supports.CAMERA,
                ),
            )
            return self.result(
                0.05 if trusted else 0.25,
                evidence,
                weight=1.0 if trusted else 0.5,
                details=details,
            )
        note = f"{best.code} ({best.label})" if best else "no digitalSourceType"
        evidence.append(Evidence("c2pa.present", f"C2PA manifest ({how}) with {note}{by}"))
        return self.abstain(*evidence, **details)


def _rank(source: SourceType) -> int:
    order = [
        SourceCategory.OTHER,
        SourceCategory.CAPTURE,
        SourceCategory.SYNTHETIC,
        SourceCategory.AI_COMPOSITE,
        SourceCategory.AI_GENERATED,
    ]
    return order.index(source.category)


def _source_types(manifest: dict[str, Any]) -> list[SourceType]:
    found = []
    for assertion in manifest.get("assertions") or []:
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            value = action.get("digitalSourceType") or (action.get("parameters") or {}).get(
                "digitalSourceType"
            )
            parsed = parse_source_type(str(value)) if value else None
            if parsed is not None:
                found.append(parsed)
    return found


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    infos = manifest.get("claim_generator_info") or []
    names = [str(i.get("name")) for i in infos if isinstance(i, dict) and i.get("name")]
    if names:
        return ", ".join(names)
    generator = manifest.get("claim_generator")
    return str(generator) if generator else None


def _signer(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("signature_info") or {}
    parts = [info.get("common_name"), info.get("issuer")]
    text = " / ".join(str(p) for p in parts if p)
    return text or None


def _failure_codes(store: dict[str, Any]) -> list[str]:
    results = store.get("validation_results") or {}
    active = results.get("activeManifest") or {}
    codes = [str(f.get("code")) for f in active.get("failure") or [] if f.get("code")]
    if not results:  # older readers only give the flat validation_status list
        codes = [str(s.get("code")) for s in store.get("validation_status") or [] if s.get("code")]
    return sorted(set(codes))
