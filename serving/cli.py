"""``synthdetect serve``: the scoring server (registered through the entry point)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detector.argtypes import batch_size, port, positive_float, positive_int
from detector.memory import KnownImageError, require_database
from serving.app import HttpConfig
from serving.batcher import BatcherConfig
from serving.review import ReviewError
from serving.service import ServiceConfig

__all__ = ["register", "serve", "serve_one"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over HTTP (KServe v2 / Triton protocol and /v1/score)",
        description="Serve the detector. Binds to 127.0.0.1 unless --host says otherwise. "
        "API keys: --api-key-file (one key per line) or SYNTHDETECT_API_KEYS (comma-separated); "
        "each at least 16 characters.",
    )
    p.add_argument("--model", type=Path, help="ONNX model folder or checkpoint (default: bundled)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument(
        "--grpc-port",
        type=port,
        default=8001,
        help="KServe v2 over gRPC, as Triton speaks it (tritonclient.grpc, perf_analyzer -i "
        "grpc); 0: off",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16"],
        help="torch engine (a .pt checkpoint) only; an ONNX model runs in its exported precision",
    )
    p.add_argument(
        "--gpu-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="for /v1/score?methods=model, decode and tile JPEGs with torchvision (nvJPEG on the "
        "GPU; default: on with --device cuda/tensorrt)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="torch engine on CUDA: replay one captured CUDA graph per batch bucket",
    )
    p.add_argument(
        "--max-tiles",
        type=positive_int,
        help="/v1/score: at most this many tiles per image instead of the model's own (faster, "
        "less of a large image seen; the model card measures 4)",
    )
    p.add_argument(
        "--max-batch-size",
        type=batch_size,
        default=BatcherConfig.max_batch_size,
        help="tiles per engine call",
    )
    p.add_argument(
        "--deadline-ms",
        type=positive_float,
        help="longest wait for the model per request; past it the verdict comes from the other "
        "methods, marked degraded (default: none)",
    )
    p.add_argument("--max-queue-delay-us", type=int, default=BatcherConfig.max_queue_delay_us)
    p.add_argument(
        "--max-queue-tiles",
        type=positive_int,
        default=BatcherConfig.max_queue_tiles,
        help="queued tiles before 503 (per process)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=ServiceConfig.workers,
        help="decode/score threads (per process)",
    )
    p.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="server processes on the one port, each with its own engine and batcher (for a"
        " GPU or many-core host; see serving/processes.py)",
    )
    p.add_argument(
        "--max-inflight",
        type=positive_int,
        default=ServiceConfig.max_inflight,
        help="concurrent requests before 503 (per process)",
    )
    p.add_argument(
        "--max-body-mb",
        type=positive_float,
        default=HttpConfig.max_body_bytes / 2**20,
        help="largest request body (HTTP) and message (gRPC); gRPC's is capped at 2048 MiB - 1 "
        "byte, its 32-bit limit (default: %(default)g)",
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        help="open connections per process; more are answered 503 and closed (default: 1024, "
        "or 128 under the process's file-descriptor limit)",
    )
    p.add_argument(
        "--idle-timeout-s",
        type=positive_float,
        default=15,
        help="close a connection that sends no complete request head for this long (a body has 30 s)",
    )
    p.add_argument(
        "--work-timeout-s",
        type=positive_float,
        default=ServiceConfig.work_timeout_s,
        help="a request whose decoding and scoring take longer answers 503",
    )
    p.add_argument(
        "--max-megapixels-in-flight",
        type=positive_float,
        default=ServiceConfig.max_pixels_in_flight / 1e6,
        help="decoded pixels of the images scored at once, per process (memory: ~12 bytes each); "
        "more wait",
    )
    p.add_argument("--api-key-file", type=Path)
    p.add_argument(
        "--rate-limit", type=positive_float,
        help="requests per second per API key and process (a token bucket with a burst of 20)",
    )  # fmt: skip
    p.add_argument(
        "--cors-origin", action="append", default=[], help="allow this origin (repeatable)"
    )
    p.add_argument(
        "--memory-db",
        type=Path,
        default=os.environ.get("SYNTHDETECT_MEMORY_DB") or None,
        help="known-image memory (SQLite, `synthdetect memory`): images reviewers confirmed "
        "decide the verdict (default: $SYNTHDETECT_MEMORY_DB; none: off)",
    )
    p.add_argument(
        "--review-db",
        type=Path,
        default=os.environ.get("SYNTHDETECT_REVIEW_DB") or None,
        help="review queue (SQLite; also the known-image memory unless --memory-db says "
        "otherwise): uncertain verdicts, review=true requests and users' reports wait there for "
        "a reviewer, at /review (default: $SYNTHDETECT_REVIEW_DB; none: off)",
    )
    p.add_argument(
        "--review-max-mb",
        type=positive_float,
        default=2048,
        help="cap of the folder that keeps queued images (oldest decided ones go first)",
    )
    p.add_argument(
        "--review-expiry-days",
        type=positive_float,
        default=30,
        help="queued images are removed after this many days (their items stay)",
    )
    p.add_argument(
        "--reviewer-key-file",
        type=Path,
        help="keys with the reviewer role, one per line (also $SYNTHDETECT_REVIEWER_KEYS): "
        "they may score, report and review; plain API keys may only score and report",
    )
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument(
        "--no-ort-spinning",
        action="store_true",
        help="stop ONNX Runtime threads busy-waiting (frees CPU for other work; adds latency)",
    )
    p.set_defaults(func=serve)


MIN_KEY_CHARS = 16  # failed key checks are not throttled: a key must not be guessable


def _keys(file: Path | None, env: str) -> tuple[str, ...]:
    """The keys of ``file`` (one per line) and of the comma-separated ``env``; ValueError for an
    empty file, a key shorter than MIN_KEY_CHARS or one with a space inside."""
    keys: list[tuple[str, str]] = []  # (key, where it was given)
    if file:
        lines = file.read_text().splitlines()
        keys += [(k.strip(), f"{file} line {n}") for n, k in enumerate(lines, 1) if k.strip()]
        if not keys:  # an empty file must not turn authentication off
            raise ValueError(f"{file} holds no keys (one key per line)")
    keys += [(k.strip(), f"${env}") for k in os.environ.get(env, "").split(",") if k.strip()]
    for key, where in keys:
        if len(key) < MIN_KEY_CHARS:
            problem = f"is shorter than {MIN_KEY_CHARS} characters"
        elif any(c.isspace() for c in key):
            problem = "has a space in it"
        else:
            continue
        raise ValueError(
            f"the key in {where} {problem} (make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return tuple(dict.fromkeys(key for key, _ in keys))


def _all_keys(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The scorers' and the reviewers' keys (``_keys``); ValueError for a key in both lists: it
    would get the scorer's role only, without a word."""
    api = _keys(args.api_key_file, "SYNTHDETECT_API_KEYS")
    review = _keys(args.reviewer_key_file, "SYNTHDETECT_REVIEWER_KEYS")
    if set(api) & set(review):
        raise ValueError("a key is both a scorer's and a reviewer's: give each role its own keys")
    return api, review


