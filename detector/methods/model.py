"""The model-based method: a trained CNN/ViT detector run through an inference engine.

Each image is cut into the tile grid of its ``PreprocessConfig`` (an image smaller than
``MIN_SIDE`` on a side is not judged: the method abstains); the tiles of the whole batch go
through the engine together; a tile's logits are averaged per image and calibrated with the
temperature that travels with the weights. Without ``model_path`` the bundled default model
(``detector/assets/models/default``) is used; the method reports itself unavailable when no
model is bundled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from detector.bundled import DEFAULT_MODEL
from detector.calibration import log_odds
from detector.engine import ModelBundle, load_bundle
from detector.image import DecodedImage
from detector.methods.base import Evidence, Kind, Method, MethodResult, Strength, Supports
from detector.methods.registry import register_method
from detector.preprocess import PreprocessConfig, preprocess, too_small

__all__ = ["ModelMethod"]


def model_tiles(images: Sequence[DecodedImage], prep: PreprocessConfig) -> list[np.ndarray | str]:
    """Each image's tiles (the one preprocessing), or why it is too small to judge. Where
    decoding runs apart from the engine (``scan --ray``), this runs beside the decoder, with no
    model loaded, and ``ModelMethod.score_tiles`` beside the engine."""
    return [
        why if (why := too_small(img.pixels)) is not None else preprocess(img.pixels, prep)
        for img in images
    ]


@register_method("model")
class ModelMethod(Method):
    kind = Kind.MODEL
    description = "trained CNN/ViT detector (RGB + pixel residual + frequency branches)"
    options: ClassVar[tuple[str, ...]] = ("model_path", "device", "bundle", "max_tiles")

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        bundle: ModelBundle | None = None,
        max_tiles: int | None = None,
    ) -> None:
        # ``bundle`` lets a host share one loaded model (the server passes its batcher here).
        if bundle is None:
            bundle = load_bundle(Path(model_path) if model_path else DEFAULT_MODEL, device=device)
        self.bundle: ModelBundle = bundle.with_max_tiles(max_tiles)  # loaded here or shared

    @classmethod
    def availability(
        cls, model_path: str | Path | None = None, bundle: object = None, **options: object
    ) -> str | None:
        if model_path is None and bundle is None and not (DEFAULT_MODEL / "model.onnx").exists():
            return f"no bundled model at {DEFAULT_MODEL} (pass --model PATH, or train one)"
        return None

    @property
    def threshold(self) -> float:
        return self.bundle.calibration.threshold

    @property
    def camera_threshold(self) -> float:
        """At or below it the fused verdict reads ``camera`` (half the calibrated threshold:
        the model's threshold flags ~1% of photos, so a score well under it is their range)."""
        return self.threshold / 2

    def score(self, images: Sequence[DecodedImage]) -> list[MethodResult]:
        return self.score_tiles(self.tiles(images))

    def tiles(self, images: Sequence[DecodedImage]) -> list[np.ndarray | str]:
        """The first half of ``score`` (``model_tiles`` with this model's preprocessing)."""
        return model_tiles(images, self.bundle.preprocess)

    def score_tiles(self, prepared: Sequence[np.ndarray | str]) -> list[MethodResult]:
        """Results from ``tiles``' output: one engine call for the batch's tiles, each image's
        mean logit calibrated."""
        import time

        start = time.perf_counter()
        judged = [t for t in prepared if not isinstance(t, str)]
        scored: list[MethodResult] = []
        if judged:
            logits = self.bundle.logits(np.concatenate(judged))
            counts = [len(t) for t in judged]
            owner = np.repeat(np.arange(len(judged)), counts)
            mean = np.bincount(owner, weights=logits, minlength=len(judged)) / counts
            probs = self.bundle.calibration.probability(mean)
            share = (time.perf_counter() - start) / len(judged)
            scored = [
                self._result(float(p), float(z), len(t), share)
                for p, z, t in zip(probs, mean, judged, strict=True)
            ]
        it = iter(scored)
        return [
            self.abstain(Evidence("model.too_small", t)) if isinstance(t, str) else next(it)
            for t in prepared
        ]

    def _result(self, p: float, logit: float, n_tiles: int, seconds: float) -> MethodResult:
        """The evidence reads the score in the fused verdict's three bands: at or above the
        threshold it supports generated, at or below the camera threshold a camera, and in
        between neither (the verdict there is ``uncertain``). Its strength is the distance in
        log-odds from the band's edge: > 3 strong, > 1 moderate."""
        thr, cam = self.threshold, self.camera_threshold
        where = f"{self.bundle.name}: P(generated) {p:.3f} over {n_tiles} tile{'s' * (n_tiles > 1)}"
        if p >= thr:
            code, supports, edge = "model.generated", Supports.GENERATED, thr
            said = f"{where} (at or above its threshold {thr:.3f})"
        elif p <= cam:
            code, supports, edge = "model.camera", Supports.CAMERA, cam
            said = f"{where} (in its camera range, at or below {cam:.3f})"
        else:
            code, supports, edge = "model.uncertain", Supports.NEITHER, None
            said = (
                f"{where} (between its camera range, up to {cam:.3f}, and its threshold {thr:.3f})"
            )
        if edge is None:
            strength = Strength.WEAK
        else:
            distance = abs(log_odds(p) - log_odds(edge))
            strength = (
                Strength.STRONG
                if distance > 3
                else Strength.MODERATE
                if distance > 1
                else Strength.WEAK
            )
        evidence = Evidence(code, said, strength, supports)
        details = {
            "model": self.bundle.name,
            "engine": self.bundle.engine.name,
            "tiles": n_tiles,
            "logit": round(logit, 4),
        }
        return self.result(p, [evidence], details=details, seconds=seconds)
