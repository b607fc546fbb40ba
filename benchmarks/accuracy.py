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

import argparse
import io
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.env import environment
from benchmarks.registry import Benchmark, Results, fail, register_benchmark, result_file
from benchmarks.report import _f, _table, save_figure
from detector.argtypes import positive_int
from detector.image import ImageError, decode
from detector.methods import METHODS, create_method
from detector.pipeline import first_bands, fuse_results, method_bands, score_guarded
from training.datasets import Sample, load_samples, no_images_in_split
from training.degrade import apply_chain, chain_name, encode_jpeg, parse_grid
from training.metrics import compute_metrics, generator_groups, roc_curve

__all__ = ["accuracy_benchmark"]


def _degraded_bytes(sample: Sample, chain, equalise=None) -> bytes:
    data = sample.path.read_bytes()
    if not chain and not equalise:
        return data
    pixels = apply_chain(_decoded(sample, data).pixels, chain, np.random.default_rng(0))
    if equalise:
        return encode_jpeg(pixels, round(equalise[0].value))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _decoded(sample: Sample, data: bytes):
    try:
        return decode(data)
    except ImageError as exc:  # one bad file among thousands: say which
        raise ImageError(f"{sample.path}: {exc}") from None


def _available(names: Sequence[str] | None, options: dict) -> list[str]:
    """The methods to measure: every one that can run here, or those named, each of which
    must run (a named method that cannot is an error, as for ``score --methods``)."""
    if not names:
        return [
            n
            for n in METHODS.names()
            if METHODS.get(n).unavailable_reason(**options.get(n, {})) is None
        ]
    for name in names:
        reason = METHODS.get(name).unavailable_reason(**options.get(name, {}))
        if reason is not None:
            raise ValueError(f"method {name!r} is unavailable: {reason}")
    return list(names)


