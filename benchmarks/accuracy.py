"""Accuracy and robustness of every registered method, and of the fused verdict, on one set.

Each degradation chain of the grid is applied to both classes alike; the degraded pixels are
stored losslessly (PNG) before scoring, so every method, metadata methods included, sees the
degraded file as an upload pipeline would hand it over. With ``equalise`` (``jpeg:Q``) every
chain is also scored after re-encoding each image of both classes as a JPEG of quality Q (no
metadata), in rows marked ``equalise``, beside the as-is rows: a method that separates the
classes by file format loses that edge there. Metadata methods abstain on most
images: their row reports *coverage* (the share of images they judged) and their metrics over
the images they judged, not an accuracy that counts abstentions as "camera".
"""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.env import environment
from detector.fusion import fuse
from detector.image import decode
from detector.methods import METHODS, create_method
from detector.pipeline import default_fusion
from training.datasets import Sample, load_samples
from training.degrade import apply_chain, chain_name, encode_jpeg, parse_grid
from training.metrics import compute_metrics, roc_curve

__all__ = ["accuracy_benchmark"]


def _degraded_bytes(sample: Sample, chain, equalise=None) -> bytes:
    data = sample.path.read_bytes()
    if not chain and not equalise:
        return data
    pixels = apply_chain(decode(data).pixels, chain, np.random.default_rng(0))
    if equalise:
        return encode_jpeg(pixels, round(equalise[0].value))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _available(names: Sequence[str] | None, options: dict) -> list[str]:
    chosen = list(names) if names else METHODS.names()
    ok = []
    for name in chosen:
        opts = options.get(name, {})
        if METHODS.get(name).availability(**opts) is None:
            ok.append(name)
    return ok


def _roc(labels: np.ndarray, scores: np.ndarray, points: int = 100) -> dict:
    """At most ``points`` points of the ROC curve (one per distinct score: tied scores are one
    threshold), for plotting."""
    fpr, tpr, _ = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(tpr) - 1, min(points, len(tpr))).round().astype(int))
    return {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()}


def _metrics_row(
    labels: np.ndarray,
    probs: list[float | None],
    threshold: float,
    generators: list[str],
    ms: float,
) -> dict:
    covered = np.array([p is not None for p in probs])
    row: dict = {"coverage": float(covered.mean()), "ms_per_image": ms, "n": len(labels)}
    if covered.any() and len(set(labels[covered])) == 2:
        p = np.array([x for x in probs if x is not None], dtype=np.float64)
        row.update(compute_metrics(labels[covered], p, threshold).to_dict())
        row["roc"] = _roc(labels[covered], p)
        per_gen = {}
        gens = np.array(generators)
        for gen in sorted(set(gens[labels == 1])):
            m = covered & ((labels == 0) | (gens == gen))
            if m.sum() and len(set(labels[m])) == 2:
                pp = np.array([probs[i] for i in np.flatnonzero(m)], dtype=np.float64)
                metrics = compute_metrics(labels[m], pp, threshold)
                per_gen[gen] = {
                    "ap": metrics.ap,
                    "fake_accuracy": metrics.fake_accuracy_at_threshold,
                    "coverage": float(covered[gens == gen].mean()),
                }
        row["per_generator"] = per_gen
    elif covered.any():
        row["fake_coverage"] = float(covered[labels == 1].mean()) if (labels == 1).any() else None
        row["real_coverage"] = float(covered[labels == 0].mean()) if (labels == 0).any() else None
    return row


def accuracy_benchmark(
    data: Path,
    *,
    methods: Sequence[str] | None = None,
    grid: str = "none",
    split: str = "test",
    limit: int | None = None,
    options: dict | None = None,
    out: Path | None = None,
    equalise: str | None = None,
    log=print,
) -> dict:
    from training.run_eval import parse_equalise

    options = options or {}
    eq = parse_equalise(equalise)
    samples = load_samples(data)
    if split != "all":
        samples = [s for s in samples if s.split == split]
    if limit:
        step = max(1, len(samples) // limit)
        samples = samples[::step][:limit]
    if not samples:
        raise ValueError(f"{data}: no images in split {split!r}")
    names = _available(methods, options)
    built = {n: create_method(n, **options.get(n, {})) for n in names}
    config = default_fusion(list(built.values()))
    labels = np.array([s.label for s in samples])
    generators = [s.generator for s in samples]
    rows = []
    variants = [(chain, e) for chain in parse_grid(grid) for e in ([[], eq] if eq else [[]])]
    for chain, e in variants:
        cname = chain_name(chain)
        ename = chain_name(e)
        images = [decode(_degraded_bytes(s, chain, e)) for s in samples]
        per_method: dict[str, list] = {}
        timing: dict[str, float] = defaultdict(float)
        for name, method in built.items():
            start = time.perf_counter()
            results = []
            for i in range(0, len(images), 16):
                results += method.score(images[i : i + 16])
            timing[name] = (time.perf_counter() - start) / len(images) * 1000
            per_method[name] = results
        for name, results in per_method.items():
            threshold = getattr(built[name], "threshold", None) or getattr(
                getattr(built[name], "calibration", None), "threshold", 0.5
            )
            row = _metrics_row(
                labels, [r.probability for r in results], threshold, generators, timing[name]
            )
            rows.append(
                {"degradation": cname, "equalise": ename, "method": name,
                 "kind": built[name].kind.value, **row}
            )  # fmt: skip
        verdicts = [fuse([per_method[n][i] for n in built], config) for i in range(len(images))]
        fused = [v.probability for v in verdicts]
        row = _metrics_row(labels, fused, config.threshold, generators, sum(timing.values()))
        rows.append(
            {"degradation": cname, "equalise": ename, "method": "fused", "kind": "fused", **row}
        )
        log(
            f"  {cname} (equalise {ename}): "
            + ", ".join(
                f"{r['method']} AP {r.get('ap', float('nan')):.3f} cov {r['coverage']:.2f}"
                for r in rows
                if r["degradation"] == cname and r["equalise"] == ename
            )
        )
    result = {
        **environment(),
        "benchmark": "accuracy",
        "data": str(data),
        "split": split,
        "images": len(samples),
        "methods": names,
        "equalise": chain_name(eq),
        "rows": rows,
        "gate": {
            "accuracy": {
                f"{r['method']}@{r['degradation']}"
                + (f"|eq={r['equalise']}" if r["equalise"] != "none" else "")
                + ".ap": r["ap"]
                for r in rows
                if r.get("ap") is not None
            }
        },
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
