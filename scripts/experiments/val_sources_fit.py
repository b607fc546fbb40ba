"""Would the bundled pair rank new sources higher if its probe were fitted on more of them?

The validation split's real-world source groups are cut in two halves at random. The probe (the
bundled recipe: ``training.probe.fit_logistic``, the configuration's ``probe_drop_pcs``, C
``--c``) is fitted twice, on the training split alone and on the training split plus the first
half's images (each as-is and after one draw of the training degradations, weighted as
training weighs them), and both fits score the second half, both classes, as they are and
re-encoded as JPEG q90: alone, and averaged with the fine-tuned member (``--fine-tuned``, an
ONNX folder, v4 for the bundled pair) as ``synthdetect ensemble`` averages them (equal weights
on temperature-scaled logits). Then the halves swap. Nothing of the test split is read.

``--unit group`` cuts by source group, as the corpus splits; ``--unit site`` keeps each
repository owner's images of one class together, so that no site's photos (or its generated
images) are on both sides: a harder question, since sites publish many groups of one kind.

The probe's temperature, which sets its weight in the pair, is fitted on the scored half for
both fits alike (a scale only: it cannot reorder the probe's own scores). Features come from
the cache ``frozen_probe.py`` and ``synthdetect probe`` fill (``--features``).

    python scripts/experiments/val_sources_fit.py runs/mix/manifest.csv OUT.json \
        --features runs/probe-cache --fine-tuned runs/v4-onnx [--seeds 0,1,2] [--unit site]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

from detector.engine import load_bundle
from detector.preprocess import PreprocessConfig
from training.calibrate import fit_temperature
from training.config import load_config
from training.datasets import load_samples
from training.metrics import compute_metrics
from training.probe import FeatureCache, FrozenFeatures, fit_logistic, frozen_lite0, training_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ensemble import model_logits  # the same logits cache as ensemble.py

VIEWS = {"as_is": "as-is", "equalised": "jpeg:90"}


def units_of(samples, unit: str, manifest: Path) -> list[str]:
    """Each sample's indivisible piece of a half: its source group, or its site (repository
    owner, from the manifest's ``repo`` column) and class."""
    if unit == "group":
        return [s.source_id for s in samples]
    with open(manifest, newline="") as fh:
        repo = {str(manifest.parent / r["path"]): r.get("repo") or r["source_id"]
                for r in csv.DictReader(fh)}  # fmt: skip
    return [f"{repo[str(s.path)].split('/')[0]}:{s.label}" for s in samples]


def metrics(y: np.ndarray, z: np.ndarray) -> dict:
    m = compute_metrics(y, expit(z))
    return {"ap": m.ap, "roc_auc": m.roc_auc, "tpr_at_1pct_fpr": m.tpr_at_1pct_fpr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--features", type=Path, required=True, help="folder of cached features")
    ap.add_argument("--fine-tuned", type=Path, required=True, help="the pair's other member")
    ap.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    ap.add_argument("--c", type=float, default=0.001)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--unit", choices=("group", "site"), default="group")
    ap.add_argument("--cache", type=Path, default=Path("runs/ensemble-cache"))
    args = ap.parse_args()
    config = load_config(args.config, [])
    samples = load_samples(args.manifest)
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val" and s.pool == "wild"]
    prep = PreprocessConfig(input_size=config.input_size, max_tiles=config.max_tiles)
    cache = FeatureCache(
        FrozenFeatures(frozen_lite0()), prep, args.features, config.augment, config.seed
    )
    bundle = load_bundle(args.fine_tuned)
    ft = {k: model_logits("ft", bundle, args.fine_tuned, val, args.cache, None if v == "as-is"
                          else v) for k, v in VIEWS.items()}  # fmt: skip
    val_x = {k: cache.get(val, v) for k, v in VIEWS.items()}
    y_val = np.array([s.label for s in val])

    def fit(extra: list[int]) -> tuple[np.ndarray, float]:  # as synthdetect probe fits
        x, y, w = training_rows(train + [val[i] for i in extra], cache, config)
        return fit_logistic(x, y, w, args.c, config.probe_drop_pcs)

    t = time.time()
    base = fit([])
    print(f"the training split alone fitted ({time.time() - t:.0f} s)", flush=True)
    unit = units_of(val, args.unit, args.manifest)
    units = sorted(set(unit))
    rows = []
    for seed in [int(v) for v in args.seeds.split(",") if v]:
        first = set(np.random.default_rng(seed).permutation(units)[: len(units) // 2])
        for fitted in (first, set(units) - first):
            added = [i for i, u in enumerate(unit) if u in fitted]
            scored = [i for i, u in enumerate(unit) if u not in fitted]
            y = y_val[scored]
            if y.all() or not y.any():
                print(f"seed {seed}: the scored half has one class only, skipped")
                continue
            t = time.time()
            more = fit(added)
            row = {
                "seed": seed, "units_added": sorted(fitted),
                "added": {"real": int((y_val[added] == 0).sum()),
                          "generated": int(y_val[added].sum())},
                "scored": {"real": int((y == 0).sum()), "generated": int(y.sum())},
            }  # fmt: skip
            for kind in VIEWS:
                z_ft = ft[kind][scored]
                row[kind] = {"fine_tuned": metrics(y, z_ft)}
                for name, (weight, bias) in (("train", base), ("train+half", more)):
                    z = val_x[kind][scored] @ weight + bias
                    z = z / fit_temperature(z, y)
                    row[kind][f"probe_{name}"] = metrics(y, z)
                    row[kind][f"pair_{name}"] = metrics(y, 0.5 * z_ft + 0.5 * z)
            rows.append(row)
            e = row["equalised"]
            print(
                f"seed {seed}, +{row['added']} -> {row['scored']}: ROC-AUC equalised pair "
                f"{e['pair_train']['roc_auc']:.3f} -> {e['pair_train+half']['roc_auc']:.3f}, "
                f"probe {e['probe_train']['roc_auc']:.3f} -> "
                f"{e['probe_train+half']['roc_auc']:.3f} ({time.time() - t:.0f} s)",
                flush=True,
            )

    def mean(kind: str, arm: str, key: str) -> float:
        return float(np.mean([r[kind][arm][key] for r in rows]))

    summary = {
        kind: {arm: {k: mean(kind, arm, k) for k in ("ap", "roc_auc", "tpr_at_1pct_fpr")}
               for arm in rows[0][kind]}
        for kind in VIEWS
    } if rows else {}  # fmt: skip
    result = {
        "manifest": str(args.manifest), "fine_tuned": str(args.fine_tuned), "C": args.c,
        "drop_pcs": config.probe_drop_pcs, "unit": args.unit, "seeds": args.seeds,
        "scored": "the other half's wild validation images, both classes; probe temperature "
                  "fitted on them for both fits alike",
        "rows": rows, "summary": summary,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
