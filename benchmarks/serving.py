"""Server versus in-process, measured in one run on one machine (the serving targets).

1. In process: the engine on batches of tiles; the decode + preprocess + model pipeline on
   512x512 JPEGs (decoding in a thread pool, one engine call per batch); one image at a time.
2. The server (``synthdetect serve`` in its own process) under the closed-loop load generator:
   the FP32 tensor model at the same batch size, ``/v1/score?methods=model`` with the same
   JPEGs, and concurrency 1 for latency.
3. ``perf_analyzer`` against the server, when it is installed (``perf_analyzer_exe``).

Ratios are what the targets and the regression gate compare: absolute numbers move with the
machine, ratios measured in the same run do not (much).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.env import environment, model_record
from benchmarks.loadgen import run_load, score_payload, tiles_payload
from benchmarks.registry import Benchmark, Results, fail, register_benchmark, result_file
from detector.argtypes import positive_float, positive_int
from detector.engine import load_bundle
from detector.image import decode
from detector.preprocess import preprocess

__all__ = ["benchmark_images", "free_port", "serving_benchmark", "start_server"]

TARGETS = {"tensor_ratio_c16": 0.85, "score_ratio_c16": 0.80, "latency_overhead_ms_c1": 3.0}


def benchmark_images(n: int = 16, size: int = 512, seed: int = 0) -> list[bytes]:
    """Photo-like 512x512 JPEGs (quality 90) made from the bundled procedural scenes."""
    from training.degrade import encode_jpeg
    from training.metadata_writers import synthetic_scene

    return [encode_jpeg(synthetic_scene(seed + i, size, size), 90) for i in range(n)]


def _timed(fn, seconds: float, warmup: int = 3) -> tuple[int, float]:
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n, time.perf_counter() - start


def inprocess(model_dir: Path, batch: int, images: list[bytes], seconds: float) -> dict:
    bundle = load_bundle(model_dir)
    size = bundle.preprocess.input_size
    tiles = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    n, t = _timed(lambda: bundle.engine.run(tiles), seconds)
    engine_tps = n * batch / t

    pool = ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0))))

    def prep(blob: bytes) -> np.ndarray:
        return preprocess(decode(blob).pixels, bundle.preprocess)

    def pipeline() -> None:
        stacks = list(pool.map(prep, images))
        bundle.engine.run(np.concatenate(stacks))

    n, t = _timed(pipeline, seconds, warmup=1)
    pipeline_ips = n * len(images) / t

    lat = []
    for blob in images * 3:
        start = time.perf_counter()
        bundle.engine.run(prep(blob))
        lat.append(time.perf_counter() - start)
    pool.shutdown()
    return {
        "engine": bundle.engine.name,
        "tile_batch": batch,
        "engine_tiles_per_s": engine_tps,
        "pipeline_images_per_s": pipeline_ips,
        "single_image_p50_ms": float(np.percentile(np.array(lat) * 1000, 50)),
        "tiles_per_image": len(prep(images[0])),
    }


_BUNDLES: dict[str, object] = {}


def single_image_p50(model_dir: Path, images: list[bytes], repeats: int = 3) -> float:
    """p50 of decode + preprocess + model for one image at a time, in this process."""
    bundle = _BUNDLES.setdefault(str(model_dir), load_bundle(model_dir))
    lat = []
    for blob in images * repeats:
        start = time.perf_counter()
        bundle.engine.run(preprocess(decode(blob).pixels, bundle.preprocess))
        lat.append(time.perf_counter() - start)
    return float(np.percentile(np.array(lat) * 1000, 50))


def spawn_ready(
    cmd: list[str],
    port: int,
    *,
    model: str = "synthdetect_tiles",
    timeout: float = 180,
    env: dict[str, str] | None = None,
    wait_for: str | None = None,
) -> subprocess.Popen:
    """Start a server process and wait until ``model`` answers ready on ``port``.

    Polls the *model's* ready endpoint: a Triton server answers ``/v2/health/ready`` before
    its models are loaded, and requests sent then fail with 404. The server's stderr goes to
    a temporary file (a pipe nobody reads would fill and stall it) and is quoted if it exits.
    ``wait_for``: a line the server also has to print first (``serve --processes`` answers
    ready as soon as its first process listens; the others are not up until it says so).
    """
    url = f"http://127.0.0.1:{port}/v2/models/{model}/ready"
    with socket.socket() as probe:  # another server there would answer for ours: refuse
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(
                f"port {port} is taken by another process: a benchmark would measure that one"
            )
    # The child keeps its own descriptor of the (already unlinked) file after ours closes.
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}): {log.read()[-2000:]}")
            try:
                if urllib.request.urlopen(url, timeout=1).status == 200:
                    log.seek(0)
                    if wait_for is None or wait_for in log.read():
                        return proc
                    time.sleep(0.3)
            except OSError:
                time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd[:4])} did not become ready in {timeout:.0f} s")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _several_processes(args: list[str]) -> bool:
    """Whether serve ``args`` ask for more than one process (``--processes N`` or ``=N``).

    The value is not checked here: a bad one makes the server exit with its own usage error.
    """
    for i, arg in enumerate(args):
        if arg == "--processes":
            return args[i + 1 : i + 2] != ["1"]
        if arg.startswith("--processes="):
            return arg.partition("=")[2] != "1"
    return False


def start_server(model_dir: Path, port: int, extra: list[str] | None = None) -> subprocess.Popen:
    extra = list(extra or [])
    if not any(a.startswith("--grpc-port") for a in extra):
        extra += ["--grpc-port", "0"]  # HTTP is measured; no second port to clash
    cmd = [sys.executable, "-m", "detector.cli", "serve", "--model", str(model_dir),
           "--port", str(port), "--no-access-log", *extra]  # fmt: skip
    several = _several_processes(extra)
    return spawn_ready(cmd, port, timeout=300 if several else 120,
                       wait_for="server processes up" if several else None)  # fmt: skip


def perf_analyzer_exe() -> str | None:
    """The perf_analyzer to run: ``$PERF_ANALYZER``, else the one on PATH, else the one
    ``benchmarks/setup_perf_analyzer.sh`` installed in this checkout's ``.venv-perf``."""
    local = Path(__file__).resolve().parents[1] / ".venv-perf" / "perf_analyzer"
    return (
        os.environ.get("PERF_ANALYZER")
        or shutil.which("perf_analyzer")
        or (str(local) if local.exists() else None)
    )


