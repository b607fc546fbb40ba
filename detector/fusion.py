"""Fusion: many method results in, one explained ``Verdict`` out.

The rule (also in the README):

1. Abstentions are ignored, and so is a result of weight 0 (trusted not at all: it neither
   decides nor moves the probability). If every method abstained, the label is ``uncertain``
   and the probability is ``None``: having no evidence is not evidence of a camera.
   A *confirmed* result (the known-image memory found an image a reviewer confirmed) decides
   the verdict before anything else: its probability, ``decided_by`` the method's name. A
   person looked at this picture; a confirmed photo is not flagged whatever the model says.
2. A *decisive* result (an explicit declaration of AI generation: a C2PA manifest that
   validates, an IPTC DigitalSourceType, generation parameters written by the tool, a
   Stable Diffusion watermark at the "very likely" level) sets the
   probability to the largest decisive probability. Declarations of generation win over
   statistics because they are statements by the tool that made the file, and nobody gains by
   falsely labelling their own image as generated.
3. Otherwise the results are pooled by the source they read, the pixels (the model and the
   artifact statistics) or what the file declares (the metadata methods, the invisible
   watermark among them), and each source's log-odds is the weighted
   mean of its results' log-odds, normalised by ``max(1, the source's sum of weights)``; the
   sources' log-odds add:

       L_s = sum_{i in s} w_i * logit(p_i) / max(1, sum_{i in s} w_i)
       p   = sigmoid( L_pixels + L_metadata )

   (computed on the weights divided by the source's largest, the same value, so that a huge
   weight does not overflow). A calibrated model has weight 1. Weak hints (weight 0.5) on their own therefore stay close
   to 0.5 instead of being stretched into confident scores; results that read the same thing
   (two pixel statistics, two metadata fields one tool wrote) are averaged rather than
   multiplied as if independent; and what the pixels say and what the file declares are
   independent evidence, so a hint that agrees with the model raises its confidence, one that
   disagrees lowers it, and one that says nothing (0.5) leaves it where it was. (The rule
   before averaged every result, so an EXIF field naming a generative tool beside a model
   flagging the image at 0.975 pulled the verdict down to 0.960, under the threshold.)
4. The label is ``generated`` when p >= ``threshold``, ``camera`` when p <= ``camera_threshold``,
   otherwise ``uncertain``; a confirmed result gives its own side, a decisive one
   ``generated``. ``fuse`` applies the ``FusionConfig`` it is given (default: threshold 0.5,
   camera band 0.25); ``Detector`` gives it the model's calibrated threshold (chosen for a
   target false-positive rate) and band where the model scored the image; where it abstained,
   failed or did not run, the artifact method's, mapped through its weight 0.5
   (``sigmoid(0.5 * logit(t))``: where the artifact is the only pixel evidence the verdict
   flags what it flags), if it scored; else the neutral ones (``pipeline.method_bands``). A
   caller of ``fuse`` with a model's results passes
   ``FusionConfig(model.threshold, model.camera_threshold)`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from detector.calibration import log_odds, sigmoid
from detector.methods.base import Evidence, Kind, MethodResult, Supports

__all__ = ["FusionConfig", "Verdict", "counts", "fuse"]


@dataclass(frozen=True)
class FusionConfig:
    threshold: float = 0.5
    camera_threshold: float = 0.25  # threshold / 2, as a calibrated model's band

    def __post_init__(self) -> None:
        if not 0.0 < self.camera_threshold < self.threshold < 1.0:
            raise ValueError(
                "need 0 < camera_threshold < threshold < 1, got "
                f"camera_threshold={self.camera_threshold}, threshold={self.threshold}"
            )


@dataclass(frozen=True)
class Verdict:
    label: str  # "generated" | "camera" | "uncertain"
    probability: float | None  # P(generated); None when no method could judge
    threshold: float
    decided_by: str  # "declaration" | "fusion" | "none" | a confirming method ("known_image")
    generator: str | None  # the tool or generator family named by the evidence, if any
    results: tuple[MethodResult, ...]
    evidence: tuple[tuple[str, Evidence], ...]  # (method, evidence), strongest first
    summary: str
    image: dict[str, Any] = field(default_factory=dict)  # format, size, sha256, decode notes
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Methods that failed on this image (method: reason): the verdict came from the others.
    degraded: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": None if self.probability is None else round(self.probability, 6),
            "threshold": self.threshold,
            "decided_by": self.decided_by,
            "generator": self.generator,
            "summary": self.summary,
            "image": dict(self.image),
            "evidence": [{"method": m, **e.to_dict()} for m, e in self.evidence],
            "methods": {r.method: r.to_dict() for r in self.results},
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "degraded": bool(self.degraded),
            **({"degraded_reasons": list(self.degraded)} if self.degraded else {}),
        }


# What each kind of method reads: results reading the same source are averaged, sources add.
# The invisible watermark is a metadata method: a mark the generator's pipeline wrote, not a
# trace the pixel statistics read. A memory result that is not a confirmation (none today:
# known_image confirms or abstains) would be a person's judgement, a source of its own.
_SOURCE = {
    Kind.MODEL: "pixels", Kind.ARTIFACT: "pixels", Kind.METADATA: "metadata",
    Kind.MEMORY: "memory",
}  # fmt: skip


def counts(result: MethodResult) -> bool:
    """Whether the fusion uses this result: it did not abstain and its weight is not 0."""
    return result.probability is not None and result.weight > 0


def _source_log_odds(same: Sequence[MethodResult]) -> float:
    """``sum(w * logit(p)) / max(1, sum(w))`` over one source's results (rule 3), on weights
    scaled by the largest when it is over 1 (the same value: a weight of 1e308 overflowed)."""
    scale = max(1.0, *(r.weight for r in same))
    weights = [r.weight / scale for r in same]
    total = sum(w * log_odds(r.probability) for w, r in zip(weights, same, strict=True))  # type: ignore[arg-type]
    return total / max(1.0 / scale, sum(weights))


def fuse(results: Sequence[MethodResult], config: FusionConfig | None = None) -> Verdict:
    """Combine one image's method results into a verdict (rule in the module docstring)."""
    config = config or FusionConfig()
    scored = [r for r in results if counts(r)]
    decisive = [r for r in scored if r.decisive]
    confirmed = [r for r in scored if r.confirmed]
    if confirmed:
        probability: float | None = confirmed[0].probability
        decided_by = confirmed[0].method
    elif decisive:
        probability = max(r.probability for r in decisive)  # type: ignore[type-var]
        decided_by = "declaration"
    elif len(scored) == 1 and scored[0].weight >= 1:  # the formula's value, without rounding
        probability, decided_by = scored[0].probability, "fusion"  # a score at the threshold
    elif scored:
        sources: dict[str, list[MethodResult]] = {}
        for r in scored:
            sources.setdefault(_SOURCE[r.kind], []).append(r)
        # averaged within a source, added across sources
        probability = sigmoid(sum(_source_log_odds(same) for same in sources.values()))
        decided_by = "fusion"
    else:
        probability, decided_by = None, "none"

    if probability is None:
        label = "uncertain"
    elif confirmed:  # a person's decision: its side, whatever the bands
        label = "generated" if probability >= 0.5 else "camera"
    elif decisive:  # a declaration of generation wins over statistics (rule 2), and so over
        label = "generated"  # the model's threshold, which is a statistic's
    elif probability >= config.threshold:
        label = "generated"
    elif probability <= config.camera_threshold:
        label = "camera"
    else:
        label = "uncertain"

    # The explanation leads with what decided: a reviewer's match, the declaration, else the
    # evidence on the label's side; then by strength.
    first = {decided_by} if confirmed else {r.method for r in decisive}
    side = {"generated": Supports.GENERATED, "camera": Supports.CAMERA}.get(label)
    evidence = sorted(
        ((r.method, e) for r in results for e in r.evidence),
        key=lambda me: (
            me[0] not in first,
            me[1].supports is not side,
            -me[1].strength.rank,
            me[0],
        ),
    )
    return Verdict(
        label=label,
        probability=probability,
        threshold=config.threshold,
        decided_by=decided_by,
        # a generator is named on the generated side only: a camera verdict names none
        generator=None if label == "camera" else _generator(confirmed or decisive or scored),
        results=tuple(results),
        evidence=tuple(evidence),
        summary=_summary(label, results, evidence),
    )


