"""Does the artifact method help or hurt the fused verdict on the validation sources?

The fused probability is ``sigmoid(sum w_i logit(p_i) / max(1, sum w_i))`` (detector.fusion):
with the model (weight 1) and the artifact method (weight 0.5), a third of the fused log-odds
comes from the artifact method's linear model. This scores the validation split of a mix
(as-is and JPEG-q90 equalised) with the model and with one or more artifact models, and
reports, per pool, the ROC-AUC and AP of the model alone and of the fused score for several
artifact weights, and the share of each class above the model's shipped threshold. Validation
only: what it chooses is a setting, and the test split stays untouched.

    python scripts/experiments/fusion_artifact.py MANIFEST OUT.json \
        --artifact shipped=detector/assets/models/artifact.json --artifact refit=runs/artifact-v3.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from detector.image import decode
from detector.methods import create_methods
from training.datasets import load_samples
from training.degrade import encode_jpeg
from training.metrics import compute_metrics

WEIGHTS = (0.0, 0.1, 0.25, 0.5)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--artifact", action="append", required=True, metavar="NAME=JSON")
    ap.add_argument("--split", default="val")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    samples = [s for s in load_samples(args.manifest) if s.split == args.split]
    (model,) = create_methods(["model"])
    threshold = model.threshold
    artifacts = {}
    for spec in args.artifact:
        name, path = spec.split("=", 1)
        (artifacts[name],) = create_methods(["artifact"], artifact_model=path)
    result: dict = {"manifest": str(args.manifest), "split": args.split, "weights": WEIGHTS,
                    "model_threshold": threshold, "views": {}}  # fmt: skip
    for view in ("as-is", "jpeg:90"):
        probs: dict[str, list] = {"model": [], **{n: [] for n in artifacts}}
        for i in range(0, len(samples), args.batch):
            images = []
            for s in samples[i : i + args.batch]:
                image = decode(s.path.read_bytes())
                if view == "jpeg:90":  # both classes re-encoded alike, as bench accuracy does
                    image = decode(encode_jpeg(image.pixels, 90))
                images.append(image)
            probs["model"] += [r.probability for r in model.score(images)]
            for name, method in artifacts.items():
                probs[name] += [r.probability for r in method.score(images)]
        result["views"][view] = _report(samples, probs, artifacts, threshold)
        print(view, json.dumps(result["views"][view]["wild"], indent=None)[:600])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


def _report(samples, probs, artifacts, threshold) -> dict:
    pools = {"all": list(range(len(samples)))}
    for i, s in enumerate(samples):
        pools.setdefault(s.pool or "-", []).append(i)
    out = {}
    for pool, idx in pools.items():
        labels = np.array([samples[i].label for i in idx])
        rows = {}
        m = np.array([_logit(probs["model"][i]) for i in idx])
        rows["model"] = _metrics(labels, m, threshold)
        for name in artifacts:
            a = np.array([_logit(p) if (p := probs[name][i]) is not None else 0.0 for i in idx])
            covered = np.array([probs[name][i] is not None for i in idx])
            rows[f"{name}:alone"] = _metrics(labels[covered], a[covered], None)
            for w in WEIGHTS[1:]:
                fused = (m + w * a * covered) / np.maximum(1.0, 1.0 + w * covered)
                rows[f"{name}:w{w:g}"] = _metrics(labels, fused, threshold)
        out[pool] = rows
    return out


def _metrics(labels: np.ndarray, logits: np.ndarray, threshold: float | None) -> dict:
    probs = 1 / (1 + np.exp(-logits))
    met = compute_metrics(labels, probs)
    row = {"n": len(labels), "ap": round(met.ap, 4), "roc_auc": round(met.roc_auc, 4)}
    if threshold is not None:
        row["reals_flagged"] = round(float((probs[labels == 0] >= threshold).mean()), 4)
        row["fakes_flagged"] = round(float((probs[labels == 1] >= threshold).mean()), 4)
    return row


if __name__ == "__main__":
    main()
