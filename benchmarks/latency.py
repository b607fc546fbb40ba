"""In-process latency: engines x precisions x batch sizes, model-only and end to end.

Model-only times ``engine.run`` on random tiles; end to end times decode + preprocess + model
for one 512x512 JPEG at a time. Every configuration is warmed up first; p50 and p99 come from
repeated calls within a time budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.env import environment
from benchmarks.registry import Benchmark, Results, fail, register_benchmark, result_file
from benchmarks.report import _f, _table, save_figure, subhead
from detector.argtypes import batch_sizes, positive_float, positive_int
from detector.engine import ModelBundle, load_bundle, ort_has_gpu
from detector.image import decode
from detector.preprocess import preprocess

__all__ = ["latency_benchmark", "measure"]


def measure(fn, seconds: float, warmup: int = 3, min_calls: int = 5) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return np.array(times)


def _row(engine: str, precision: str, batch: int, times: np.ndarray, items: int) -> dict:
    return {
        "engine": engine,
        "precision": precision,
        "batch": batch,
        "calls": len(times),
        "p50_ms": float(np.percentile(times, 50) * 1000),
        "p99_ms": float(np.percentile(times, 99) * 1000),
        "items_per_s": float(items / np.median(times)),
    }


def _bundles(
    models: dict[str, Path],
    checkpoint: Path | None,
    device: str,
    torch_precisions: tuple[str, ...],
    cuda_graphs: bool,
    max_tiles: int | None = None,
) -> list[tuple[str, ModelBundle]]:
    out = []
    onnx_device = device
    if device == "cuda" and not ort_has_gpu():  # e.g. a GPU machine with the CPU wheel
        print(  # the rows' engine column names the provider, so nothing is passed off as GPU
            "ONNX Runtime has no GPU provider here: the ONNX rows run on the CPU, the torch "
            "rows (--checkpoint) on CUDA",
            file=sys.stderr,
        )
        onnx_device = "cpu"
    for precision, path in models.items():
        bundle = load_bundle(path, device=onnx_device, max_tiles=max_tiles)
        found = bundle.meta.get("precision", "fp32")  # what the export wrote in model.json
        if precision != "fp32" and found != precision:  # an int8 row must time an int8 graph
            raise ValueError(
                f"--{precision} {path}: its model.json says precision {found}, not {precision} "
                f"(synthdetect export --{precision} writes that copy to its own folder)"
            )
        if precision == "fp32" and found != "fp32" and found in models:  # two rows alike
            raise ValueError(
                f"--model {path} is {found} too (its model.json); give the fp32 folder as --model"
            )
        out.append((found, bundle))  # --model: whatever precision the folder holds
    if checkpoint is not None:
        onnx = {network(b.meta.get("model_spec")) for _, b in out}
        for precision in torch_precisions:
            for graphs in (False, True) if cuda_graphs and device == "cuda" else (False,):
                bundle = load_bundle(
                    checkpoint, device, precision=precision, cuda_graphs=graphs,
                    max_tiles=max_tiles,
                )  # fmt: skip
                out.append((precision, bundle))
        torch_net = network(out[-1][1].meta.get("model_spec"))
        if onnx and onnx != {torch_net}:  # labelled per row (model), and said here
            print(
                f"note: --checkpoint is {torch_net}, the ONNX rows time {', '.join(sorted(onnx))}: "
                "the torch and ONNX rows are two different networks, not two engines of one",
                file=sys.stderr,
            )
    return out


def network(spec: dict | None) -> str:
    """A model spec in a few words: the architecture (an ensemble's members) and its input size."""
    if not spec:
        return "unknown network"
    if spec.get("name") == "ensemble":
        return "ensemble of " + " + ".join(network(m) for m in spec.get("members", []))
    return f"{spec.get('name')} {spec.get('input_size')} px"


def _described(path: Path, precision: str, bundle: ModelBundle) -> dict:
    """Which model a row timed: its folder or checkpoint, name and graph (or file) sha256, so
    that two results of other models are never compared unnoticed (``bench compare``)."""
    digest = bundle.meta.get("onnx_sha256")
    if digest is None and Path(path).is_file():  # a torch checkpoint: the file itself
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"path": str(path), "name": bundle.name, "precision": precision, "sha256": digest}


def latency_benchmark(
    models: dict[str, Path],
    *,
    checkpoint: Path | None = None,
    batches: tuple[int, ...] = (1, 8, 32),
    seconds: float = 3.0,
    device: str = "cpu",
    torch_precisions: tuple[str, ...] = ("fp32",),
    cuda_graphs: bool = False,
    images: list[bytes] | None = None,
    out: Path | None = None,
    max_tiles: int | None = None,
) -> dict:
    """``models`` maps a precision (fp32, fp16, int8) to an exported ONNX directory; the torch
    engine runs ``checkpoint`` in each of ``torch_precisions``, and with ``cuda_graphs`` each
    once more with CUDA graphs (on CUDA). ``max_tiles``: each image's tiles at most, instead of
    the model's own (end to end)."""
    from benchmarks.serving import benchmark_images

    images = images or benchmark_images(8)
    rows, e2e = [], []
    chosen = _bundles(models, checkpoint, device, torch_precisions, cuda_graphs, max_tiles)
    for precision, bundle in chosen:
        size = bundle.preprocess.input_size
        net = network(bundle.meta.get("model_spec"))
        for batch in batches:
            tiles = (
                np.random.default_rng(batch).normal(size=(batch, 3, size, size)).astype(np.float32)
            )
            times = measure(lambda t=tiles, b=bundle: b.engine.run(t), seconds)
            rows.append(_row(bundle.engine.name, precision, batch, times, batch) | {"model": net})

        def one(b: ModelBundle = bundle, state: dict = {"i": 0}) -> None:  # noqa: B006 - a counter
            blob = images[state["i"] % len(images)]
            state["i"] += 1
            b.engine.run(preprocess(decode(blob).pixels, b.preprocess))

        times = measure(one, seconds)
        e2e.append(
            _row(bundle.engine.name, precision, 1, times, 1)
            | {"what": "decode+preprocess+model, 512x512 JPEG", "model": net}
        )
    sources = [*models.values(), *([checkpoint] * (len(chosen) - len(models)))]
    result = {
        **environment(), "benchmark": "latency", "max_tiles": max_tiles,  # None: the model's own
        # what was asked for: the rows' engine column says what ran (the CPU, without a GPU)
        "requested_device": device,
        "model": [_described(path, *pb) for path, pb in zip(sources, chosen, strict=True)],
        "model_only": rows, "end_to_end": e2e,
    }  # fmt: skip
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --- command line, report section and plots (the benchmark registry) ----------------------