def _generator(results: Sequence[MethodResult]) -> str | None:
    for r in sorted(results, key=lambda r: -(r.probability or 0.0)):
        if (r.probability or 0.0) < 0.5:
            continue
        for key in ("generator", "tool", "claim_generator"):
            if r.details.get(key):
                return str(r.details[key])
        if r.details.get("payload"):
            return str(r.details["payload"])
    return None


def _summary(
    label: str, results: Sequence[MethodResult], evidence: Sequence[tuple[str, Evidence]]
) -> str:
    """One line a person can read: the strongest evidence, or who abstained and why."""
    if results and not any(counts(r) for r in results):
        kinds = {r.kind.value for r in results}
        who = "metadata methods" if kinds == {"metadata"} else "all methods"
        names = ", ".join(r.method for r in results)
        text = f"{who} abstain, no provenance signal found ({names})"
        return text + (f"; {evidence[0][1].message}" if evidence else "")
    scored = {r.method for r in results if counts(r)}
    directional = [
        e
        for m, e in evidence
        if m in scored and e.supports is not Supports.NEITHER and e.strength.rank > 0
    ]
    metadata = [r for r in results if r.kind.value == "metadata"]
    tail = ""
    if metadata and all(r.abstained for r in metadata):
        tail = "; metadata methods abstain, no provenance signal found"
    if directional:
        more = len(directional) - 1
        return directional[0].message + (f" (+{more} more)" if more else "") + tail
    # no result leans either way (a model score between its bands): say what was measured
    measured = [e for m, e in evidence if m in scored and e.strength.rank > 0]
    if measured:
        return measured[0].message + tail
    return f"{label} by fused score of {', '.join(sorted(scored))}" + tail
