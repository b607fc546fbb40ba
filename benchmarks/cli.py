"""``synthdetect bench ...``: accuracy, robustness, latency, load, reports and the gate."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from detector.argtypes import positive_float, positive_int, positive_ints

__all__ = ["register"]


def _precisions(text: str) -> list[str]:
    from detector.engine import TORCH_PRECISIONS

    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in TORCH_PRECISIONS]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated precisions from {', '.join(TORCH_PRECISIONS)}, got {text!r}"
        )
    return values


def register(sub: Any) -> None:
    bench = sub.add_parser(
        "bench", help="benchmarks: accuracy, robustness, latency, load, regression gate"
    )
    bsub = bench.add_subparsers(title="bench commands", metavar="COMMAND")
    bench.set_defaults(func=lambda a: bench.print_help() or 2)

    a = bsub.add_parser(
        "accuracy", help="every method and the fused verdict on one set, under degradations"
    )
    a.add_argument("--data", required=True, type=Path)
    a.add_argument("--methods", help="comma-separated (default: every method that can run)")
    a.add_argument(
        "--degrade", default="none", help="grid of chains, e.g. none,jpeg:75,blur:1 or 'default'"
    )
    a.add_argument("--split", default="test")
    a.add_argument("--limit", type=positive_int, help="at most this many images (evenly spread)")
    a.add_argument("--model", type=Path, help="model for the model method (default: bundled)")
    a.add_argument(
        "--equalise",
        metavar="jpeg:Q",
        help="also score every chain after re-encoding each image of both classes as a JPEG "
        "of quality Q (rows marked equalise), beside the as-is rows",
    )
    a.add_argument("--out", type=Path)
    a.set_defaults(func=_accuracy)

    m = bsub.add_parser("metadata-set", help="build the metadata test set (declared vs stripped)")
    m.add_argument("--corpus", required=True, type=Path)
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--per-signal", type=positive_int, default=12)
    m.set_defaults(func=_metadata_set)

    lat = bsub.add_parser(
        "latency", help="in-process latency over engines, precisions and batch sizes"
    )
    lat.add_argument("--model", required=True, type=Path, help="fp32 ONNX folder")
    lat.add_argument("--fp16", type=Path, help="fp16 ONNX folder")
    lat.add_argument("--int8", type=Path, help="int8 ONNX folder")
    lat.add_argument(
        "--checkpoint", type=Path, help="also time the torch engine on this checkpoint"
    )
    lat.add_argument(
        "--torch-precisions",
        type=_precisions,
        default=["fp32"],
        help="precisions for the torch engine (comma-separated: fp32,fp16,bf16)",
    )
    lat.add_argument(
        "--cuda-graphs", action="store_true", help="also time the torch engine with CUDA graphs"
    )
    lat.add_argument("--batches", type=positive_ints, default=[1, 8, 32, 128])
    lat.add_argument("--seconds", type=positive_float, default=3.0)
    lat.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    lat.add_argument("--out", type=Path)
    lat.set_defaults(func=_latency)

    t = bsub.add_parser(
        "train-throughput", help="training steps/s per model, precision and batch size"
    )
    t.add_argument("--models", default="efficientnet_lite0", help="comma-separated model names")
    t.add_argument("--batches", type=positive_ints, default=[32, 128])
    t.add_argument("--amp", default="off", help="comma-separated: off, bf16, fp16 (CUDA)")
    t.add_argument("--input-size", type=positive_int, default=128)
    t.add_argument("--seconds", type=positive_float, default=3.0)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--out", type=Path)
    t.set_defaults(func=_train_throughput)

    s = bsub.add_parser("serving", help="server vs in-process throughput and latency (same run)")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--seconds", type=positive_float, default=15.0)
    s.add_argument("--batch", type=positive_int, default=8)
    s.add_argument("--out", type=Path)
    s.set_defaults(func=_serving)

    ld = bsub.add_parser("load", help="closed-loop load on a running server (loopback only)")
    ld.add_argument("--url", default="http://127.0.0.1:8000")
    ld.add_argument("--concurrency", type=positive_ints, default=[1, 4, 16, 64])
    ld.add_argument("--payload", choices=["tiles", "score", "bytes"], default="score")
    ld.add_argument(
        "--batch", type=positive_int, default=8, help="tiles per request (tiles payload)"
    )
    ld.add_argument("--input-size", type=positive_int, default=128)
    ld.add_argument("--seconds", type=positive_float, default=10.0)
    ld.add_argument("--requests", type=positive_int, default=100_000)
    ld.add_argument(
        "--client-processes", type=positive_int, default=1, help="spread the workers over processes"
    )
    ld.add_argument(
        "--server",
        default="",
        help="what serves at --url (e.g. its serve command line), recorded in the results",
    )
    ld.add_argument(
        "--serve",
        metavar="ARGS",
        help="start `synthdetect serve ARGS` on a free loopback port, wait until every one of"
        " its processes is up, load it instead of --url, then stop it",
    )
    ld.add_argument("--out", type=Path)
    ld.set_defaults(func=_load)

    p = bsub.add_parser(
        "peers", help="our server vs a naive server and a PyTriton server, same model"
    )
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
    p.set_defaults(func=_peers)

    c = bsub.add_parser(
        "compare", help="regression gate: exit 1 when NEW regresses against BASELINE"
    )
    c.add_argument("baseline", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--accuracy-tol", type=float, default=0.02)
    c.add_argument("--speed-tol", type=float, default=0.25)
    c.set_defaults(func=_compare)

    q = bsub.add_parser("quick", help="the quick profile CI runs (tiny corpus, a few batch sizes)")
    q.add_argument("--data", required=True, type=Path)
    q.add_argument("--model", type=Path)
    q.add_argument("--out", required=True, type=Path)
    q.set_defaults(func=_quick)

    mem = bsub.add_parser(
        "memory", help="known-image memory: re-upload recall, false matches, lookup latency"
    )
    mem.add_argument("--data", required=True, type=Path, help="manifest of distinct images")
    mem.add_argument("--queries", type=positive_int, default=500, help="images re-uploaded")
    mem.add_argument("--distinct", type=positive_int, default=10_000)
    mem.add_argument("--index-size", type=positive_int, default=1_000_000)
    mem.add_argument("--out", required=True, type=Path)
    mem.set_defaults(func=_memory)

    r = bsub.add_parser("report", help="Markdown summary and plots from result files")
    r.add_argument("results", type=Path, help="folder of result JSON files")
    r.add_argument("--out", type=Path, help="output folder (default: the results folder)")
    r.set_defaults(func=_report)


def _fail(exc: Exception) -> int:
    print(f"synthdetect: {exc}", file=sys.stderr)
    return 2


def _accuracy(args: argparse.Namespace) -> int:
    from benchmarks.accuracy import accuracy_benchmark
    from training.datasets import DatasetError
    from training.degrade import DEFAULT_GRID

    options = {"model": {"model_path": args.model}} if args.model else {}
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    grid = DEFAULT_GRID if args.degrade == "default" else args.degrade
    try:
        result = accuracy_benchmark(args.data, methods=methods, grid=grid, split=args.split, limit=args.limit,
                                    options=options, out=args.out, equalise=args.equalise,
                                    log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    except (ValueError, DatasetError, FileNotFoundError) as exc:
        return _fail(exc)
    from benchmarks.report import accuracy_table

    print(accuracy_table(result))
    return 0


def _metadata_set(args: argparse.Namespace) -> int:
    from benchmarks.metadata_set import build_metadata_set

    try:
        path = build_metadata_set(args.corpus, args.out, args.per_signal)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print(f"wrote {path}")
    return 0


def _latency(args: argparse.Namespace) -> int:
    from benchmarks.latency import latency_benchmark

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
        )
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    from benchmarks.report import latency_table

    print(latency_table(result))
    return 0


def _train_throughput(args: argparse.Namespace) -> int:
    from benchmarks.train_throughput import train_throughput

    try:
        result = train_throughput(
            tuple(m.strip() for m in args.models.split(",") if m.strip()),
            tuple(args.batches),
            tuple(a.strip() for a in args.amp.split(",") if a.strip()),
            input_size=args.input_size,
            seconds=args.seconds,
            device=args.device,
            out=args.out,
        )
    except (ValueError, RuntimeError) as exc:
        return _fail(exc)
    from benchmarks.report import train_throughput_table

    print(train_throughput_table(result))
    return 0


def _serving(args: argparse.Namespace) -> int:
    from benchmarks.serving import serving_benchmark

    try:
        result = serving_benchmark(args.model, args.out, seconds=args.seconds, batch=args.batch)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        return _fail(exc)
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


def _load(args: argparse.Namespace) -> int:
    from benchmarks.env import environment
    from benchmarks.loadgen import bytes_payload, run_load, score_payload, tiles_payload
    from benchmarks.serving import benchmark_images

    images = benchmark_images()
    payload = {
        "tiles": lambda: tiles_payload("synthdetect_tiles", args.batch, args.input_size),
        "score": lambda: score_payload(images),
        "bytes": lambda: bytes_payload("synthdetect", images),
    }[args.payload]()
    rows = []
    server, url, described = None, args.url, args.server
    try:
        if args.serve is not None:
            server, url = _start_serve(args.serve)
            described = f"synthdetect serve {args.serve}".strip()
            if "--model" not in args.serve:
                described += " (the bundled model)"
        for c in args.concurrency:
            res = run_load(
                url,
                payload,
                c,
                requests=args.requests,
                seconds=args.seconds,
                processes=args.client_processes,
            )
            rows.append(res.to_dict())
            print(
                f"c={c:<4} {res.items_per_s:9.1f} items/s  p50 {res.p50_ms:8.2f} ms  p99 {res.p99_ms:8.2f} ms  errors {res.errors}"
            )
    except (ValueError, OSError, RuntimeError) as exc:
        return _fail(exc)
    finally:
        if server is not None:
            server.terminate()
            server.wait(120)
    failed = [r for r in rows if r["requests"] == r["errors"]]  # no answer was a success
    if failed:
        row = failed[0]
        print(
            f"synthdetect: no request succeeded at concurrency {row['concurrency']} (sent"
            f" {row['requests']}; status codes {row['status_codes']}, 0 = connection failed);"
            " no results written",
            file=sys.stderr,
        )
        return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    **environment(),
                    "benchmark": "load",
                    "payload": args.payload,
                    "server": described,
                    "client_processes": args.client_processes,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def _start_serve(arg_line: str) -> tuple[subprocess.Popen, str]:
    """`synthdetect serve ARGS` on a free port (the bundled model unless ARGS name one)."""
    from benchmarks.serving import free_port, start_server
    from detector.bundled import DEFAULT_MODEL

    extra = shlex.split(arg_line)
    if "--port" in extra or "--host" in extra:
        raise ValueError("--serve picks a free loopback port itself: leave out --port/--host")
    model = DEFAULT_MODEL
    if "--model" in extra:
        i = extra.index("--model")
        if i + 1 == len(extra):
            raise ValueError("--serve: --model needs a path")
        model = Path(extra[i + 1])
        del extra[i : i + 2]
    port = free_port()
    return start_server(model, port, extra), f"http://127.0.0.1:{port}"


def _peers(args: argparse.Namespace) -> int:
    from benchmarks.peers import peers_benchmark

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
        return _fail(exc)
    from benchmarks.report import peers_table

    print(peers_table(result))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from benchmarks.compare import compare_results, load_result

    try:
        gate = compare_results(
            load_result(args.baseline), load_result(args.new), args.accuracy_tol, args.speed_tol
        )
    except ValueError as exc:
        return _fail(exc)
    print(gate.render())
    return 0 if gate.ok else 1


def _quick(args: argparse.Namespace) -> int:
    from benchmarks.quick import quick_profile

    try:
        result = quick_profile(args.data, args.out, args.model)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        return _fail(exc)
    print(json.dumps(result["gate"], indent=2))
    return 0


def _memory(args: argparse.Namespace) -> int:
    from benchmarks.memory import memory_benchmark
    from training.datasets import DatasetError

    try:
        result = memory_benchmark(
            args.data, args.queries, args.distinct, args.index_size,
            log=lambda m: print(m, file=sys.stderr),
        )  # fmt: skip
    except (ValueError, DatasetError, FileNotFoundError) as exc:
        return _fail(exc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lk = result["lookup"]
    for name, key in (("full frame only", "full_frame_rule"), ("measured best", "measured_rule"),
                      ("shipped", "shipped_rule")):  # fmt: skip
        g = result[key]
        windows = (
            f", windows pHash <= {g['max_phash_window']}, dHash <= {g['max_dhash_window']}"
            if g["max_phash_window"] is not None
            else ""
        )
        print(
            f"{name:>15}: pHash <= {g['max_phash']}, dHash <= {g['max_dhash']}{windows}: mean recall "
            f"{g['mean_recall']:.3f}, false matches {g['false_match_images']} of "
            f"{result['distinct_images']} images ({g['false_match_pairs']} pairs; "
            f"{g['same_picture_pairs']} more pairs show the same picture)"
        )
    print(
        f"lookup with {lk['hashes_in_index']} hashes ({lk['records']} records): p50 {lk['p50_ms']:.2f} ms, p99 {lk['p99_ms']:.2f} ms"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from benchmarks.report import write_report

    try:
        path = write_report(args.results, args.out or args.results)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print(f"wrote {path}")
    return 0
