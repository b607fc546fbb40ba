"""IPTC ``DigitalSourceType`` declared in the image's XMP packet.

Generators and editors that follow the IPTC guidance (Midjourney, Google, Adobe, many CMSs)
write ``Iptc4xmpExt:DigitalSourceType``. The field is unsigned: anyone can add or strip it, so a
declaration of AI generation is taken at its word (nobody gains by falsely labelling their image
as generated), while a declaration of camera capture is only a weak hint.
"""

from __future__ import annotations

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
from detector.provenance import SourceCategory, parse_source_type
from detector.xmp import NS, XmpError, parse_xmp_layers

__all__ = ["IptcSourceType"]

# P(generated) assigned by rule to each declared category; not fitted on data (see README).
_PROBABILITY = {
    SourceCategory.AI_GENERATED: (0.98, Strength.STRONG, Supports.GENERATED, True),
    SourceCategory.AI_COMPOSITE: (0.95, Strength.STRONG, Supports.GENERATED, True),
    SourceCategory.SYNTHETIC: (0.85, Strength.MODERATE, Supports.GENERATED, False),
    SourceCategory.CAPTURE: (0.25, Strength.WEAK, Supports.CAMERA, False),
}
_KEY = (NS["Iptc4xmpExt"], "DigitalSourceType")
_KEY_PLUS = ("http://ns.useplus.org/ldf/xmp/1.0/", "DigitalSourceType")  # older PLUS variant


@register_method("iptc_source_type")
class IptcSourceType(PerImageMethod):
    kind = Kind.METADATA
    description = "IPTC DigitalSourceType in the XMP packet (unsigned declaration)"

    def score_one(self, image: DecodedImage) -> MethodResult:
        packet = image.metadata.xmp
        if not packet:
            return self.abstain()
        try:
            # the image's own declaration, and every one (nested records: ingredients, history)
            props, every = parse_xmp_layers(packet)
        except XmpError as exc:
            return self.abstain(Evidence("xmp.malformed", f"XMP packet ignored: {exc}"))
        declared = props.get(_KEY, []) + props.get(_KEY_PLUS, [])
        nested = [v for v in every.get(_KEY, []) + every.get(_KEY_PLUS, []) if v not in declared]
        context = [
            Evidence(
                "iptc.nested_source_type",
                f"a record nested in the XMP (an ingredient or a past version, not this image) "
                f"declares DigitalSourceType {t.code if (t := parse_source_type(v)) else v!r}",
            )
            for v in dict.fromkeys(nested)
        ]
        if not declared:
            return self.abstain(*context)
        # Several values can be present (edits append); the most "generated" one decides.
        known = [(v, parse_source_type(v)) for v in declared]
        typed = [(v, t) for v, t in known if t is not None]
        unknown = [v for v, t in known if t is None]
        evidence = [
            Evidence("iptc.unknown_source_type", f"unrecognised DigitalSourceType {v!r}")
            for v in unknown
        ] + context
        rated = [(v, t) for v, t in typed if t.category in _PROBABILITY]
        if not rated:
            evidence += [
                Evidence("iptc.source_type", f"XMP declares DigitalSourceType {t.code} ({t.label})")
                for _, t in typed
            ]
            return self.abstain(*evidence, source_types=[t.code for _, t in typed])
        value, best = max(rated, key=lambda vt: _PROBABILITY[vt[1].category][0])
        prob, strength, supports, decisive = _PROBABILITY[best.category]
        evidence.insert(
            0,
            Evidence(
                f"iptc.{best.category.value}",
                f"XMP declares IPTC DigitalSourceType {best.code} ({best.label})",
                strength,
                supports,
            ),
        )
        return self.result(
            prob,
            evidence,
            decisive=decisive,
            weight=1.0 if decisive else 0.5,
            details={"source_types": [t.code for _, t in typed], "value": value},
        )