def perf_analyzer(port: int, model_dir: Path, batch: int) -> dict:
    """Triton's perf_analyzer against our server, fed with real preprocessed tiles."""
    exe = perf_analyzer_exe()
    if not exe:
        return {
            "ran": False,
            "reason": "perf_analyzer not installed (benchmarks/setup_perf_analyzer.sh)",
        }

    bundle = load_bundle(model_dir)
    size = bundle.preprocess.input_size
    tiles = [preprocess(decode(b).pixels, bundle.preprocess)[0] for b in benchmark_images(4)]
    data = {
        "data": [
            {"images": {"content": t.ravel().tolist(), "shape": [3, size, size]}} for t in tiles
        ]
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(data, fh)
    cmd = [exe, "-m", "synthdetect_tiles", "-u", f"127.0.0.1:{port}", "-i", "http", "-b", str(batch),
           "--input-data", fh.name, "--concurrency-range", "1:16:15", "--measurement-interval", "4000"]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        os.unlink(fh.name)
    return {
        "ran": out.returncode == 0,
        "command": " ".join([*cmd[:-6], "--input-data", "<real tiles>", *cmd[-4:]]),
        "output": (out.stdout + out.stderr)[-6000:],
    }


def serving_benchmark(
    model_dir: Path,
    out: Path | None = None,
    *,
    seconds: float = 15.0,
    batch: int = 8,
    port: int | None = None,
    server_args: list[str] | None = None,
) -> dict:
    port = port or free_port()
    images = benchmark_images()
    base = inprocess(model_dir, batch, images, seconds)
    size = load_bundle(model_dir).preprocess.input_size
    # Clients send batches of ``batch`` tiles, as in process; the server may merge requests.
    args = ["--max-batch-size", str(max(32, batch * 4)), *(server_args or [])]
    server = start_server(model_dir, port, args)
    url = f"http://127.0.0.1:{port}"
    try:
        tensor = run_load(
            url,
            tiles_payload("synthdetect_tiles", batch, size),
            16,
            requests=10**6,
            seconds=seconds,
        )
        score16 = run_load(url, score_payload(images, "model"), 16, requests=10**6, seconds=seconds)
        # Latency at concurrency 1 against the in-process single image, alternating rounds
        # (median of each) so that machine noise hits both sides alike.
        rounds = []
        for _ in range(3):
            one = run_load(
                url, score_payload(images, "model"), 1, requests=10**6, seconds=seconds / 3
            )
            rounds.append((one, single_image_p50(model_dir, images)))
        score1 = sorted(rounds, key=lambda r: r[0].p50_ms)[1][0]
        base["single_image_p50_ms"] = float(np.median([r[1] for r in rounds]))
        base["single_image_rounds_ms"] = [round(r[1], 3) for r in rounds]
        base["server_c1_rounds_ms"] = [round(r[0].p50_ms, 3) for r in rounds]
        pa = perf_analyzer(port, model_dir, batch)
    finally:
        server.terminate()
        server.wait(60)
    result = {
        **environment(),
        "benchmark": "serving",
        "model": model_record(model_dir),
        "server_args": args,
        "in_process": base,
        "server": {
            "tensor_c16": tensor.to_dict(),
            "score_c16": score16.to_dict(),
            "score_c1": score1.to_dict(),
        },
        "ratios": {
            "tensor_ratio_c16": tensor.items_per_s / base["engine_tiles_per_s"],
            "score_ratio_c16": score16.items_per_s / base["pipeline_images_per_s"],
            "latency_overhead_ms_c1": score1.p50_ms - base["single_image_p50_ms"],
        },
        "targets": TARGETS,
        "perf_analyzer": pa,
    }
    result["meets_targets"] = {
        "tensor_ratio_c16": result["ratios"]["tensor_ratio_c16"] >= TARGETS["tensor_ratio_c16"],
        "score_ratio_c16": result["ratios"]["score_ratio_c16"] >= TARGETS["score_ratio_c16"],
        "latency_overhead_ms_c1": result["ratios"]["latency_overhead_ms_c1"]
        <= TARGETS["latency_overhead_ms_c1"],
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --- command line and report section (the benchmark registry) ------------------------------


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--seconds", type=positive_float, default=15.0)
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--out", type=result_file)


def _run(args: argparse.Namespace) -> int:

    try:
        result = serving_benchmark(args.model, args.out, seconds=args.seconds, batch=args.batch)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        return fail(exc)
    print(
        json.dumps(
            {
                "in_process": result["in_process"],
                "ratios": result["ratios"],
                "meets_targets": result["meets_targets"],
            },
            indent=2,
        )
    )
    return 0


def _section(files: Results) -> list[str]:
    s = files[0][1]
    summary = {"in_process": s["in_process"], "ratios": s["ratios"],
               "meets_targets": s["meets_targets"]}  # fmt: skip
    return ["## Server vs in-process (same run)", "", "```json", json.dumps(summary, indent=2),
            "```", ""]  # fmt: skip


register_benchmark(
    Benchmark("serving", "server vs in-process throughput and latency (same run)", _arguments, _run, kind="serving",
              report_order=40, section=_section)
)  # fmt: skip