def _spread(samples: list, limit: int | None) -> list:
    """At most ``limit`` samples spread evenly over the list (a manifest is often sorted by
    class or source)."""
    if not limit or limit >= len(samples):
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]


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
    groups: dict[str, np.ndarray],
    ms: float,
) -> dict:
    """One method's metrics over the images it judged; per generator over ``groups`` (its
    fakes and the reals of the same pools, ``training.metrics.generator_groups``)."""
    covered = np.array([p is not None for p in probs])
    row: dict = {"coverage": float(covered.mean()), "ms_per_image": ms, "n": len(labels)}
    if covered.any() and len(set(labels[covered])) == 2:
        p = np.array([x for x in probs if x is not None], dtype=np.float64)
        row.update(compute_metrics(labels[covered], p, threshold).to_dict())
        row["roc"] = _roc(labels[covered], p)
        per_gen = {}
        for gen, group in groups.items():
            m = covered & group
            if m.sum() and len(set(labels[m])) == 2:
                pp = np.array([probs[i] for i in np.flatnonzero(m)], dtype=np.float64)
                metrics = compute_metrics(labels[m], pp, threshold)
                per_gen[gen] = {
                    "ap": metrics.ap,
                    "fake_accuracy": metrics.fake_accuracy_at_threshold,
                    "coverage": float(covered[group & (labels == 1)].mean()),
                }
        row["per_generator"] = per_gen
    elif covered.any():  # judged one class only: no ranking, but whether it judged right
        row["fake_coverage"] = float(covered[labels == 1].mean()) if (labels == 1).any() else None
        row["real_coverage"] = float(covered[labels == 0].mean()) if (labels == 0).any() else None
        p = np.array([np.nan if x is None else x for x in probs], dtype=np.float64)
        for name, label, right in (("fake", 1, p >= threshold), ("real", 0, p < threshold)):
            judged = covered & (labels == label)
            if judged.any():
                row[f"{name}_accuracy_at_threshold"] = float(right[judged].mean())
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
    every = load_samples(data)
    samples = every if split == "all" else [s for s in every if s.split == split]
    samples = _spread(samples, limit)
    if not samples:
        raise no_images_in_split(data, split, every)
    names = _available(methods, options)
    built = {n: create_method(n, **options.get(n, {})) for n in names}
    # The fused row is the verdict a user gets: over the named methods, or else over the
    # default set (an opt-in method is still measured on its own row).
    fused_names = [n for n in built if methods or built[n].in_default]
    bands = method_bands([built[n] for n in fused_names])  # those of the method that scored
    config = first_bands(bands)
    labels = np.array([s.label for s in samples])
    groups = generator_groups(samples)
    rows = []
    variants = [(chain, e) for chain in parse_grid(grid) for e in ([[], eq] if eq else [[]])]
    for chain, e in variants:
        cname = chain_name(chain)
        ename = chain_name(e)
        images = [_decoded(s, _degraded_bytes(s, chain, e)) for s in samples]
        per_method: dict[str, list] = {}
        timing: dict[str, float] = defaultdict(float)
        for name, method in built.items():
            start = time.perf_counter()
            results, failures = [], []
            for i in range(0, len(images), 16):  # a batch it fails on: abstentions, as scored
                part, failure = score_guarded(method, images[i : i + 16])
                results += part
                failures += [failure] if failure else []
            if failures:
                log(f"  {name} failed on {len(failures)} batch(es): {failures[0]}")
            timing[name] = (time.perf_counter() - start) / len(images) * 1000
            per_method[name] = results
        for name, results in per_method.items():
            threshold = getattr(built[name], "threshold", None) or getattr(
                getattr(built[name], "calibration", None), "threshold", 0.5
            )
            row = _metrics_row(
                labels, [r.probability for r in results], threshold, groups, timing[name]
            )
            rows.append(
                {"degradation": cname, "equalise": ename, "method": name,
                 "kind": built[name].kind.value, **row}
            )  # fmt: skip
        verdicts = [fuse_results([per_method[n][i] for n in fused_names], bands)
                    for i in range(len(images))]  # fmt: skip
        fused = [v.probability for v in verdicts]
        fused_ms = sum(timing[n] for n in fused_names)  # the fused methods' time, no other
        row = _metrics_row(labels, fused, config.threshold, groups, fused_ms)
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
        "model": _model_name(built.get("model"), options),
        "split": split,
        "images": len(samples),
        "methods": names,
        "fused_methods": fused_names,
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
    if not result["gate"]["accuracy"]:
        log("note: no method has an AP here (it needs real and generated images it judged): "
            "this result gates nothing")  # fmt: skip
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _model_name(method, options: dict) -> dict | None:
    """Which model the model method ran (None: not measured): its folder or checkpoint, its
    name and the sha256 its sidecar records."""
    if method is None:
        return None
    from detector.bundled import DEFAULT_MODEL

    path = (options.get("model") or {}).get("model_path") or DEFAULT_MODEL
    meta = method.bundle.meta
    return {"path": str(path), "name": method.bundle.name, "onnx_sha256": meta.get("onnx_sha256")}


# --- command line, report section and plots (the benchmark registry) ----------------------


def _coverage(share: float) -> str:
    """The share of images a method judged: a method that judged a few is not shown as one
    that judged none (0.00), nor one that abstained on a few as judging all (1.00)."""
    if 0 < share < 0.005:
        return "<0.01"
    if 0.995 <= share < 1:
        return ">0.99"
    return _f(share, 2)


