"""The one interface every detection method implements.

A ``Method`` scores a batch of decoded images and returns exactly one ``MethodResult`` per image,
in order. A result carries the probability that the image is AI-generated, or ``None`` when the
method abstains: it found nothing it can judge by (no metadata is an abstention, never "camera").
Whatever the method saw is listed as ``Evidence`` so that a verdict can be explained.

Methods come in four kinds:

- ``model``: a trained classifier on pixels (ONNX Runtime or torch);
- ``artifact``: hand-crafted spectral / residual statistics on pixels;
- ``metadata``: what the file declares about itself (C2PA, IPTC, generator parameters,
  invisible watermarks, EXIF hints);
- ``memory``: what reviewers confirmed about this very image (``known_image``).

``weight`` and ``decisive`` on a result tell the fusion how much to trust it (see
``detector.fusion``): a weight is a finite number >= 0 (0 counts as an abstention), and a
decisive result declares generation, so its probability is at least 0.5. A result is checked
when it is built (plain float probability and weight, strength and supports from their enums),
so a method that builds a bad one fails there, alone (``pipeline.score_guarded``), not the
fusion of every method. A method must not raise for one bad image in a batch: it abstains for that
image with an ``error`` evidence item, so one odd file never loses the other results.
"""

from __future__ import annotations

import math
import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from detector.image import DecodedImage

__all__ = [
    "Evidence",
    "Kind",
    "Method",
    "MethodResult",
    "PerImageMethod",
    "Strength",
    "Supports",
    "json_safe",
]


class Kind(str, Enum):
    MODEL = "model"
    ARTIFACT = "artifact"
    METADATA = "metadata"
    MEMORY = "memory"  # what reviewers confirmed (known-image memory)


class Strength(str, Enum):
    """How much one piece of evidence should move a reader, not a probability."""

    INFO = "info"  # context, moves nothing
    WEAK = "weak"  # a hint: trivially forged or often missing
    MODERATE = "moderate"
    STRONG = "strong"  # an explicit declaration or a statistically reliable signal

    @property
    def rank(self) -> int:
        return ["info", "weak", "moderate", "strong"].index(self.value)


class Supports(str, Enum):
    GENERATED = "generated"
    CAMERA = "camera"
    NEITHER = "neither"


@dataclass(frozen=True)
class Evidence:
    code: str  # stable, machine-readable, e.g. "c2pa.ai_generated"
    message: str  # one human-readable sentence
    strength: Strength = Strength.INFO
    supports: Supports = Supports.NEITHER

    def __post_init__(self) -> None:
        # A plain string ("strong") is read as its member; anything else is refused here, in
        # the method that built it (fusion sorts by strength: it failed there, for every
        # method of the batch).
        for name, enum in (("strength", Strength), ("supports", Supports)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                allowed = ", ".join(m.value for m in enum)
                raise ValueError(
                    f"evidence {self.code!r}: {name} {value!r} is not one of {allowed}"
                ) from None

    def to_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "message": self.message,
            "strength": self.strength.value,
            "supports": self.supports.value,
        }


@dataclass(frozen=True)
class MethodResult:
    method: str
    kind: Kind
    probability: float | None  # P(generated); None = abstain
    evidence: tuple[Evidence, ...] = ()
    weight: float = 1.0  # trust in this result relative to a calibrated model (1.0)
    decisive: bool = False  # an explicit declaration of AI generation that overrides statistics
    confirmed: bool = False  # a reviewer's decision about this image: overrides everything
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # this image's share of the batch's wall time

    def __post_init__(self) -> None:
        # Plain floats: a numpy float32 is not JSON-serialisable (score --json, scan and the
        # server failed on it), and a bool is no probability.
        if self.probability is not None:
            object.__setattr__(
                self, "probability", _real(self.method, "probability", self.probability)
            )
            if not (math.isfinite(self.probability) and 0.0 <= self.probability <= 1.0):
                raise ValueError(f"{self.method}: probability {self.probability!r} not in [0, 1]")
        object.__setattr__(self, "weight", _real(self.method, "weight", self.weight))
        if not (math.isfinite(self.weight) and self.weight >= 0):  # NaN < 0 is False
            raise ValueError(f"{self.method}: weight {self.weight!r} is not a finite number >= 0")
        if (self.decisive or self.confirmed) and self.probability is None:
            raise ValueError(f"{self.method}: an abstention cannot be decisive or confirmed")
        if self.decisive and self.probability < 0.5:  # type: ignore[operator]
            raise ValueError(
                f"{self.method}: a decisive result declares generation; probability "
                f"{self.probability} < 0.5 says the opposite"
            )

    @property
    def abstained(self) -> bool:
        return self.probability is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "probability": self.probability,
            "abstained": self.abstained,
            "weight": self.weight,
            "decisive": self.decisive,
            "confirmed": self.confirmed,
            "evidence": [e.to_dict() for e in self.evidence],
            "details": json_safe(dict(self.details)),  # what a method put there, as JSON takes it
            "ms": round(self.seconds * 1000, 3),
        }


