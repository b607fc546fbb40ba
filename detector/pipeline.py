"""Scoring images end to end: decode -> every method on the batch -> fusion -> verdicts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from detector.calibration import log_odds, sigmoid
from detector.fusion import FusionConfig, Verdict, counts, fuse
from detector.image import DecodedImage, DecodeLimits, ImageError, decode
from detector.methods import Evidence, Method, create_methods, default_method_names
from detector.methods.base import Kind, MethodResult

__all__ = [
    "Bands",
    "Detector",
    "Overloaded",
    "default_fusion",
    "first_bands",
    "fuse_results",
    "image_info",
    "method_bands",
    "score_guarded",
]


# Detector.score runs its methods on at most this many images or pixels at once, so that its
# memory (tiles, engine buffers) does not grow with the batch it is given; `synthdetect score`
# decodes its files in chunks of the same size.
CHUNK_IMAGES = 32
CHUNK_PIXELS = 100_000_000


def chunks(images: Sequence[DecodedImage]) -> Iterable[Sequence[DecodedImage]]:
    """``images`` in order, in runs of at most ``CHUNK_IMAGES`` images or ``CHUNK_PIXELS``
    pixels (an image larger than that is a run of its own)."""
    start = pixels = 0
    for i, image in enumerate(images):
        if i > start and (
            i - start >= CHUNK_IMAGES or pixels + image.width * image.height > CHUNK_PIXELS
        ):
            yield images[start:i]
            start, pixels = i, 0
        pixels += image.width * image.height
    if start < len(images):
        yield images[start:]


class Overloaded(RuntimeError):
    """A method's engine refuses work for now (its queue is full). Not a failure to degrade
    around: the caller sheds the request (the server answers 503) and the client retries."""


def score_guarded(
    method: Method, images: Sequence[DecodedImage]
) -> tuple[list[MethodResult], str | None]:
    """``method``'s results on ``images``, and None; or, where it fails on the whole batch,
    an abstention for each image and the reason ("name: Error: message").

    A method fails on the batch when it raises (an engine error, a model that is not loaded, a
    timeout, a result it built that is not valid), or returns other than one ``MethodResult``
    of its own per image: a wrong count, or a result under another method's name or kind
    (it replaced that method's result in the verdict). The verdicts then come from the methods
    that did answer, marked degraded: never no answer. ``Overloaded`` is raised: it is not a
    failure but a request to shed. The one rule for ``Detector`` and ``bench accuracy``.
    """
    try:
        results = method.score(images)
        if not isinstance(results, Sequence) or len(results) != len(images):
            got = len(results) if isinstance(results, Sequence) else type(results).__name__
            raise RuntimeError(f"returned {got} results for {len(images)} images")
        results = list(results)
        for r in results:
            if not isinstance(r, MethodResult):
                raise RuntimeError(f"returned a {type(r).__name__}, not a MethodResult")
            if r.method != method.name or r.kind != method.kind:
                kind = getattr(r.kind, "value", r.kind)
                raise RuntimeError(
                    f"returned a result of {r.method!r} ({kind}), not its own "
                    f"({method.name!r}, {method.kind.value})"
                )
    except Overloaded:
        raise
    except Exception as exc:
        why = Evidence(f"{method.name}.failed", f"{method.name} failed: {exc}")
        failed = [method.abstain(why, failure=type(exc).__name__) for _ in images]
        return failed, f"{method.name}: {type(exc).__name__}: {exc}"
    return results, None


Bands = Sequence[tuple[str, FusionConfig]]  # (method name, the bands its calibration gives)


def fuse_results(results: Sequence[MethodResult], bands: Bands | FusionConfig) -> Verdict:
    """``fuse`` with the bands of the first method in ``bands`` (``method_bands``) that scored
    the image, else the neutral ones: a method's bands were chosen for its score, not for what
    the others say without it (a lone camera hint read as 'camera' at the model's 0.48 band).
    A ``FusionConfig``: the caller's own choice, kept whatever scored."""
    if isinstance(bands, FusionConfig):
        return fuse(results, bands)
    scored = {r.method for r in results if counts(r)}
    return fuse(results, next((c for name, c in bands if name in scored), FusionConfig()))


def method_bands(methods: Sequence[Method]) -> list[tuple[str, FusionConfig]]:
    """The bands each calibrated pixel method gives the fused probability, the model first.

    A method that fuses at weight ``w`` < 1 (the artifact statistics, 0.5) and is the only
    pixel evidence moves the fused log-odds by ``w`` times its own, so its threshold there is
    ``sigmoid(w * logit(threshold))``: the verdict then says 'generated' exactly where the
    method's own evidence does (at the neutral 0.5 a score under its threshold was flagged)."""
    calibrated = [m for m in methods if hasattr(m, "threshold") and hasattr(m, "camera_threshold")]
    calibrated.sort(key=lambda m: m.kind is not Kind.MODEL)  # stable: otherwise as given
    out = []
    for m in calibrated:
        w = min(1.0, float(getattr(m, "fusion_weight", 1.0)))
        thr, cam = (
            t if w == 1 else sigmoid(w * log_odds(t)) for t in (m.threshold, m.camera_threshold)
        )
        out.append((m.name, FusionConfig(threshold=thr, camera_threshold=cam)))
    return out


def default_fusion(methods: Sequence[Method]) -> FusionConfig:
    """The bands of the first of ``method_bands`` (the model's when a model runs), else the
    neutral 0.5: what a verdict's threshold is when that method scored."""
    return first_bands(method_bands(methods))


def first_bands(bands: Bands) -> FusionConfig:
    """The first method's bands (``method_bands`` order), else the neutral ones."""
    return bands[0][1] if bands else FusionConfig()


def image_info(image: DecodedImage) -> dict[str, Any]:
    return {
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "frames": image.frames,
        "bytes": len(image.data),
        "sha256": image.sha256,
        "notes": list(image.notes),
    }


class Detector:
    """Runs a set of registered methods on batches of images and fuses their results.

    ``methods`` names registered methods (default: every method that can run here, and
    ``known_image`` when a ``memory_db`` is given); ``method_options`` reach the methods that
    accept them (e.g. ``include_prompt=True``). ``fusion`` (default: the model's calibrated
    threshold and camera band) is kept as given, also for images the model did not score.
    """

    def __init__(
        self,
        methods: Sequence[str] | None = None,
        fusion: FusionConfig | None = None,
        limits: DecodeLimits | None = None,
        **method_options: Any,
    ) -> None:
        if isinstance(methods, str):  # "c2pa" was read as the methods c, 2, p, a
            raise TypeError(f"methods is a list of names, e.g. [{methods!r}]")
        memory = method_options.get("memory_db")  # a path, or an open MemoryStore
        if memory is not None:
            from detector.memory import require_database

            if isinstance(memory, str | os.PathLike):  # a mistyped path: an empty memory
                require_database(memory)
            if methods is None:  # as the CLI and the server: the memory decides first
                methods = default_method_names(also=("known_image",))
        self.methods: list[Method] = create_methods(methods, **method_options)
        if not self.methods:
            raise ValueError("no methods selected")
        # the bands of the method that scored each image (model, else artifact), or the
        # caller's own, kept whatever scored
        self.bands: Bands | FusionConfig = fusion or method_bands(self.methods)
        self.fusion = fusion or first_bands(self.bands)  # type: ignore[arg-type]
        self.limits = limits or DecodeLimits()

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    def score(self, images: Iterable[DecodedImage]) -> list[Verdict]:
        """One verdict per decoded image, in order."""
        images = list(images)  # a generator was used up by the first method: no verdicts
        for i, image in enumerate(images):
            if not isinstance(image, DecodedImage):
                raise TypeError(
                    f"image {i} is a {type(image).__name__}, not a DecodedImage: decode it "
                    "first (detector.decode(bytes) or detector.decode_file(path)), or use "
                    "score_bytes"
                )
        return [v for chunk in chunks(images) for v in self._score_chunk(chunk)]

    def _score_chunk(self, images: Sequence[DecodedImage]) -> list[Verdict]:
        per_method = []
        failed: list[str] = []  # "method: reason" of the methods that failed on the whole batch
        failed_methods: set[str] = set()
        for method in self.methods:
            results, failure = score_guarded(method, images)  # abstentions where it failed
            if failure is not None:
                failed.append(failure)
                failed_methods.add(method.name)
            per_method.append(results)
        verdicts = []
        for i, image in enumerate(images):
            results = [res[i] for res in per_method]
            verdict = fuse_results(results, self.bands)
            timings = {r.method: r.seconds * 1000 for r in results}
            one = [  # a method that failed on this image alone (its batch went on)
                f"{r.method}: {r.details['failure']}"
                for r in results
                if r.details.get("failure") and r.method not in failed_methods
            ]
            verdicts.append(
                replace(
                    verdict,
                    image=image_info(image),
                    timings_ms=timings,
                    degraded=(*failed, *one),
                )
            )
        return verdicts

    def score_bytes(self, blobs: Sequence[bytes]) -> list[Verdict | ImageError]:
        """Decode and score; an undecodable input yields its ``ImageError`` in its place."""
        decoded: list[DecodedImage | ImageError] = []
        decode_ms: list[float] = []
        for blob in blobs:
            start = time.perf_counter()
            try:
                decoded.append(decode(blob, self.limits))
            except ImageError as exc:
                decoded.append(exc)
            decode_ms.append((time.perf_counter() - start) * 1000)
        good = [d for d in decoded if isinstance(d, DecodedImage)]
        verdicts = iter(self.score(good))
        out: list[Verdict | ImageError] = []
        for item, ms in zip(decoded, decode_ms, strict=True):
            if isinstance(item, ImageError):
                out.append(item)
            else:
                v = next(verdicts)
                out.append(replace(v, timings_ms={"decode": ms, **v.timings_ms}))
        return out
