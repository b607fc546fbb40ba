"""Does the artifact method help or hurt the fused verdict on the validation sources?

The model and the artifact method both read the pixels, so fusion averages them as one source:
``sigmoid(sum w_i logit(p_i) / max(1, sum w_i))`` over the two (detector.fusion): with the
model (weight 1) and the artifact method (weight 0.5), a third of the fused log-odds comes
from the artifact method's linear model. This scores the validation split of a mix
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
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.accuracy import _degraded_bytes
from detector.fusion import FusionConfig, fuse
from detector.image import decode
from detector.methods import create_methods
from training.datasets import load_samples
from training.metrics import compute_metrics
from training.run_eval import parse_equalise

WEIGHTS = (0.0, 0.1, 0.25, 0.5)


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
        equalise = parse_equalise(view if view != "as-is" else None)
        results: dict[str, list] = {"model": [], **{n: [] for n in artifacts}}
        for i in range(0, len(samples), args.batch):
            # both classes re-encoded alike, the way bench accuracy does it
            images = [decode(_degraded_bytes(s, [], equalise)) for s in samples[i : i + args.batch]]
            for name, method in (("model", model), *artifacts.items()):
                results[name] += method.score(images)
        result["views"][view] = _report(samples, results, artifacts, threshold)
        print(view, json.dumps(result["views"][view]["wild"], indent=None)[:600])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


def _report(samples, results, artifacts, threshold) -> dict:
    """Per pool: the model alone, each artifact model alone (where it judged), and the fused
    verdict (detector.fusion, the product's rule) with the artifact result at each weight."""
    pools = {"all": list(range(len(samples)))}
    for i, s in enumerate(samples):
        pools.setdefault(s.pool or "-", []).append(i)
    config = FusionConfig(threshold=threshold)
    out = {}
    for pool, idx in pools.items():
        labels = np.array([samples[i].label for i in idx])
        model = [results["model"][i] for i in idx]
        rows = {
            "model": _metrics(labels, [fuse([m], config).probability for m in model], threshold)
        }
        for name in artifacts:
            own = [results[name][i] for i in idx]
            covered = np.array([r.probability is not None for r in own])
            alone = [r.probability for r in own if r.probability is not None]
            rows[f"{name}:alone"] = _metrics(labels[covered], alone, None)
            for w in WEIGHTS[1:]:
                fused = [fuse([m, replace(a, weight=w)], config).probability
                         for m, a in zip(model, own, strict=True)]  # fmt: skip
                rows[f"{name}:w{w:g}"] = _metrics(labels, fused, threshold)
        out[pool] = rows
    return out


def _metrics(labels: np.ndarray, probs, threshold: float | None) -> dict:
    met = compute_metrics(labels, probs, threshold)
    row = {"n": len(labels), "ap": round(met.ap, 4), "roc_auc": round(met.roc_auc, 4)}
    if threshold is not None:
        row["reals_flagged"] = round(1 - met.real_accuracy_at_threshold, 4)
        row["fakes_flagged"] = round(met.fake_accuracy_at_threshold, 4)
    return row


if __name__ == "__main__":
    main()
