"""Calibration travels with the weights: temperature scaling and the decision threshold.

``probability = sigmoid(logit / temperature)``; ``threshold`` is the probability above which an
image is called generated, chosen on the validation split for a target false-positive rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from detector.preprocess import is_number

__all__ = ["Calibration", "log_odds", "sigmoid"]


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    threshold: float = 0.5
    target_fpr: float | None = None
    fitted_on: str = "uncalibrated"  # e.g. "val split of <manifest>, 412 real / 398 fake"

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    def probability(self, logits: np.ndarray) -> np.ndarray:
        z = np.clip(np.asarray(logits, dtype=np.float64) / self.temperature, -60, 60)
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        """From JSON (a sidecar, a checkpoint): a wrong type is a ValueError naming the field,
        never a TypeError from the checks above."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {data!r}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("temperature", "threshold"):
            if key in values and not is_number(values[key]):
                raise ValueError(f"{key} must be a number, got {values[key]!r}")
        if values.get("target_fpr") is not None and not is_number(values["target_fpr"]):
            raise ValueError(f"target_fpr must be a number or null, got {values['target_fpr']!r}")
        if not isinstance(values.get("fitted_on", ""), str):
            raise ValueError(f"fitted_on must be a string, got {values['fitted_on']!r}")
        return cls(**values)


def sigmoid(x: float) -> float:
    """The probability of log-odds ``x`` (the inverse of ``log_odds``), without overflow."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def log_odds(p: float) -> float:
    """logit(p), p clipped to [1e-6, 1 - 1e-6] so that certainty stays finite."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))