def serve(args: argparse.Namespace) -> int:
    try:  # before a model loads or a process starts
        _all_keys(args)
    except (ValueError, OSError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    if args.model is not None and not Path(args.model).exists():
        print(f"synthdetect: no model at {args.model}", file=sys.stderr)
        return 2
    # Without a review queue nothing here writes to the memory: a path with no database is a
    # typo, and an empty one made there would never match (reviewers' decisions fill a memory
    # that --review-db brings, so there it may start empty).
    if args.memory_db is not None and args.review_db is None:
        try:
            require_database(args.memory_db)
        except KnownImageError as exc:
            print(
                f"synthdetect: {exc} (`synthdetect memory add` makes one; with --review-db, "
                "reviewers' decisions fill a new one)",
                file=sys.stderr,
            )
            return 2
    if args.processes == 1:
        return serve_one(args)
    from serving.processes import ports_free, supervise

    if args.port == 0:  # each process would pick a random port of its own (gRPC's 0 is off)
        print(
            f"synthdetect: --port 0 picks a port per process; give a port with --processes "
            f"{args.processes}",
            file=sys.stderr,
        )
        return 2
    # SO_REUSEPORT lets the processes share a port, and lets them join a server that already
    # holds it (another model's, an old one's): refused, as with one process
    if (taken := ports_free(args.host, [args.port, args.grpc_port])) is not None:
        print(f"synthdetect: cannot listen on {taken} (the port is in use)", file=sys.stderr)
        return 2
    return supervise(serve_one, args, args.processes)


def serve_one(
    args: argparse.Namespace,
    index: int = 0,
    total: int = 1,
    on_started: Callable[[], None] | None = None,
    all_started: Callable[[], bool] | None = None,
) -> int:
    """One server process; ``index`` of ``total`` sharing the port (``serve --processes``);
    ``all_started``: whether every process is up (readiness waits for it)."""
    from aiohttp import web

    from detector.bundled import SAMPLES
    from detector.engine import cpu_threads
    from serving.app import GUARD, make_app
    from serving.review import ReviewConfig
    from serving.runner import GrpcBindError, run_server
    from serving.service import Service

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.max_body_mb * 1024 * 1024 < 1024:
            raise ValueError(f"--max-body-mb {args.max_body_mb:g} is under 1 KiB: no image fits")
        batcher = BatcherConfig(
            args.max_batch_size,
            args.max_queue_delay_us,
            args.max_queue_tiles,
            deadline_s=args.deadline_ms / 1000 if args.deadline_ms else None,
        )
        service = Service(
            ServiceConfig(
                model=args.model,
                device=args.device,
                precision=args.precision,
                cuda_graphs=args.cuda_graphs,
                batcher=batcher,
                workers=args.workers,
                max_inflight=args.max_inflight,
                work_timeout_s=args.work_timeout_s,
                spinning=not args.no_ort_spinning,
                threads=max(1, cpu_threads() // total) if total > 1 else None,
                max_tiles=args.max_tiles,
                max_pixels_in_flight=int(args.max_megapixels_in_flight * 1e6),
                gpu_decode=args.gpu_decode,
                memory_db=args.memory_db,
                review_db=args.review_db,
                review=ReviewConfig(
                    max_image_bytes=int(args.review_max_mb * 1024 * 1024),
                    expiry_days=args.review_expiry_days,
                ),
            )
        )
        service.peers_up = all_started
        api_keys, reviewer_keys = _all_keys(args)
        http = HttpConfig(
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            api_keys=api_keys,
            reviewer_keys=reviewer_keys,
            rate_limit=args.rate_limit,
            cors_origins=tuple(args.cors_origin),
            access_log=not args.no_access_log,
        )
    except (ValueError, FileNotFoundError, OSError, KnownImageError, ReviewError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    except MemoryError:  # the warm-up runs one batch of --max-batch-size tiles
        print(
            f"synthdetect: not enough memory to run a batch of {args.max_batch_size} tiles "
            "(--max-batch-size)",
            file=sys.stderr,
        )
        return 2
    app = make_app(service, http)

    async def drain(app: web.Application) -> None:
        service.close()

    app.on_cleanup.append(drain)

    def grpc():
        # imported only when gRPC is on: it needs tritonclient's generated protos, which a
        # lean install (a GPU machine's image, say) may lack; --grpc-port 0 serves HTTP alone
        from serving.grpc_server import GrpcServer

        return GrpcServer(
            service, app[GUARD], args.host, args.grpc_port, http.max_body_bytes, total > 1,
            args.idle_timeout_s,
        )  # fmt: skip

    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 literal
    sample = SAMPLES / "no-metadata.jpg"
    if sample.resolve().is_relative_to(Path.cwd().resolve()):  # short from a checkout
        sample = sample.resolve().relative_to(Path.cwd().resolve())
    auth = ' -H "Authorization: Bearer $KEY"' if http.api_keys or http.reviewer_keys else ""
    where = f" (process {index + 1} of {total}, pid {os.getpid()})" if total > 1 else ""

    def listening(port: int) -> None:
        """Called by aiohttp once the socket is bound: only then say so (and signal ready)."""
        url = f"http://{host}:{port}"
        print(
            f"synthdetect serving {service.bundle.name} ({service.engine_name}) on {url}"
            + (f" and grpc://{host}:{args.grpc_port}" if args.grpc_port else "")
            + where,
            file=sys.stderr,
        )
        if index == 0:
            print(
                f"try: curl -s{auth} --data-binary @{shlex.quote(str(sample))} {url}/v1/score",
                file=sys.stderr,
            )
            if service.reviews is not None:
                print(f"review page: {url}/review", file=sys.stderr)
            if not auth and not _loopback(args.host):
                print(
                    f"synthdetect: WARNING: {args.host} is reachable from other machines and no "
                    "API keys are set: anyone who can connect may score, read the metrics and "
                    "(with --review-db) review and confirm images; pass --api-key-file",
                    file=sys.stderr,
                )
        if on_started is not None:
            on_started()

    try:
        run_server(
            app,
            args.host,
            args.port,
            reuse_port=total > 1,
            max_connections=args.max_connections,
            idle_timeout_s=args.idle_timeout_s,
            shutdown_timeout=30,
            on_listening=listening,
            on_stopping=service.stopping,
            side_servers=(grpc,) if args.grpc_port else (),
        )
    except GrpcBindError as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"synthdetect: cannot listen on http://{host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    return 0


def _loopback(host: str) -> bool:
    """Whether ``host`` binds this machine's loopback only (a name resolves to decide)."""
    import ipaddress
    import socket

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
    )
