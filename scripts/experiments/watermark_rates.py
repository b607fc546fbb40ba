"""How often does the invisible-watermark decoder fire on photos, and on generated images?

The ``invisible_watermark`` method's probabilities were set by rule: "very likely" 0.98
(decisive), "likely" 0.90. This measures each level's firing rate on the real photos and on the
generated images of a corpus (the pinned public sources: ``runs/mix``'s ``wild`` pool), as they
are and after a JPEG re-encode (``--equalise``, as upload pipelines and the equalised
evaluation re-encode), so the probability a level carries is its measured likelihood ratio,
rate among generated over rate among photos. Images under the reference codec's 256x256 are
skipped (the method abstains on them).

    python scripts/experiments/watermark_rates.py runs/mix/manifest.csv OUT.json [--pool wild]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from detector.methods.watermark import MIN_PIXELS, match_payloads
from training.datasets import load_samples, read_pixels
from training.degrade import apply_chain, parse_chain

LEVELS = ("none", "partial", "likely", "very likely")


def top_level(pixels: np.ndarray) -> tuple[str, str | None, int | None]:
    """The level, payload and matched bits the method reports (its own choice of match)."""
    matches = match_payloads(pixels)
    if not matches:
        return "none", None, None
    top = max(matches, key=lambda m: (m.level != "none", m.matched / len(m.payload.bits)))
    return top.level, top.payload.key, top.matched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--pool", default="wild", help="the manifest's pool to read ('' for all)")
    ap.add_argument("--equalise", default="jpeg:90", help="the re-encoded view")
    args = ap.parse_args()
    chain = parse_chain(args.equalise)
    samples = [s for s in load_samples(args.manifest) if not args.pool or s.pool == args.pool]
    views = ("as-is", args.equalise)
    counts = {v: {c: Counter() for c in ("real", "generated")} for v in views}
    fires, skipped, t = [], Counter(), time.time()
    rng = np.random.default_rng(0)
    for s in samples:
        cls = "generated" if s.label else "real"
        pixels = read_pixels(s.path)
        if pixels.shape[0] * pixels.shape[1] < MIN_PIXELS:
            skipped[cls] += 1
            continue
        for view, img in ((views[0], pixels), (views[1], apply_chain(pixels, chain, rng))):
            level, payload, matched = top_level(img)
            counts[view][cls][level] += 1
            if level in ("likely", "very likely"):
                fires.append({"view": view, "class": cls, "family": s.family,
                              "source": s.source_id, "path": str(s.path), "level": level,
                              "payload": payload, "matched": matched})  # fmt: skip
    rates = {}
    for view in views:
        n = {c: sum(counts[view][c].values()) for c in counts[view]}
        rates[view] = {
            level: {
                "real": counts[view]["real"][level] / max(1, n["real"]),
                "generated": counts[view]["generated"][level] / max(1, n["generated"]),
                "likelihood_ratio": (counts[view]["generated"][level] / max(1, n["generated"]))
                / (counts[view]["real"][level] / n["real"])
                if counts[view]["real"][level] and n["real"]
                else None,
            }
            for level in LEVELS
        }
    result = {
        "what": "invisible-watermark decoder levels on a corpus's photos and generated images",
        "manifest": str(args.manifest), "pool": args.pool or "all",
        "command": "python scripts/experiments/watermark_rates.py " + " ".join(
            [str(args.manifest), str(args.out), "--pool", args.pool, "--equalise", args.equalise]),
        "skipped_under_256x256": dict(skipped),
        "counts": {v: {c: {lv: counts[v][c][lv] for lv in LEVELS} for c in counts[v]}
                   for v in views},
        "rates": rates, "fires": fires, "seconds": round(time.time() - t, 1),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for view in views:
        print(view, json.dumps(result["counts"][view]))


if __name__ == "__main__":
    main()
