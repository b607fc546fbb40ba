"""The quick profile that ``make test`` runs against a committed baseline (a few minutes).

Accuracy: the model, the artifact method and the default fused verdict (as ``score`` gives
it) on the tiny corpus's test split (the same
images on every machine up to floating-point differences in generator training; the gate's
accuracy tolerance allows for them). Speed: ratios measured within this run only: the server's
tensor throughput over the in-process engine's at the same batch size, and the engine's
batch-8 throughput over its batch-1 throughput. The three are measured in interleaved rounds
(engine batch 1, engine batch 8, server, then again) and each ratio is the median of its
per-round ratios, so that a few seconds of a noisy neighbour on a shared 2-core CI machine
move one round, not the gate. The server is first loaded at full concurrency without
measuring, so that every batch shape its dynamic batcher forms has run once.
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
from benchmarks.registry import Benchmark, fail, register_benchmark, result_file
from benchmarks.serving import free_port, start_server
from detector.bundled import DEFAULT_MODEL
from detector.engine import load_bundle

__all__ = ["quick_profile"]

ROUNDS = 3  # interleaved speed rounds; each ratio is the median over them
CLIENTS = 16  # concurrent clients loading the server


def quick_profile(data: Path, out: Path, model: Path | None = None, seconds: float = 3.0) -> dict:
    model = Path(model or DEFAULT_MODEL)
    options = {"model": {"model_path": model}}
    # every method that runs here: "fused" is then the default verdict users get (the opt-in
    # artifact method is measured on its own row, not fused)
    acc = accuracy_benchmark(data, options=options, log=lambda m: None)
    bundle = load_bundle(model)
    size = bundle.preprocess.input_size
    rng = np.random.default_rng(0)
    t1 = rng.normal(size=(1, 3, size, size)).astype(np.float32)
    t8 = rng.normal(size=(8, 3, size, size)).astype(np.float32)
    payload = tiles_payload("synthdetect_tiles", 8, size)
    port = free_port()
    server = start_server(model, port)
    url = f"http://127.0.0.1:{port}"
    rounds: list[dict] = []
    try:
        run_load(url, payload, CLIENTS, requests=10**6, seconds=min(1.0, seconds))  # warm-up
        for _ in range(ROUNDS):
            b1 = 1 / np.median(measure(lambda: bundle.engine.run(t1), seconds))
            b8 = 8 / np.median(measure(lambda: bundle.engine.run(t8), seconds))
            load = run_load(url, payload, CLIENTS, requests=10**6, seconds=seconds)
            rounds.append(
                {"batch1": float(b1), "batch8": float(b8), "server_c16": load.items_per_s}
            )
    finally:
        server.terminate()
        server.wait(60)

    def median(fn) -> float:
        return float(np.median([fn(r) for r in rounds]))

    result = {
        **environment(),
        "benchmark": "quick",
        "data": str(data),
        "model": acc["model"],  # path, name and sha256, as bench accuracy records it
        "accuracy_rows": [r for r in acc["rows"] if r["method"] in ("model", "artifact", "fused")],
        "engine_tiles_per_s": {
            "batch1": median(lambda r: r["batch1"]),
            "batch8": median(lambda r: r["batch8"]),
        },
        "server_tiles_per_s_c16": median(lambda r: r["server_c16"]),
        "speed_rounds": rounds,
        "gate": {
            "accuracy": {
                k: v
                for k, v in acc["gate"]["accuracy"].items()
                if k.split("@")[0] in ("model", "artifact", "fused")
            },
            "speed_ratio": {
                "server_vs_inprocess_tiles_c16": median(lambda r: r["server_c16"] / r["batch8"]),
                "engine_batch8_vs_batch1": median(lambda r: r["batch8"] / r["batch1"]),
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
    p.add_argument("--out", required=True, type=result_file)


def _run(args: argparse.Namespace) -> int:
    from detector.outputs import check_not_an_input

    check_not_an_input(args.out, args.data, args.model)
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