def latency_table(result: dict) -> str:
    def row(r: dict, engine: str, batch) -> list[str]:
        return [engine, r["precision"], str(batch), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2),
                _f(r["items_per_s"], 1)]  # fmt: skip

    rows = [row(r, r["engine"], r["batch"]) for r in result["model_only"]]
    rows += [row(r, f"{r['engine']} (end to end)", "1 image") for r in result["end_to_end"]]
    header = ["engine", "precision", "batch", "p50 ms", "p99 ms", "items/s"]
    every = [*result["model_only"], *result["end_to_end"]]
    if len({r.get("model") for r in every}) > 1:  # two networks timed: say which row is which
        header.insert(1, "model")
        for r, cells in zip(every, rows, strict=True):
            cells.insert(1, r.get("model") or "?")
    return "\n".join(_table(header, rows, 2))


def _precisions(text: str) -> list[str]:
    from detector.engine import TORCH_PRECISIONS

    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in TORCH_PRECISIONS]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated precisions from {', '.join(TORCH_PRECISIONS)}, got {text!r}"
        )
    return values


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, type=Path,
        help="ONNX folder (fp32 as exported; its model.json names its precision)",
    )  # fmt: skip
    p.add_argument("--fp16", type=Path, help="fp16 ONNX folder")
    p.add_argument("--int8", type=Path, help="int8 ONNX folder")
    p.add_argument("--checkpoint", type=Path, help="also time the torch engine on this checkpoint")
    p.add_argument(
        "--torch-precisions",
        type=_precisions,
        default=["fp32"],
        help="precisions for the torch engine (comma-separated: fp32,fp16,bf16)",
    )
    p.add_argument(
        "--cuda-graphs", action="store_true", help="also time the torch engine with CUDA graphs"
    )
    p.add_argument("--batches", type=batch_sizes, default=[1, 8, 32, 128])
    p.add_argument("--seconds", type=positive_float, default=3.0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--max-tiles", type=positive_int, help="end to end: at most this many tiles per image"
    )
    p.add_argument("--out", type=result_file)


def _run(args: argparse.Namespace) -> int:

    models = {"fp32": args.model}
    if args.fp16:
        models["fp16"] = args.fp16
    if args.int8:
        models["int8"] = args.int8
    try:
        result = latency_benchmark(
            models,
            checkpoint=args.checkpoint,
            batches=tuple(args.batches),
            seconds=args.seconds,
            device=args.device,
            torch_precisions=tuple(args.torch_precisions),
            cuda_graphs=args.cuda_graphs,
            out=args.out,
            max_tiles=args.max_tiles,
        )
    except (ValueError, FileNotFoundError) as exc:
        return fail(exc)

    print(latency_table(result))
    return 0


def _section(files: Results) -> list[str]:
    lines = ["## In-process latency", ""]
    for name, lat in files:
        lines += [*subhead(name, files), latency_table(lat), ""]
    return lines


def _plots(files: Results, out: Path) -> list[str]:
    """One chart per result file (each measured on its own machine), one line per engine,
    precision and network, in batch order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    for file, lat in files:
        fig, ax = plt.subplots(figsize=(6, 4))
        model_only = lat["model_only"]
        models = {r.get("model") for r in model_only}
        for key in dict.fromkeys((r["engine"], r["precision"], r.get("model")) for r in model_only):
            rows = sorted(
                (r for r in model_only if (r["engine"], r["precision"], r.get("model")) == key),
                key=lambda r: r["batch"],
            )
            ax.plot(
                [r["batch"] for r in rows],
                [r["items_per_s"] for r in rows],
                marker="o",
                label=f"{key[0]} {key[1]}" + (f" ({key[2]})" if len(models) > 1 else ""),
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (tiles)")
        ax.set_ylabel("tiles / s")
        where = lat["device"].get("gpu") or lat["device"]["cpu"]
        ax.set_title(
            f"Model throughput vs batch size ({where[:40]})"
            + (f"\n{file}.json" if len(files) > 1 else "")
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        suffix = f"-{file}" if len(files) > 1 else ""
        made.append(save_figure(fig, out / f"latency_vs_batch{suffix}.png"))
    return made


register_benchmark(
    Benchmark("latency", "in-process latency over engines, precisions and batch sizes", _arguments, _run, kind="latency",
              every_file=True, report_order=20, section=_section, plots=_plots)
)  # fmt: skip
