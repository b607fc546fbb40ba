"""In-process latency: engines x precisions x batch sizes, model-only and end to end.

Model-only times ``engine.run`` on random tiles; end to end times decode + preprocess + model
for one 512x512 JPEG at a time. Every configuration is warmed up first; p50 and p99 come from
repeated calls within a time budget.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.env import environment
from detector.engine import ModelBundle, load_bundle
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
) -> list[tuple[str, ModelBundle]]:
    out = [(precision, load_bundle(path, device=device)) for precision, path in models.items()]
    if checkpoint is not None:
        for precision in torch_precisions:
            for graphs in (False, True) if cuda_graphs and device == "cuda" else (False,):
                bundle = load_bundle(checkpoint, device, precision=precision, cuda_graphs=graphs)
                out.append((precision, bundle))
    return out


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
) -> dict:
    """``models`` maps a precision (fp32, fp16, int8) to an exported ONNX directory; the torch
    engine runs ``checkpoint`` in each of ``torch_precisions``, and with ``cuda_graphs`` each
    once more with CUDA graphs (on CUDA)."""
    from benchmarks.serving import benchmark_images

    images = images or benchmark_images(8)
    rows, e2e = [], []
    for precision, bundle in _bundles(models, checkpoint, device, torch_precisions, cuda_graphs):
        size = bundle.preprocess.input_size
        for batch in batches:
            tiles = (
                np.random.default_rng(batch).normal(size=(batch, 3, size, size)).astype(np.float32)
            )
            times = measure(lambda t=tiles, b=bundle: b.engine.run(t), seconds)
            rows.append(_row(bundle.engine.name, precision, batch, times, batch))

        def one(b: ModelBundle = bundle, state: dict = {"i": 0}) -> None:  # noqa: B006 - a counter
            blob = images[state["i"] % len(images)]
            state["i"] += 1
            b.engine.run(preprocess(decode(blob).pixels, b.preprocess))

        times = measure(one, seconds)
        e2e.append(
            _row(bundle.engine.name, precision, 1, times, 1)
            | {"what": "decode+preprocess+model, 512x512 JPEG"}
        )
    result = {**environment(), "benchmark": "latency", "model_only": rows, "end_to_end": e2e}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
