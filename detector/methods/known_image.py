"""``known_image``: images reviewers confirmed, found again when they come back.

Looks each image up in the known-image memory (``detector.memory``: perceptual hashes in a
SQLite file with a faiss Hamming index). A match is a reviewer's decision about this very
picture, so it decides the verdict (``decided_by: known_image``) over every other method: an
image confirmed as generated is flagged even after re-compression or rescaling, and a photo
confirmed as a camera image stops being flagged whatever the model says. No match is an
abstention. When several records match they are decisions about one picture: the latest decides
(a newer human judgement overrides an older one), and the evidence names the decisions that
disagree with it. The method runs only when a memory database is given (``--memory-db``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from detector.image import DecodedImage
from detector.memory import MemoryStore, hash_pixels, plainness
from detector.methods.base import Evidence, Kind, MethodResult, PerImageMethod, Strength, Supports
from detector.methods.registry import register_method

__all__ = ["KnownImageMethod"]

# A confirmation is near-certain but not 0/1, so that log-odds stay finite if it is ever fused.
_CONFIRMED = {"generated": 0.999, "camera": 0.001}


@register_method("known_image")
class KnownImageMethod(PerImageMethod):
    kind = Kind.MEMORY
    description = (
        "images reviewers confirmed as generated or camera-made, found again by perceptual "
        "hash (needs --memory-db)"
    )
    options = ("memory_db",)

    @classmethod
    def availability(cls, memory_db: Any = None, **_: Any) -> str | None:
        for module, package in (("imagehash", "imagehash"), ("faiss", "faiss-cpu")):
            if importlib.util.find_spec(module) is None:
                return f"pip install {package}"
        if not memory_db:
            return "needs a known-image memory database (--memory-db PATH)"
        return None

    def __init__(self, memory_db: Any) -> None:
        self.store = memory_db if isinstance(memory_db, MemoryStore) else MemoryStore(memory_db)

    def score_one(self, image: DecodedImage) -> MethodResult:
        hashes = hash_pixels(image.pixels, image.data)
        matches = self.store.find(hashes)
        plain = plainness(hashes)
        if not matches:
            message = "no image confirmed by a reviewer matches" + (
                f" (only exact copies are looked up: {plain})" if plain else ""
            )
            return self.abstain(Evidence("known_image.none", message), phash=hashes.phash)
        best = matches[0]  # the latest decision (``MemoryStore.find``)
        rec = best.record
        how = (
            "the same image"
            if best.exact
            else f"{'a crop of it, ' if best.window else ''}distance {best.phash_distance}"
        )
        message = (
            f"matches an image confirmed as {rec.label} on {rec.confirmed_at[:10]} by "
            f"{rec.confirmed_by}, {how}" + (f" ({rec.note})" if rec.note else "")
        )
        overruled = [m for m in matches[1:] if m.record.label != rec.label]
        if overruled:
            also = ", ".join(
                f"{m.record.label} by {m.record.confirmed_by} on {m.record.confirmed_at[:10]}"
                for m in overruled[:3]
            )
            more = f" and {len(overruled) - 3} more" if len(overruled) > 3 else ""
            message += f"; also confirmed {also}{more} before: the latest decision holds"
        supports = Supports.GENERATED if rec.label == "generated" else Supports.CAMERA
        details = {"match": best.to_dict(), "matches": len(matches), "phash": hashes.phash}
        if overruled:
            details["conflicts"] = [m.to_dict() for m in overruled]
        return self.result(
            _CONFIRMED[rec.label],
            [Evidence(f"known_image.{rec.label}", message, Strength.STRONG, supports)],
            confirmed=True,
            details=details,
        )
