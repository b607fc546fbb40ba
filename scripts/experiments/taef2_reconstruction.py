"""Experiment: does a modern decoder's round-trip error tell generated images from photos?

AEROBLADE (Ricker et al., CVPR 2024) detects latent-diffusion images without training: an
image a latent autoencoder's decoder produced lies close to what that autoencoder can
reconstruct, so its round-trip error is lower than a photo's. The one modern latent
autoencoder obtainable here is TAEF2, a distilled stand-in for FLUX.2's (weights pinned in
`data/wild-sources/weights.csv`). This measures whether its round-trip error separates the
real-world generated images of each family from real photos, as-is and JPEG-q90 equalised.
No model is trained, so the images may come from any split.

Four scores per image (lower error = more generated): the mean squared error of the round trip
(`l2`), that of its Laplacian (`hf`), and each divided by the image's own Laplacian energy
(`hf_per_texture`, `l2_per_texture`), which takes out some of how hard a scene is to
reconstruct.

    python scripts/experiments/taef2_reconstruction.py measure MANIFEST FEATURES.json \
        [--cache ~/.cache/synthdetect] [--reals 200] [--per-family 25]
    python scripts/experiments/taef2_reconstruction.py summarise FEATURES.json OUT.json

Measured 2026-12-06 on `runs/mix` (200 real and 600 generated pinned-source images, up to 25
per family; 29 min on 2 CPU cores; `benchmarks/results/selection/taef2-reconstruction.json`):
ROC-AUC over all generated images 0.48-0.58 as-is and equalised, for every score; FLUX.2,
the family whose latent space TAEF2 was distilled for, 0.63-0.70 on three of the four.
No usable signal: the error depends on the scene more than on who made it, and a distilled
decoder is not the generator's.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from detector.features import laplace_kernel
from training.generators.latent import TAEF2_WEIGHTS, TinyAutoencoder, load_pinned_weights

SCORES = ("l2", "hf", "hf_per_texture", "l2_per_texture")
VIEWS = ("as_is", "jpeg90")
_LAPLACE = laplace_kernel(3)


def load_taef2(cache: Path) -> TinyAutoencoder:
    net = TinyAutoencoder()
    for part in ("encoder", "decoder"):
        state = load_pinned_weights(TAEF2_WEIGHTS[part], cache, None)
        getattr(net, part).load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


def scores(net: TinyAutoencoder, image: Image.Image) -> list[float]:
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    s = TinyAutoencoder.scale
    x = x[:, :, : x.shape[2] // s * s, : x.shape[3] // s * s]
    with torch.inference_mode():
        err = x - net(x)
    l2 = float(err.pow(2).mean())
    hf = float(torch.nn.functional.conv2d(err, _LAPLACE, groups=3).pow(2).mean())
    texture = float(torch.nn.functional.conv2d(x, _LAPLACE, groups=3).pow(2).mean()) + 1e-6
    return [l2, hf, hf / texture, l2 / texture]


def sample_rows(manifest: Path, reals: int, per_family: int, seed: int = 0) -> list[dict]:
    """Pinned-source images: ``reals`` photos and up to ``per_family`` images of each family."""
    rows = [r for r in csv.DictReader(manifest.open()) if r["pool"] == "wild"]
    rng = random.Random(seed)
    chosen = rng.sample([r for r in rows if r["label"] == "real"], reals)
    families: dict[str, list[dict]] = {}
    for r in rows:
        if r["label"] == "fake":
            families.setdefault(r["family"], []).append(r)
    for _, items in sorted(families.items()):
        chosen += rng.sample(items, min(len(items), per_family))
    return chosen


def measure(args: argparse.Namespace) -> None:
    net = load_taef2(args.cache)
    out, start = [], time.time()
    for row in sample_rows(args.manifest, args.reals, args.per_family):
        image = Image.open(args.manifest.parent / row["path"]).convert("RGB")
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        equalised = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        out.append(
            {
                "path": row["path"],
                "label": row["label"],
                "family": row["family"],
                "as_is": scores(net, image),
                "jpeg90": scores(net, equalised),
            }
        )
    args.features.write_text(json.dumps(out) + "\n")
    print(f"{len(out)} images in {time.time() - start:.0f} s")


def _auc(reals: np.ndarray, fakes: np.ndarray) -> float:
    y = np.r_[np.zeros(len(reals)), np.ones(len(fakes))]
    return float(roc_auc_score(y, -np.r_[reals, fakes]))  # lower error = generated


def summarise(args: argparse.Namespace) -> None:
    rows = json.loads(args.features.read_text())
    families: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["label"] == "fake":
            families[r["family"]].append(r)
    result: dict = {"features": str(args.features), "scores": SCORES, "rows": []}
    for view in VIEWS:
        reals = np.array([r[view] for r in rows if r["label"] == "real"])
        groups = [("all", [r for r in rows if r["label"] == "fake"])]
        groups += sorted(families.items(), key=lambda kv: -len(kv[1]))
        for name, fakes in groups:
            if len(fakes) < args.min_images:
                continue
            f = np.array([r[view] for r in fakes])
            aucs = {s: _auc(reals[:, i], f[:, i]) for i, s in enumerate(SCORES)}
            result["rows"].append(
                {
                    "view": view,
                    "family": name,
                    "n_real": len(reals),
                    "n_fake": len(f),
                    "roc_auc": aucs,
                }
            )
            print(view, f"{name:16s} {len(f):3d}", " ".join(f"{v:.3f}" for v in aucs.values()))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("manifest", type=Path)
    m.add_argument("features", type=Path)
    m.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "synthdetect")
    m.add_argument("--reals", type=int, default=200)
    m.add_argument("--per-family", type=int, default=25)
    s = sub.add_parser("summarise")
    s.add_argument("features", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--min-images", type=int, default=5)
    args = ap.parse_args()
    measure(args) if args.command == "measure" else summarise(args)


if __name__ == "__main__":
    main()