def accuracy_table(result: dict) -> str:
    rows = [
        [r["degradation"], r.get("equalise", "none"), r["method"], r["kind"], _coverage(r["coverage"]), _f(r.get("ap")),
         _f(r.get("roc_auc")), _f(r.get("accuracy_at_threshold")),
         _f(r.get("real_accuracy_at_threshold")), _f(r.get("fake_accuracy_at_threshold")),
         _f(r.get("tpr_at_1pct_fpr")), _f(r["ms_per_image"], 1)]
        for r in result["rows"]
    ]  # fmt: skip
    header = ["degradation", "equalise", "method", "kind", "coverage", "AP", "ROC-AUC", "acc@thr",
              "real acc", "fake acc", "TPR@1%FPR", "ms/img"]  # fmt: skip
    model = result.get("model") or {}
    by = f", model {model['name']} ({model['path']})" if model.get("name") else ""
    title = f"Accuracy on {result['data']} (split {result['split']}, {result['images']} images{by})"
    return "\n".join([title, "", *_table(header, rows, 4)])


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--methods", help="comma-separated (default: every method that can run)")
    p.add_argument(
        "--degrade", default="none", help="grid of chains, e.g. none,jpeg:75,blur:1 or 'default'"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, help="at most this many images (evenly spread)")
    p.add_argument("--model", type=Path, help="model for the model method (default: bundled)")
    p.add_argument(
        "--equalise",
        metavar="jpeg:Q",
        help="also score every chain after re-encoding each image of both classes as a JPEG "
        "of quality Q (rows marked equalise), beside the as-is rows",
    )
    p.add_argument("--out", type=result_file)


def _run(args: argparse.Namespace) -> int:
    from detector.outputs import check_not_an_input
    from training.datasets import DatasetError
    from training.degrade import DEFAULT_GRID

    check_not_an_input(args.out, args.data, args.model)
    options = {"model": {"model_path": args.model}} if args.model else {}
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    grid = DEFAULT_GRID if args.degrade == "default" else args.degrade
    try:
        result = accuracy_benchmark(args.data, methods=methods, grid=grid, split=args.split, limit=args.limit,
                                    options=options, out=args.out, equalise=args.equalise,
                                    log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    except (ValueError, DatasetError, FileNotFoundError) as exc:
        return fail(exc)

    print(accuracy_table(result))
    return 0


def _section(files: Results) -> list[str]:
    lines = ["## Accuracy and robustness", ""]
    for _, acc in files:
        lines += [accuracy_table(acc), ""]
    return lines


def _plots(files: Results, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    acc = next((r for _, r in files if r["split"] == "test"), None)
    if not acc:
        return made
    acc = {**acc, "rows": [r for r in acc["rows"] if r.get("equalise", "none") == "none"]}
    grid = list(dict.fromkeys(r["degradation"] for r in acc["rows"]))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for method in dict.fromkeys(r["method"] for r in acc["rows"]):
        ys = [
            next(
                (
                    r.get("ap")
                    for r in acc["rows"]
                    if r["method"] == method and r["degradation"] == g
                ),
                None,
            )
            for g in grid
        ]
        if any(y is not None for y in ys):
            ax.plot(grid, [float("nan") if y is None else y for y in ys], marker="o", label=method)
    ax.set_ylabel("AP (over images the method judged)")
    ax.set_title("Robustness: AP under degradations (both classes degraded alike)")
    ax.tick_params(axis="x", rotation=30)
    lowest = min((r["ap"] for r in acc["rows"] if r.get("ap") is not None), default=1.0)
    ax.set_ylim(max(0.0, min(0.3, lowest - 0.02)), 1.02)  # every AP on the chart, however low
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    made.append(save_figure(fig, out / "robustness.png"))
    rocs = [r for r in acc["rows"] if r["degradation"] == "none" and r.get("roc")]
    if rocs:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for r in rocs:
            cov = _coverage(r["coverage"])
            ax.plot(
                r["roc"]["fpr"],
                r["roc"]["tpr"],
                label=f"{r['method']} (AUC {_f(r.get('roc_auc'), 3)}, cov {cov})",
            )
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate (reals)")
        ax.set_ylabel("true positive rate (generated)")
        ax.set_title("ROC per method (no degradation)")
        ax.legend(fontsize=7)
        made.append(save_figure(fig, out / "roc.png"))
    return made


register_benchmark(
    Benchmark("accuracy", "every method and the fused verdict on one set, under degradations", _arguments, _run, kind="accuracy",
              every_file=True, report_order=10, section=_section, plots=_plots)
)  # fmt: skip
