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

from benchmarks.env import environment, model_record
from benchmarks.latency import measure
from benchmarks.loadgen import grpc_tiles_payload, run_load, score_payload, tiles_payload
from benchmarks.registry import Benchmark, Results, fail, register_benchmark, result_file
from benchmarks.report import _f, _table, distinct_decimals, save_figure, subhead
from benchmarks.serving import benchmark_images, free_port, spawn_ready, start_server
from detector.argtypes import positive_float, positive_int, positive_ints
from detector.engine import load_bundle

__all__ = ["TARGETS", "TARGET_CONCURRENCY", "peers_benchmark", "target_status"]


# The targets for this comparison (CPU, one run): at 16 clients our tile throughput within 0.9
# of the engine's own in-process ceiling and 1.2x PyTriton's; at one client our p50 within 1 ms
# of the naive server's and our p99 within 1.2x of it. Each is a ratio (or difference) of this
# run, computed round by round from interleaved measurements (median over rounds).
TARGET_CONCURRENCY = 16
TARGETS = {
    f"tiles_vs_ceiling_c{TARGET_CONCURRENCY}": (">=", 0.9),
    f"tiles_throughput_vs_pytriton_c{TARGET_CONCURRENCY}": (">=", 1.2),
    "tiles_p50_minus_naive_ms_c1": ("<=", 1.0),
    "tiles_p99_vs_naive_c1": ("<=", 1.2),
}


def target_status(ratios: dict[str, float]) -> list[tuple[str, str, float, float, bool]]:
    """(ratio, comparison, target, measured, met) for each target this run's ratios cover."""
    rows = []
    for name, (op, target) in TARGETS.items():
        value = ratios.get(name)
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
    rounds: int = 3,
) -> dict:
    """Every server is started, then measured in interleaved rounds (ours, naive, PyTriton,
    ours, naive, PyTriton, ...; every payload and concurrency for ``seconds`` each per round),
    so that drift on a shared machine spreads over all of them instead of landing on whichever
    runs last. Each row is the median over rounds, with the spread; each ratio is the median of
    the per-round ratios.

    The engine settings (device, precision, CUDA graphs) go to our server and the naive one
    alike; PyTriton runs the ONNX model on the CPU and is left out on another device.
    ``server_processes`` applies to our server only; ``client_processes`` to the load
    generator for every peer. Our server and PyTriton are also measured over gRPC."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    engine_args = ("--device", device, "--precision", precision) + ("--cuda-graphs",) * cuda_graphs
    max_batch = 32
    ceiling = engine_ceiling(model, device, precision, cuda_graphs, max_batch, min(seconds, 5.0))
    size = load_bundle(model).preprocess.input_size
    on_cpu = device == "cpu"
    tiles = tiles_payload("synthdetect_tiles", 1, size)
    grpc_tiles = grpc_tiles_payload("synthdetect_tiles", 1, size)
    scores = score_payload(benchmark_images(), "model")
    port, grpc_port, naive_port = free_port(), free_port(), free_port()  # never a server's
    ours = ["--max-batch-size", str(max_batch), "--grpc-port", str(grpc_port), *engine_args]
    if server_processes > 1:
        ours += ["--processes", str(server_processes)]
    plan: dict[str, dict[str, tuple[str, object]]] = {}  # server -> payload -> (url, payload)
    skipped: dict[str, str] = {}
    procs = {}
    try:
        procs["synthdetect"] = start_server(model, port, ours)
        plan["synthdetect"] = {"tiles": (f"http://127.0.0.1:{port}", tiles),
                               "score": (f"http://127.0.0.1:{port}", scores),
                               "grpc_tiles": (f"grpc://127.0.0.1:{grpc_port}", grpc_tiles)}  # fmt: skip
        procs["naive"] = spawn_ready([sys.executable, "-m", "benchmarks.naive_server", "--model", str(model), "--port", str(naive_port), *engine_args], naive_port)  # fmt: skip
        plan["naive"] = {"tiles": (f"http://127.0.0.1:{naive_port}", tiles),
                         "score": (f"http://127.0.0.1:{naive_port}", scores)}  # fmt: skip
        if pytriton_python and Path(pytriton_python).exists() and on_cpu:
            script = Path(__file__).with_name("pytriton_server.py")
            env = {**os.environ, "LD_LIBRARY_PATH": _libdir(pytriton_python)}
            procs["pytriton"] = spawn_ready([str(pytriton_python), str(script), "--model", str(model), "--port", "8767"], 8767, env=env)  # fmt: skip
            plan["pytriton"] = {"tiles": ("http://127.0.0.1:8767", tiles),
                                "grpc_tiles": ("grpc://127.0.0.1:8768", grpc_tiles)}  # fmt: skip
        else:
            skipped["pytriton"] = (
                "no PyTriton venv (run benchmarks/setup_pytriton.sh)"
                if on_cpu
                else "PyTriton peer runs ONNX Runtime on the CPU only"
            )
        measured: dict[str, dict[str, list[list[dict]]]] = {
            name: {kind: [[] for _ in concurrency] for kind in payloads}
            for name, payloads in plan.items()
        }
        for _ in range(rounds):
            for name, payloads in plan.items():
                for kind, (url, payload) in payloads.items():
                    for i, c in enumerate(concurrency):
                        res = run_load(url, payload, c, requests=10**6, seconds=seconds,
                                       processes=client_processes)  # fmt: skip
                        measured[name][kind][i].append(res.to_dict())
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
    servers: dict[str, dict] = {
        name: {kind: [_median_row(rows) for rows in per_c] for kind, per_c in kinds.items()}
        for name, kinds in measured.items()
    }
    servers.update({name: {"skipped": why} for name, why in skipped.items()})
    ratios = _ratios(measured, concurrency, ceiling)
    result = {**environment(), "benchmark": "peers", "model": model_record(model), "concurrency": list(concurrency),
              "engine_args": list(engine_args), "server_processes": server_processes,
              "client_processes": client_processes, "rounds": rounds,
              "seconds_per_level": seconds, "engine_ceiling": ceiling,
              "servers": servers, "ratios": ratios,
              "gate": {"speed_ratio": {k: v for k, v in ratios.items() if "throughput" in k and k.endswith("c16")}}}  # fmt: skip
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _median_row(rounds: list[dict]) -> dict:
    """One concurrency level over the rounds: medians, the throughput's spread, every round."""
    rate = [r["items_per_s"] for r in rounds]
    return {
        "concurrency": rounds[0]["concurrency"],
        "items_per_s": float(np.median(rate)),
        "items_per_s_min": float(min(rate)),
        "items_per_s_max": float(max(rate)),
        "p50_ms": float(np.median([r["p50_ms"] for r in rounds])),
        "p99_ms": float(np.median([r["p99_ms"] for r in rounds])),
        "errors": int(sum(r["errors"] for r in rounds)),
        "rounds": rounds,
    }


