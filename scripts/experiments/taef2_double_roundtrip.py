"""Experiment: TAEF2 round-trip error over a scene-complexity norm, and a second round trip.

A follow-up to `taef2_reconstruction.py` (AEROBLADE's idea with the one modern latent
autoencoder obtainable here). Two changes of measure, on every validation-split pinned-source
image (not a sample), as-is and JPEG-q90 equalised, each image's central crop of up to 128 px:

- ``-e1/c``: the round trip's mean absolute error over the crop's mean absolute Laplacian
  (how hard the scene is to reconstruct), lower = more generated;
- ``e2/e1``: the error of a second round trip (of the 8-bit decoded first one) over the
  first's. A photo is far from the decoder's manifold and its first round trip lands on it,
  so its second error should be small next to its first; an image a similar decoder drew
  should move about as little the second time as the first.

Each score is oriented before measuring (lower error = generated; a higher ratio =
generated) and never flipped after, so an AUC under 0.5 is a family the score ranks backwards.

    python scripts/experiments/taef2_double_roundtrip.py measure MANIFEST FEATURES.json \
        [--view jpeg:90] [--side 128] [--cache ~/.cache/synthdetect]
    python scripts/experiments/taef2_double_roundtrip.py summarise OUT.json FEATURES.json...

Measured 2026-12-07 on `runs/mix`'s validation split (955 real, 1,108 generated pinned-source
images; about 22 min a view on 2 AMD EPYC cores beside other jobs;
`benchmarks/results/selection/taef2-double-roundtrip.json`): ``-e1/c`` ranks them at ROC-AUC
0.684 as-is and 0.688 equalised, ``e2/e1`` at 0.361 / 0.348. Per family the direction of
either score changes: SD 1.x (742 images) 0.77 by ``-e1/c`` and Gemini 0.91, Midjourney 0.35
and Kandinsky 0.52; no training-free rule of this kind transfers across families, and the
model ranks the same images at 0.88. Not taken.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from taef2_reconstruction import load_taef2

from training.datasets import read_pixels
from training.degrade import apply_chain, parse_chain

_LAPLACE = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)
_LAPLACE = _LAPLACE.view(1, 1, 3, 3).repeat(3, 1, 1, 1)
SCORES = {  # oriented: higher = more generated
    "-e1/c": lambda r: -r["e1"] / (r["c"] + 1e-6),
    "e2/e1": lambda r: r["e2"] / (r["e1"] + 1e-6),
}


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.conv2d(x, _LAPLACE, groups=3)


def measure(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    net = load_taef2(args.cache)
    chain = parse_chain(args.view) if args.view != "as-is" else None
    with open(args.manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r.get("repo")]
    out, start = [], time.time()
    for i, row in enumerate(rows):
        px = read_pixels(args.manifest.parent / row["path"])
        if chain:
            px = apply_chain(px, chain, np.random.default_rng(0))
        h, w = px.shape[:2]
        side = min(args.side, h, w) // 8 * 8
        y0, x0 = (h - side) // 2, (w - side) // 2
        crop = np.ascontiguousarray(px[y0 : y0 + side, x0 : x0 + side])
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            a = (net(x) * 255).round() / 255  # decoded to 8 bits, as a generator's output
            b = net(a)
        out.append(
            {
                "label": row["label"],
                "family": row["family"],
                "e1": (x - a).abs().mean().item(),
                "e2": (a - b).abs().mean().item(),
                "c": _laplacian(x).abs().mean().item(),
            }
        )
        if i % 200 == 0:
            print(f"{i}/{len(rows)} {time.time() - start:.0f} s", flush=True)
    args.features.write_text(json.dumps({"view": args.view, "side": args.side, "rows": out}))


def summarise(args: argparse.Namespace) -> None:
    result = {"scores": list(SCORES), "rows": []}
    for path in args.features:
        data = json.loads(path.read_text())
        rows = data["rows"]
        reals = [r for r in rows if r["label"] == "real"]
        families = Counter(r["family"] for r in rows if r["label"] == "fake")
        for family in ["all", *sorted(families, key=lambda f: -families[f])]:
            fakes = [r for r in rows if r["label"] == "fake" and family in ("all", r["family"])]
            if len(fakes) < args.min_images:
                continue
            y = [0] * len(reals) + [1] * len(fakes)
            auc = {
                name: float(roc_auc_score(y, [f(r) for r in reals + fakes]))
                for name, f in SCORES.items()
            }
            result["rows"].append(
                {
                    "view": data["view"],
                    "family": family,
                    "n_real": len(reals),
                    "n_fake": len(fakes),
                    "roc_auc": auc,
                }
            )
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    m = sub.add_parser("measure")
    m.add_argument("manifest", type=Path)
    m.add_argument("features", type=Path)
    m.add_argument("--view", default="as-is")
    m.add_argument("--side", type=int, default=128)
    m.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "synthdetect")
    m.set_defaults(func=measure)
    s = sub.add_parser("summarise")
    s.add_argument("out", type=Path)
    s.add_argument("features", type=Path, nargs="+")
    s.add_argument("--min-images", type=int, default=10)
    s.set_defaults(func=summarise)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
