"""Calibration travels with the weights: temperature scaling and the decision threshold.

``probability = sigmoid(logit / temperature)``; ``threshold`` is the probability above which an
image is called generated, chosen on the validation split for a target false-positive rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = ["Calibration"]


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
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
