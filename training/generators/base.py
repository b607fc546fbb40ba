"""Generator plugins of the offline corpus: one interface, one registry.

A generator has a ``name``, a ``family`` (what kind of model it is), a ``version`` (bumped when
its outputs change) and the ``pool`` of real images its fakes are compared with. *Aligned*
generators turn a real crop into a fake of the same content (``transform``); the others draw new
images (``sample``). Generators the project trains itself are trained in ``prepare`` on
train-split real crops only, with a fixed seed, and cache their weights outside git.
"""

from __future__ import annotations

import hashlib
from abc import ABC
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from detector.registry import Registry
from training.pinned import Store

__all__ = ["GENERATORS", "Generator", "PrepareContext", "register_generator"]


@dataclass
class PrepareContext:
    cache: Path  # weights live under cache / "generators"
    seed: int
    steps: int  # training steps for generators the project trains
    train_crops: np.ndarray  # (N, S, S, 3) uint8 real crops from the train split only
    log: object = print
    store: Store | None = None  # pinned weights come from git mirrors / clones through it

    def data_key(self) -> str:
        """Identifies the training data, so cached weights are rebuilt when it changes."""
        digest = hashlib.sha256(self.train_crops.tobytes()).hexdigest()[:16]
        return f"s{self.seed}-n{self.steps}-d{digest}"


class Generator(ABC):
    name: ClassVar[str]
    family: ClassVar[str]
    version: ClassVar[str]
    aligned: ClassVar[bool]
    pool: ClassVar[str]  # "crops256" or "crops64"
    trains: ClassVar[bool] = False  # trained by the project in prepare()

    @classmethod
    def availability(cls) -> str | None:
        """None when the generator can run here, else how to make it run."""
        return None

    def prepare(self, ctx: PrepareContext) -> None:  # noqa: B027 - optional hook
        """Load or train the model."""

    def transform(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Aligned generators: real (S, S, 3) uint8 crops -> fakes of the same size."""
        raise NotImplementedError(f"{self.name} is not an aligned generator")

    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Non-aligned generators: n new (S, S, 3) uint8 images."""
        raise NotImplementedError(f"{self.name} does not sample")


GENERATORS: Registry[type[Generator]] = Registry("generator")


def register_generator(name: str):
    outer = GENERATORS.register(name)

    def deco(cls: type[Generator]) -> type[Generator]:
        cls.name = name
        return outer(cls)

    return deco
