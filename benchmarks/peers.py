"""Our server against its peers, same model, same ONNX Runtime thread settings, one run.

Peers: a real Triton server (PyTriton, ONNX Runtime inside, Triton's dynamic batcher) and a
naive server (one request at a time, no batching). The tensor model is driven at each
concurrency with batch-1 requests (what a moderation pipeline sends per image tile); the
naive server is also driven on ``/v1/score``. The report gives ratios to the peers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.env import environment
from benchmarks.loadgen import run_load, score_payload, tiles_payload
from benchmarks.serving import benchmark_images, spawn_ready, start_server
from detector.engine import load_bundle

__all__ = ["peers_benchmark"]


def _sweep(url: str, payload, concurrency: tuple[int, ...], seconds: float) -> list[dict]:
    return [
        run_load(url, payload, c, requests=10**6, seconds=seconds).to_dict() for c in concurrency
    ]


def peers_benchmark(
    model: Path,
    concurrency: tuple[int, ...],
    seconds: float,
    pytriton_python: Path | None,
    out: Path | None,
    engine_args: tuple[str, ...] = (),
) -> dict:
    """``engine_args`` (e.g. ``--device cuda --precision fp16 --cuda-graphs``) go to our server
    and the naive one alike, so both run the same engine; PyTriton runs the ONNX model on the
    CPU and is left out when they name another device."""
    size = load_bundle(model).preprocess.input_size
    on_cpu = "cuda" not in engine_args
    tiles = tiles_payload("synthdetect_tiles", 1, size)
    scores = score_payload(benchmark_images(), "model")
    servers: dict[str, dict] = {}
    procs = {}
    try:
        procs["synthdetect"] = start_server(model, 8765, ["--max-batch-size", "32", *engine_args])
        servers["synthdetect"] = {"tiles": _sweep("http://127.0.0.1:8765", tiles, concurrency, seconds),
                                  "score": _sweep("http://127.0.0.1:8765", scores, concurrency, seconds)}  # fmt: skip
        procs["synthdetect"].terminate()
        procs["synthdetect"].wait(60)
        naive = spawn_ready([sys.executable, "-m", "benchmarks.naive_server", "--model", str(model), "--port", "8766", *engine_args], 8766)  # fmt: skip
        procs["naive"] = naive
        servers["naive"] = {"tiles": _sweep("http://127.0.0.1:8766", tiles, concurrency, seconds),
                            "score": _sweep("http://127.0.0.1:8766", scores, concurrency, seconds)}  # fmt: skip
        naive.terminate()
        naive.wait(60)
        if pytriton_python and Path(pytriton_python).exists() and on_cpu:
            script = Path(__file__).with_name("pytriton_server.py")
            env = {**os.environ, "LD_LIBRARY_PATH": _libdir(pytriton_python)}
            pt = spawn_ready([str(pytriton_python), str(script), "--model", str(model), "--port", "8767"], 8767, env=env)  # fmt: skip
            procs["pytriton"] = pt
            servers["pytriton"] = {
                "tiles": _sweep("http://127.0.0.1:8767", tiles, concurrency, seconds)
            }
            pt.terminate()
            pt.wait(60)
        else:
            servers["pytriton"] = {
                "skipped": "no PyTriton venv (run benchmarks/setup_pytriton.sh)"
                if on_cpu
                else "PyTriton peer runs ONNX Runtime on the CPU only"
            }
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    ratios = {}
    for i, c in enumerate(concurrency):
        ours = servers["synthdetect"]["tiles"][i]
        for peer in ("naive", "pytriton"):
            rows = servers[peer].get("tiles")
            if rows:
                ratios[f"tiles_throughput_vs_{peer}_c{c}"] = ours["items_per_s"] / max(
                    rows[i]["items_per_s"], 1e-9
                )
                ratios[f"tiles_p99_vs_{peer}_c{c}"] = ours["p99_ms"] / max(rows[i]["p99_ms"], 1e-9)
        ratios[f"score_throughput_vs_naive_c{c}"] = servers["synthdetect"]["score"][i][
            "items_per_s"
        ] / max(servers["naive"]["score"][i]["items_per_s"], 1e-9)
    result = {**environment(), "benchmark": "peers", "model": str(model), "concurrency": list(concurrency),
              "engine_args": list(engine_args),
              "servers": servers, "ratios": ratios,
              "gate": {"speed_ratio": {k: v for k, v in ratios.items() if "throughput" in k and k.endswith("c16")}}}  # fmt: skip
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _libdir(python: Path) -> str:
    """PyTriton's stub must load the same libpython as its venv (see the notes)."""
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip() + (
        ":" + os.environ["LD_LIBRARY_PATH"] if os.environ.get("LD_LIBRARY_PATH") else ""
    )