def _ratios(measured: dict, concurrency: tuple[int, ...], ceiling: dict) -> dict[str, float]:
    """Ratios of this run, each the median over rounds of the round's own ratio (the servers
    of one round ran back to back, under the same conditions)."""

    def paired(a: list[dict], b: list[dict], key: str, op) -> float:
        return float(np.median([op(x[key], y[key]) for x, y in zip(a, b, strict=True)]))

    def ratio(x: float, y: float) -> float:
        return x / max(y, 1e-9)

    ratios: dict[str, float] = {}
    ours = measured["synthdetect"]
    for i, c in enumerate(concurrency):
        mine = ours["tiles"][i]
        for peer in ("naive", "pytriton"):
            theirs = measured.get(peer, {}).get("tiles")
            if theirs:
                ratios[f"tiles_throughput_vs_{peer}_c{c}"] = paired(
                    mine, theirs[i], "items_per_s", ratio
                )
                ratios[f"tiles_p99_vs_{peer}_c{c}"] = paired(mine, theirs[i], "p99_ms", ratio)
                ratios[f"tiles_p50_minus_{peer}_ms_c{c}"] = paired(
                    mine, theirs[i], "p50_ms", lambda x, y: x - y
                )
        if "grpc_tiles" in measured.get("pytriton", {}):
            ratios[f"grpc_tiles_throughput_vs_pytriton_c{c}"] = paired(
                ours["grpc_tiles"][i], measured["pytriton"]["grpc_tiles"][i], "items_per_s", ratio
            )
        best = ceiling["max_batch_tiles_per_s"]
        ratios[f"tiles_vs_ceiling_c{c}"] = float(np.median([r["items_per_s"] / best for r in mine]))
        naive = measured["naive"]["tiles"][i]
        ratios[f"tiles_ceiling_vs_naive_c{c}"] = float(
            np.median([best / max(r["items_per_s"], 1e-9) for r in naive])
        )
        ratios[f"score_throughput_vs_naive_c{c}"] = paired(
            ours["score"][i], measured["naive"]["score"][i], "items_per_s", ratio
        )
    return ratios


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
                [name, payload, str(r["concurrency"]), _f(r["items_per_s"], 1)
                 + (f" ({r['items_per_s_min']:.0f}-{r['items_per_s_max']:.0f})"
                    if "items_per_s_min" in r else ""),
                 _f(r["p50_ms"], 2), _f(r["p99_ms"], 2), str(r["errors"])]
                for r in load
            ]  # fmt: skip
    header = ["server", "payload", "concurrency", "items/s (spread)", "p50 ms", "p99 ms", "errors"]
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
    if "rounds" in peers:
        lines.append(
            f"Servers measured in {peers['rounds']} interleaved rounds of"
            f" {peers['seconds_per_level']:g} s per level; medians over rounds, throughput"
            " spread in brackets; ratios are medians of the per-round ratios."
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
    """The targets beside what this run measured (each from the run's own ratios)."""
    rows = []
    for name, op, target, value, met in target_status(peers.get("ratios", {})):
        unit = " ms" if "_ms_" in name else "x"
        measured = (
            f"{value:.{distinct_decimals(value, target, 2)}f}{unit}"  # never printed as the target
        )
        rows.append([f"`{name}` {op} {target:g}", measured, "yes" if met else "**no**"])
    if not rows:
        return []
    return [*_table(["target", "measured", "met"], rows, 1), ""]


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--concurrency", type=positive_ints, default=[1, 4, 16, 64])
    p.add_argument(
        "--seconds", type=positive_float, default=10.0, help="per level, per server, per round"
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="interleaved rounds (every server measured once per round); medians are reported",
    )
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
    p.add_argument("--out", type=result_file)


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
            rounds=args.rounds,
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
