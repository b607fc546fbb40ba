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
        packets = image.metadata.xmp_packets
        if not packets:
            return self.abstain()
        # every packet (a file can carry several, and a later one must not hide a declaration):
        # the image's own declarations, and every one (nested records: ingredients, history)
        declared: list[str] = []
        every: list[str] = []
        problems: list[Evidence] = []
        for n, packet in enumerate(packets, 1):
            try:
                props, flat = parse_xmp_layers(packet)
            except XmpError as exc:
                which = f" {n} of {len(packets)}" if len(packets) > 1 else ""
                problems.append(Evidence("xmp.malformed", f"XMP packet{which} ignored: {exc}"))
                continue
            declared += props.get(_KEY, []) + props.get(_KEY_PLUS, [])
            every += flat.get(_KEY, []) + flat.get(_KEY_PLUS, [])
        nested = [v for v in every if v not in declared]
        context = problems + [
            Evidence(
                "iptc.nested_source_type",
                f"a record nested in the XMP (an ingredient or a past version, not this image) "
                f"declares DigitalSourceType {t.code if (t := parse_source_type(v)) else _clip(v)}",
            )
            for v in dict.fromkeys(nested)
        ]
        if len(packets) > 1:
            context.append(
                Evidence(
                    "xmp.packets", f"the file carries {len(packets)} XMP packets; all were read"
                )
            )
        if not declared:
            return self.abstain(*context)
        # Several values can be present (edits append); the most "generated" one decides.
        known = [(v, parse_source_type(v)) for v in declared]
        typed = [(v, t) for v, t in known if t is not None]
        unknown = [v for v, t in known if t is None]
        evidence = [
            Evidence("iptc.unknown_source_type", f"unrecognised DigitalSourceType {_clip(v)}")
            for v in dict.fromkeys(unknown)
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


def _clip(value: str, limit: int = 80) -> str:
    """A declared value as the evidence quotes it: its first ``limit`` characters."""
    return repr(value[:limit]) + (
        f" (+{len(value) - limit} characters)" if len(value) > limit else ""
    )