def json_safe(value: Any) -> Any:
    """``value`` as JSON takes it: NaN and infinities (JSON has none) as None, numpy scalars and
    arrays as Python numbers and lists, containers rebuilt. A method's ``details`` go through
    it, so the CLI, scan and the server write the same valid JSON whatever a method put there."""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _real(method: str, name: str, value: Any) -> float:
    """``value`` as a plain float; a bool or a non-number is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy floats are Real
        raise TypeError(f"{method}: {name} {value!r} is not a number")
    return float(value)


class Method(ABC):
    """Base class of every registered method; see the module docstring for the contract."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    description: ClassVar[str] = ""
    # Constructor keyword options this method accepts from a shared option set (CLI flags).
    options: ClassVar[tuple[str, ...]] = ()
    # Part of the verdict when no method set is named (score, scan, serve). A method whose
    # measured effect on the fused verdict is harmful is kept registered but opt-in.
    in_default: ClassVar[bool] = True

    @classmethod
    def availability(cls, **options: Any) -> str | None:
        """None when the method can run here with these options, else why not (e.g. a missing
        optional package or model file)."""
        return None

    @abstractmethod
    def score(self, images: Sequence[DecodedImage]) -> list[MethodResult]:
        """One result per image, in order."""

    def result(
        self,
        probability: float | None,
        evidence: Sequence[Evidence] = (),
        **kwargs: Any,
    ) -> MethodResult:
        """Build a result of this method (saves repeating name and kind)."""
        return MethodResult(self.name, self.kind, probability, tuple(evidence), **kwargs)

    def abstain(self, *evidence: Evidence, **details: Any) -> MethodResult:
        return MethodResult(self.name, self.kind, None, tuple(evidence), details=details)

    @classmethod
    def unavailable_reason(cls, **options: Any) -> str | None:
        """``availability``, where a check that raises is a reason too: one method's broken
        check must not break listing, choosing or building the others."""
        try:
            return cls.availability(**options)
        except Exception as exc:
            return f"availability check failed: {type(exc).__name__}: {exc}"

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What ``synthdetect methods`` lists: name, kind, whether it can run here and why not."""
        reason = cls.unavailable_reason()
        return {
            "name": cls.name,
            "kind": cls.kind.value,
            "available": reason is None,
            "reason": reason,
            "in_default": cls.in_default,
            "description": cls.description,
        }


class PerImageMethod(Method):
    """A method that judges each image on its own (all metadata methods).

    ``score`` isolates failures: an exception on one image becomes an abstention with a
    ``<name>.failed`` evidence item (and ``failure`` in its details: the verdict is marked
    degraded), and the rest of the batch is still scored.
    """

    @abstractmethod
    def score_one(self, image: DecodedImage) -> MethodResult:
        """The result for one image."""

    def score(self, images: Sequence[DecodedImage]) -> list[MethodResult]:
        results = []
        for image in images:
            start = time.perf_counter()
            try:
                res = self.score_one(image)
            except Exception as exc:  # one odd file must not lose the batch
                err = Evidence(f"{self.name}.failed", f"{self.name} failed: {exc}")
                res = self.abstain(err, failure=f"{type(exc).__name__}: {exc}")
            results.append(replace(res, seconds=time.perf_counter() - start))
        return results
