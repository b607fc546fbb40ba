"""Our server against its peers, same model, same ONNX Runtime thread settings, one run.

Peers: a real Triton server (PyTriton, ONNX Runtime inside, Triton's dynamic batcher) and a
naive server (one request at a time, no batching). The tensor model is driven at each
concurrency with batch-1 requests (what a moderation pipeline sends per image tile); the
naive server is also driven on ``/v1/score``. The report gives ratios to the peers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.env import environment
from benchmarks.latency import measure
from benchmarks.loadgen import run_load, score_payload, tiles_payload
from benchmarks.registry import Benchmark, Results, fail, register_benchmark
from benchmarks.report import _f, _table, save_figure, subhead
from benchmarks.serving import benchmark_images, spawn_ready, start_server
from detector.argtypes import positive_float, positive_int, positive_ints
from detector.engine import load_bundle

__all__ = ["TARGETS", "TARGET_CONCURRENCY", "peers_benchmark", "target_status"]


# The targets for this comparison, read at one concurrency: our tile throughput over
# each peer's (at least) and our p99 over PyTriton's (at most).
TARGET_CONCURRENCY = 16
TARGETS = {
    "tiles_throughput_vs_pytriton": (">=", 1.0),
    "tiles_p99_vs_pytriton": ("<=", 1.0),
    "tiles_throughput_vs_naive": (">=", 2.0),
}


def target_status(ratios: dict[str, float]) -> list[tuple[str, str, float, float, bool]]:
    """(ratio, comparison, target, measured, met) for each target this run's ratios cover."""
    rows = []
    for name, (op, target) in TARGETS.items():
        value = ratios.get(f"{name}_c{TARGET_CONCURRENCY}")
        if value is not None:
            met = value >= target if op == ">=" else value <= target
            rows.append((name, op, target, value, met))
    return rows


def engine_ceiling(
    model: Path, device: str, precision: str, cuda_graphs: bool, max_batch: int, seconds: float
) -> dict:
    """The engine alone, in process: tiles/s one tile per call and at the servers' largest
    batch. No server can serve tiles faster than its engine at its largest batch, so that rate
    over the naive server's measured throughput bounds our server's ratio to it
    (``tiles_ceiling_vs_naive_c*``): a target above that bound cannot be met on this machine
    with this model, whatever the HTTP stack (and on a small CPU the HTTP work takes cores
    from the engine, so the bound is loose)."""
    bundle = load_bundle(model, device, precision=precision, cuda_graphs=cuda_graphs)
    size = bundle.preprocess.input_size
    bundle.engine.warmup(size, max_batch)
    rates: dict = {"engine": bundle.engine.name, "max_batch": max_batch}
    for key, batch in (("b1_tiles_per_s", 1), ("max_batch_tiles_per_s", max_batch)):
        tiles = np.random.default_rng(batch).normal(size=(batch, 3, size, size)).astype(np.float32)
        times = measure(lambda t=tiles: bundle.engine.run(t), seconds)
        rates[key] = float(batch / np.median(times))
    rates["batching_gain"] = rates["max_batch_tiles_per_s"] / rates["b1_tiles_per_s"]
    return rates


