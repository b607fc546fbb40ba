"""Does averaging the logits of several models generalise better than one of them?

Scores exported models (ONNX folders) on what a candidate is chosen by (never the test split):
the validation split without the held-out families, each held-out group's fakes from every
split but test against the validation reals, and the ``heldout-real`` photos. Then scores every
named combination by the mean of its members' temperature-scaled logits. Each model and each
combination gets a threshold chosen the same way (at most ``--target-fpr`` of the validation
reals above it, as training's calibration does on the as-is view), so the share of fakes
flagged compares like with like. Each model's logits are kept in ``--cache`` (keyed by the ONNX
file's hash and the images), so adding a combination costs no scoring.

    python scripts/experiments/ensemble.py MANIFEST OUT.json --model a=runs/select/x-onnx \
        --model b=runs/select/y-onnx --combo a+b [--combo a*0.3+b*0.7] [--held-out ...] \
        [--equalise jpeg:90]

With ``--equalise`` every image of both classes is re-encoded first, and the threshold is
chosen on the re-encoded validation reals.

The held-out families default to those every model's run left out of training (the selection
runs: Midjourney, FLUX.1/.2 and the GANs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from detector.engine import load_bundle
from training.datasets import load_samples
from training.degrade import apply_chain
from training.evaluate import predict_logits
from training.metrics import compute_metrics, threshold_at_fpr
from training.run_eval import (
    HELD_OUT_FAKE_SPLITS,
    excluded_families,
    parse_equalise,
    read_holdouts,
)


def combo_members(combo: str) -> list[tuple[str, float]]:
    """``a+b`` -> [(a, 1), (b, 1)]; ``a*0.3+b*0.7`` -> [(a, 0.3), (b, 0.7)] (normalised later)."""
    out = []
    for part in combo.split("+"):
        name, _, weight = part.partition("*")
        out.append((name, float(weight) if weight else 1.0))
    return out


def scored_samples(samples, excluded: set[str]):
    val = [s for s in samples if s.split == "val" and s.family not in excluded]
    held = [
        s
        for s in samples
        if s.label == 1 and s.split in HELD_OUT_FAKE_SPLITS and s.family in excluded
    ]
    real = [s for s in samples if s.split == "heldout-real"]
    return val, held, real


def model_logits(
    name: str, bundle, folder: Path, chosen, cache: Path, equalise: str | None = None
) -> np.ndarray:
    """Temperature-scaled logits of ``chosen``, each image re-encoded by ``equalise`` first if
    given (cached by graph, preprocessing, images and re-encoding)."""
    digest = hashlib.sha256()
    digest.update((folder / "model.onnx").read_bytes())
    digest.update(json.dumps(bundle.preprocess.to_dict(), sort_keys=True).encode())
    digest.update("\n".join(str(s.path) for s in chosen).encode())
    chain = parse_equalise(equalise)
    if chain:
        digest.update(equalise.encode())
    key = cache / f"{name}-{digest.hexdigest()[:16]}.npy"
    if key.exists():
        raw = np.load(key)
    else:
        transform = (lambda px: apply_chain(px, chain)) if chain else None
        raw = predict_logits(bundle.logits, chosen, bundle.preprocess, transform=transform)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(key, raw)
    return raw / bundle.calibration.temperature


def report(logits, val, held, real, groups, target_fpr) -> dict:
    """Validation, held-out groups and heldout-real for one vector of logits."""
    n_val, n_held = len(val), len(held)
    yv = np.array([s.label for s in val])
    prob = 1 / (1 + np.exp(-logits))
    pv, ph, pr = prob[:n_val], prob[n_val : n_val + n_held], prob[n_val + n_held :]
    thr = threshold_at_fpr(pv[yv == 0], target_fpr)

    def ranked(y, p) -> dict:
        m = compute_metrics(y, p, thr)
        return {
            "ap": m.ap,
            "roc_auc": m.roc_auc,
            "fakes_flagged": m.fake_accuracy_at_threshold,
            "reals_flagged": 1 - m.real_accuracy_at_threshold,
        }

    out = {"threshold": float(thr), "val": ranked(yv, pv)}
    for pool in sorted({s.pool for s in val}):
        inside = np.array([s.pool == pool for s in val])
        if len(set(yv[inside])) == 2:
            out["val"][f"pool:{pool}"] = ranked(yv[inside], pv[inside])
    out["held_out"] = {}
    for name, fams in groups.items():
        fake = np.array([s.family in fams for s in held])
        pools = {s.pool for s, f in zip(held, fake, strict=True) if f}
        reals = np.array([s.label == 0 and s.pool in pools for s in val])
        y = np.r_[np.ones(fake.sum()), np.zeros(reals.sum())]
        g = compute_metrics(y, np.r_[ph[fake], pv[reals]], thr)
        out["held_out"][name] = {
            "n_fake": int(fake.sum()),
            "ap": g.ap,
            "roc_auc": g.roc_auc,
            "fakes_flagged": g.fake_accuracy_at_threshold,
        }
    out["mean_held_out_ap"] = float(np.mean([g["ap"] for g in out["held_out"].values()]))
    out["mean_held_out_roc_auc"] = float(np.mean([g["roc_auc"] for g in out["held_out"].values()]))
    out["heldout_real_flagged"] = float(np.mean(pr >= thr)) if len(pr) else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=ONNX_DIR")
    ap.add_argument(
        "--combo", action="append", default=[], metavar="A+B[+C...]",
        help="members averaged; A*0.3+B*0.7 weighs them (weights normalised)",
    )  # fmt: skip
    ap.add_argument(
        "--held-out",
        help="families scored as held out (default: those every model's run left out of "
        "training; a model trained on one of them is refused)",
    )
    ap.add_argument("--holdouts", type=Path, default=Path("configs/holdouts-wild.yaml"))
    ap.add_argument("--target-fpr", type=float, default=0.01)
    ap.add_argument("--cache", type=Path, default=Path("runs/ensemble-cache"))
    ap.add_argument(
        "--equalise", metavar="jpeg:Q", help="re-encode every image of both classes first"
    )
    args = ap.parse_args()

    if any("=" not in m for m in args.model):
        ap.error("--model takes NAME=ONNX_DIR")
    models = dict(m.split("=", 1) for m in args.model)
    unknown = sorted({m for c in args.combo for m, _ in combo_members(c)} - set(models))
    if unknown:
        ap.error(f"--combo names models not given by --model: {unknown}")
    bundles = {n: load_bundle(Path(d)) for n, d in models.items()}
    left_out = [set(excluded_families(b)) for b in bundles.values()]
    excluded = set(args.held_out.split(",")) if args.held_out else set.intersection(*left_out)
    for (name, _), fams in zip(bundles.items(), left_out, strict=True):
        if not excluded <= fams:
            ap.error(f"{name} was trained on {sorted(excluded - fams)}: not held out for it")
    if not excluded:
        ap.error("no family was left out of every model's training: nothing is held out")
    samples = load_samples(args.manifest)
    groups = {
        name: g["score"]
        for name, g in read_holdouts(args.holdouts, samples).items()
        if set(g["exclude"]) <= excluded
    }
    val, held, real = scored_samples(samples, excluded)
    chosen = val + held + real
    logits = {
        n: model_logits(n, bundles[n], Path(d), chosen, args.cache, args.equalise)
        for n, d in models.items()
    }
    result = {
        "manifest": str(args.manifest),
        "held_out": groups,
        "counts": {"val": len(val), "held_out_fakes": len(held), "heldout_real": len(real)},
        "combination": "mean of the members' temperature-scaled logits (a*w+b*v: weighted mean)",
        "equalise": args.equalise or "none",
        "threshold": f"at most {args.target_fpr:.0%} of the validation reals above it "
        f"({'as-is' if not args.equalise else 're-encoded ' + args.equalise})",
        "models": {n: str(d) for n, d in models.items()},
        "rows": {},
    }
    for name in [*models, *args.combo]:
        members = combo_members(name)
        total = sum(w for _, w in members)
        mean = sum(w / total * logits[m] for m, w in members)
        result["rows"][name] = report(mean, val, held, real, groups, args.target_fpr)
        row = result["rows"][name]
        print(
            f"{name:40s} val AP {row['val']['ap']:.3f} ROC {row['val']['roc_auc']:.3f} "
            f"flagged {row['val']['fakes_flagged']:.3f} | wild val ROC "
            f"{row['val'].get('pool:wild', {}).get('roc_auc', float('nan')):.3f} | held-out mean AP "
            f"{row['mean_held_out_ap']:.3f} ROC {row['mean_held_out_roc_auc']:.3f} "
            + " ".join(f"{g} {v['roc_auc']:.2f}" for g, v in row["held_out"].items())
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
