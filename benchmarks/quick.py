"""The quick profile that ``make test`` runs against a committed baseline (a few minutes).

Accuracy: the model, artifact and fused verdict on the tiny corpus's test split (the same
images on every machine up to floating-point differences in generator training; the gate's
accuracy tolerance allows for them). Speed: ratios measured within this run only: the server's
tensor throughput over the in-process engine's at the same batch size, and the engine's
batch-8 throughput over its batch-1 throughput.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.accuracy import accuracy_benchmark
from benchmarks.env import environment
from benchmarks.latency import measure
from benchmarks.loadgen import run_load, tiles_payload
from benchmarks.registry import Benchmark, fail, register_benchmark
from benchmarks.serving import free_port, start_server
from detector.bundled import DEFAULT_MODEL
from detector.engine import load_bundle

__all__ = ["quick_profile"]


def quick_profile(data: Path, out: Path, model: Path | None = None, seconds: float = 3.0) -> dict:
    model = Path(model or DEFAULT_MODEL)
    options = {"model": {"model_path": model}}
    acc = accuracy_benchmark(
        data,
        methods=["model", "artifact", "c2pa", "generator_params"],
        options=options,
        log=lambda m: None,
    )
    bundle = load_bundle(model)
    size = bundle.preprocess.input_size
    rng = np.random.default_rng(0)
    t1 = rng.normal(size=(1, 3, size, size)).astype(np.float32)
    t8 = rng.normal(size=(8, 3, size, size)).astype(np.float32)
    b1 = 1 / np.median(measure(lambda: bundle.engine.run(t1), seconds))
    b8 = 8 / np.median(measure(lambda: bundle.engine.run(t8), seconds))
    port = free_port()
    server = start_server(model, port)
    try:
        load = run_load(
            f"http://127.0.0.1:{port}",
            tiles_payload("synthdetect_tiles", 8, size),
            16,
            requests=10**6,
            seconds=seconds,
        )
    finally:
        server.terminate()
        server.wait(60)
    result = {
        **environment(),
        "benchmark": "quick",
        "data": str(data),
        "model": str(model),
        "accuracy_rows": [r for r in acc["rows"] if r["method"] in ("model", "artifact", "fused")],
        "engine_tiles_per_s": {"batch1": b1, "batch8": b8},
        "server_tiles_per_s_c16": load.items_per_s,
        "gate": {
            "accuracy": {
                k: v
                for k, v in acc["gate"]["accuracy"].items()
                if k.split("@")[0] in ("model", "artifact", "fused")
            },
            "speed_ratio": {
                "server_vs_inprocess_tiles_c16": load.items_per_s / b8,
                "engine_batch8_vs_batch1": b8 / b1,
            },
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --- command line (the benchmark registry) ---------------------------------------------------


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--out", required=True, type=Path)


def _run(args: argparse.Namespace) -> int:

    try:
        result = quick_profile(args.data, args.out, args.model)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        return fail(exc)
    print(json.dumps(result["gate"], indent=2))
    return 0


register_benchmark(
    Benchmark(
        "quick", "the quick profile CI runs (tiny corpus, a few batch sizes)", _arguments, _run
    )
)