def peers_benchmark(
    model: Path,
    concurrency: tuple[int, ...],
    seconds: float,
    pytriton_python: Path | None,
    out: Path | None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    cuda_graphs: bool = False,
    server_processes: int = 1,
    client_processes: int = 1,
) -> dict:
    """The engine settings (device, precision, CUDA graphs) go to our server and the naive one
    alike, so both run the same engine; PyTriton runs the ONNX model on the CPU and is left
    out on another device. ``server_processes`` applies to our server only (the naive server
    is one process by definition); ``client_processes`` to the load generator for every peer."""
    engine_args = ("--device", device, "--precision", precision) + ("--cuda-graphs",) * cuda_graphs
    max_batch = 32
    ceiling = engine_ceiling(model, device, precision, cuda_graphs, max_batch, min(seconds, 5.0))
    size = load_bundle(model).preprocess.input_size
    on_cpu = device == "cpu"
    tiles = tiles_payload("synthdetect_tiles", 1, size)
    scores = score_payload(benchmark_images(), "model")
    ours = ["--max-batch-size", str(max_batch), *engine_args]
    if server_processes > 1:
        ours += ["--processes", str(server_processes)]
    servers: dict[str, dict] = {}
    procs = {}

    def sweep(port: int, payloads: dict) -> dict:
        """Each payload at each concurrency, closed loop for ``seconds``."""
        url = f"http://127.0.0.1:{port}"
        return {
            kind: [
                run_load(
                    url, payload, c, requests=10**6, seconds=seconds, processes=client_processes
                ).to_dict()
                for c in concurrency
            ]
            for kind, payload in payloads.items()
        }

    try:
        procs["synthdetect"] = start_server(model, 8765, ours)
        servers["synthdetect"] = sweep(8765, {"tiles": tiles, "score": scores})
        procs["synthdetect"].terminate()
        procs["synthdetect"].wait(90)
        naive = spawn_ready([sys.executable, "-m", "benchmarks.naive_server", "--model", str(model), "--port", "8766", *engine_args], 8766)  # fmt: skip
        procs["naive"] = naive
        servers["naive"] = sweep(8766, {"tiles": tiles, "score": scores})
        naive.terminate()
        naive.wait(60)
        if pytriton_python and Path(pytriton_python).exists() and on_cpu:
            script = Path(__file__).with_name("pytriton_server.py")
            env = {**os.environ, "LD_LIBRARY_PATH": _libdir(pytriton_python)}
            pt = spawn_ready([str(pytriton_python), str(script), "--model", str(model), "--port", "8767"], 8767, env=env)  # fmt: skip
            procs["pytriton"] = pt
            servers["pytriton"] = sweep(8767, {"tiles": tiles})
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
        ours_row = servers["synthdetect"]["tiles"][i]
        for peer in ("naive", "pytriton"):
            rows = servers[peer].get("tiles")
            if rows:
                ratios[f"tiles_throughput_vs_{peer}_c{c}"] = ours_row["items_per_s"] / max(
                    rows[i]["items_per_s"], 1e-9
                )
                ratios[f"tiles_p99_vs_{peer}_c{c}"] = ours_row["p99_ms"] / max(
                    rows[i]["p99_ms"], 1e-9
                )
        ratios[f"tiles_ceiling_vs_naive_c{c}"] = ceiling["max_batch_tiles_per_s"] / max(
            servers["naive"]["tiles"][i]["items_per_s"], 1e-9
        )
        ratios[f"score_throughput_vs_naive_c{c}"] = servers["synthdetect"]["score"][i][
            "items_per_s"
        ] / max(servers["naive"]["score"][i]["items_per_s"], 1e-9)
    result = {**environment(), "benchmark": "peers", "model": str(model), "concurrency": list(concurrency),
              "engine_args": list(engine_args), "server_processes": server_processes,
              "client_processes": client_processes, "engine_ceiling": ceiling,
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


# --- command line, report section and plots (the benchmark registry) ----------------------


def peers_table(result: dict) -> str:
    rows = []
    for name, runs in result["servers"].items():
        if "skipped" in runs:
            rows.append([name, "-", "-", f"skipped: {runs['skipped']}", "", "", ""])
            continue
        for payload, load in runs.items():
            rows += [
                [name, payload, str(r["concurrency"]), _f(r["items_per_s"], 1),
                 _f(r["p50_ms"], 2), _f(r["p99_ms"], 2), str(r["errors"])]
                for r in load
            ]  # fmt: skip
    header = ["server", "payload", "concurrency", "items/s", "p50 ms", "p99 ms", "errors"]
    lines = _table(header, rows, 2)
    ratios = [[k, _f(v, 2)] for k, v in sorted(result["ratios"].items())]
    lines += ["", *_table(["ratio", "value"], ratios, 1)]
    return "\n".join(lines)


def _peers_settings(peers: dict) -> list[str]:
    """How the peers run was set up, and the engine's own ceiling measured in it."""
    lines = []
    if peers.get("engine_args"):
        lines.append(f"Engine settings (both servers): `{' '.join(peers['engine_args'])}`.")
    if "server_processes" in peers:
        lines.append(
            f"Our server ran {peers['server_processes']} process(es) (`serve --processes`), the"
            f" naive server one; the load generator ran {peers['client_processes']} process(es)."
        )
    ceiling = peers.get("engine_ceiling")
    if ceiling:
        lines.append(
            f"The engine alone in process ({ceiling['engine']}): {ceiling['b1_tiles_per_s']:.0f}"
            f" tiles/s one tile per call, {ceiling['max_batch_tiles_per_s']:.0f} at batch"
            f" {ceiling['max_batch']}"
            f" ({ceiling['batching_gain']:.2f}x). No server outruns its engine, so"
            " `tiles_ceiling_vs_naive` bounds our server's throughput ratio to the naive one."
        )
    return [" ".join(lines), ""] if lines else []


def _peers_targets(peers: dict) -> list[str]:
    """The issue's targets beside what this run measured, with the engine's bound."""
    rows = []
    for name, op, target, value, met in target_status(peers.get("ratios", {})):
        measured = f"{value:.2f}x"
        ceiling = peers["ratios"].get(f"tiles_ceiling_vs_naive_c{TARGET_CONCURRENCY}")
        if name == "tiles_throughput_vs_naive" and ceiling is not None:
            measured += f" (engine ceiling {ceiling:.2f}x)"
        rows.append([f"`{name}` {op} {target:g}", measured, "yes" if met else "**no**"])
    if not rows:
        return []
    header = [f"target (concurrency {TARGET_CONCURRENCY})", "measured", "met"]
    return [*_table(header, rows, 1), ""]


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--concurrency", type=positive_ints, default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=positive_float, default=10.0)
    p.add_argument(
        "--pytriton-python", type=Path, help="python of the venv holding nvidia-pytriton"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="torch engine only"
    )
    p.add_argument("--cuda-graphs", action="store_true", help="torch engine on CUDA only")
    p.add_argument(
        "--server-processes",
        type=positive_int,
        default=1,
        help="our server's --processes (only ours)",
    )
    p.add_argument(
        "--client-processes", type=positive_int, default=1, help="load generator processes"
    )
    p.add_argument("--out", type=Path)


def _run(args: argparse.Namespace) -> int:

    try:
        result = peers_benchmark(
            args.model,
            tuple(args.concurrency),
            args.seconds,
            args.pytriton_python,
            args.out,
            device=args.device,
            precision=args.precision,
            cuda_graphs=args.cuda_graphs,
            server_processes=args.server_processes,
            client_processes=args.client_processes,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        return fail(exc)

    print(peers_table(result))
    return 0


def _section(files: Results) -> list[str]:
    lines = ["## Server vs peers (same run, same model)", ""]
    for name, peers in files:
        lines += [*subhead(name, files), *_peers_settings(peers), *_peers_targets(peers),
                  peers_table(peers), ""]  # fmt: skip
    return lines


def _plots(files: Results, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    for file, peers in files:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, runs in peers["servers"].items():
            for payload, rows in runs.items():
                if isinstance(rows, list):
                    ax.plot(
                        [r["concurrency"] for r in rows],
                        [r["items_per_s"] for r in rows],
                        marker="o",
                        label=f"{name} ({payload})",
                    )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("items / s")
        ax.set_title("Server throughput vs concurrency" + (f" ({file})" if len(files) > 1 else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        suffix = f"-{file}" if len(files) > 1 else ""
        made.append(save_figure(fig, out / f"throughput_vs_concurrency{suffix}.png"))
    return made


register_benchmark(
    Benchmark("peers", "our server vs a naive server and a PyTriton server, same model", _arguments, _run, kind="peers",
              every_file=True, report_order=50, section=_section, plots=_plots)
)  # fmt: skip
