"""A closed-loop load generator: N workers, each sending its next request when the previous
one returns, bounded by a request count and a time limit, loopback only; over HTTP, or over
gRPC (``grpc://host:port``) for Triton's ``ModelInfer``.

Payload kinds: ``tiles`` (KServe v2 binary FP32 tensor to the tensor model), ``bytes``
(KServe v2 BYTES tensor of encoded images), ``score`` (raw image bodies to ``/v1/score``),
``grpc_tiles`` (the same tiles as a serialized gRPC ``ModelInferRequest`` with raw contents).
A gRPC success is counted under status "200", a failure under its gRPC status name.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import queue
import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import numpy as np

__all__ = [
    "LoadResult",
    "Payload",
    "bytes_payload",
    "grpc_tiles_payload",
    "run_load",
    "score_payload",
    "tiles_payload",
]

_MARGIN_S = 30.0  # how much longer than the run one request may take

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Payload:
    path: str
    bodies: tuple[bytes, ...]
    headers: dict[str, str]
    items_per_request: int  # images or tiles carried by one request
    header_lengths: tuple[int, ...] | None = None  # KServe binary: JSON length of each body
    protocol: str = "http"  # or "grpc": bodies are serialized ModelInferRequest messages


def tiles_payload(model: str, batch: int, size: int, variants: int = 8, seed: int = 0) -> Payload:
    rng = np.random.default_rng(seed)
    bodies, lengths = [], []
    for _ in range(variants):
        tiles = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "shape": list(tiles.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": tiles.nbytes},
                    }
                ],
                "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
            }
        ).encode()
        lengths.append(len(head))
        bodies.append(head + tiles.tobytes())
    return Payload(
        f"/v2/models/{model}/infer",
        tuple(bodies),
        {"Content-Type": "application/octet-stream"},
        batch,
        tuple(lengths),
    )


def grpc_tiles_payload(
    model: str, batch: int, size: int, variants: int = 8, seed: int = 0
) -> Payload:
    """The tiles of ``tiles_payload`` as serialized gRPC requests (raw input contents)."""
    from tritonclient.grpc import service_pb2

    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(variants):
        tiles = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
        req = service_pb2.ModelInferRequest(model_name=model)
        req.inputs.add(name="images", datatype="FP32", shape=list(tiles.shape))
        req.outputs.add(name="logits")
        req.raw_input_contents.append(tiles.tobytes())
        bodies.append(req.SerializeToString())
    return Payload(_GRPC_INFER, tuple(bodies), {}, batch, protocol="grpc")


_GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def bytes_payload(model: str, images: list[bytes]) -> Payload:
    import struct

    bodies, lengths = [], []
    for img in images:
        raw = struct.pack("<I", len(img)) + img
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        ).encode()
        bodies.append(head + raw)
        lengths.append(len(head))
    return Payload(
        f"/v2/models/{model}/infer",
        tuple(bodies),
        {"Content-Type": "application/octet-stream"},
        1,
        tuple(lengths),
    )


def score_payload(images: list[bytes], methods: str | None = None) -> Payload:
    path = "/v1/score" + (f"?methods={methods}" if methods else "")
    return Payload(path, tuple(images), {"Content-Type": "image/jpeg"}, 1)


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    items_per_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    status_codes: dict[str, int]  # "0": the connection failed (refused, reset, timed out)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Raw:
    """One client process's share: what it sent and how long each success took."""

    sent: int
    latencies: list[float]
    codes: dict[str, int]
    seconds: float


async def _run(
    url: str,
    payload: Payload,
    concurrency: int,
    requests: int,
    seconds: float,
    warmup: int,
    ready: Callable[[], None] | None = None,
) -> _Raw:
    if payload.protocol == "grpc":
        return await _run_grpc(url, payload, concurrency, requests, seconds, warmup, ready)
    import aiohttp

    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    # a request may take the whole run and then some, not minutes more: a server that accepts
    # and never answers ends the run in about twice this, as errors (it hung for 50 min)
    limit = min(300.0, seconds + _MARGIN_S)
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=limit)
    ) as session:

        async def one(i: int) -> tuple[int, float]:
            idx = i % len(payload.bodies)
            headers = dict(payload.headers)
            if payload.header_lengths:
                headers["Inference-Header-Content-Length"] = str(payload.header_lengths[idx])
            start = time.perf_counter()
            try:
                async with session.post(
                    url + payload.path, data=payload.bodies[idx], headers=headers
                ) as resp:
                    await resp.read()
                    return resp.status, time.perf_counter() - start
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                return 0, time.perf_counter() - start  # connection refused or reset: an error

        return await _closed_loop(one, concurrency, requests, seconds, warmup, ready)


async def _closed_loop(one, concurrency, requests, seconds, warmup, ready) -> _Raw:
    """``concurrency`` workers, each awaiting ``one(i) -> (status, seconds)`` and sending the
    next request when it returns, until ``requests`` or ``seconds`` run out. Status "200" is
    a success (an HTTP 200, or an OK gRPC call)."""
    latencies: list[float] = []
    codes: dict[str, int] = {}
    counter = {"sent": 0}
    for i in range(warmup):
        status, _ = await one(i)
        if str(status) != "200":  # the server fails or does not answer: the run will say so
            break
    if ready is not None:
        ready()  # every client process starts its clock together
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()

    async def worker() -> None:
        while counter["sent"] < requests and time.perf_counter() < deadline:
            i = counter["sent"]
            counter["sent"] += 1
            status, elapsed = await one(i)
            codes[str(status)] = codes.get(str(status), 0) + 1
            if str(status) == "200":
                latencies.append(elapsed)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _Raw(counter["sent"], latencies, codes, time.perf_counter() - start)


async def _run_grpc(
    url: str,
    payload: Payload,
    concurrency: int,
    requests: int,
    seconds: float,
    warmup: int,
    ready: Callable[[], None] | None = None,
) -> _Raw:
    """The same closed loop over one gRPC channel (HTTP/2 multiplexes the workers' calls)."""
    import grpc

    target = urlparse(url).netloc
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(payload.path)  # bytes in, bytes out: no (de)serializer

        async def one(i: int) -> tuple[str, float]:
            start = time.perf_counter()
            try:
                await call(payload.bodies[i % len(payload.bodies)], timeout=300)
                return "200", time.perf_counter() - start
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, time.perf_counter() - start

        return await _closed_loop(one, concurrency, requests, seconds, warmup, ready)


def _summary(concurrency: int, payload: Payload, parts: list[_Raw]) -> LoadResult:
    """Throughput over the longest client's window (the processes start together)."""
    latencies = [t for p in parts for t in p.latencies]
    sent = sum(p.sent for p in parts)
    codes: dict[str, int] = {}
    for p in parts:
        for code, n in p.codes.items():
            codes[code] = codes.get(code, 0) + n
    total = max(p.seconds for p in parts)
    ok = len(latencies)
    lat = np.array(latencies or [np.nan]) * 1000
    return LoadResult(
        concurrency=concurrency,
        requests=sent,
        errors=sent - ok,
        seconds=round(total, 3),
        items_per_s=ok * payload.items_per_request / total,
        requests_per_s=ok / total,
        p50_ms=float(np.percentile(lat, 50)),
        p90_ms=float(np.percentile(lat, 90)),
        p99_ms=float(np.percentile(lat, 99)),
        status_codes=codes,
    )


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _client(url, payload, concurrency, requests, seconds, warmup, barrier, results) -> None:
    try:
        raw = asyncio.run(
            _run(url, payload, concurrency, requests, seconds, warmup, lambda: barrier.wait(300))
        )
        results.put(asdict(raw))
    except Exception as exc:  # reported by the parent, which owns the error message
        barrier.abort()
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def _check_answers(url: str, payload: Payload, timeout: float) -> None:
    """One request before the run: a 200 whose body is not this API's answer comes from some
    other server, which the run would count as successes. An error answer, or none, is left
    to the run to count."""
    if payload.protocol != "http":
        return
    headers = dict(payload.headers)
    if payload.header_lengths:
        headers["Inference-Header-Content-Length"] = str(payload.header_lengths[0])
    request = urllib.request.Request(
        url + payload.path, data=payload.bodies[0], headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body, length = resp.read(), resp.headers.get("Inference-Header-Content-Length")
    except (OSError, ValueError):  # HTTPError (an error answer), no answer, a bad header
        return
    try:
        doc = json.loads(body[: int(length)] if length else body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    keys = ("verdict", "results") if payload.path.startswith("/v1/score") else ("outputs",)
    if not isinstance(doc, dict) or not any(k in doc for k in keys):
        raise ValueError(
            f"{url}{payload.path} answered 200 with something other than a synthdetect or "
            "KServe answer: another server is there; refusing to measure it"
        )


def run_load(
    url: str,
    payload: Payload,
    concurrency: int,
    *,
    requests: int = 2000,
    seconds: float = 20.0,
    warmup: int = 10,
    processes: int = 1,
) -> LoadResult:
    """Drive ``url`` (loopback only) with ``concurrency`` closed-loop workers.

    ``processes`` > 1 spreads the workers (and the request budget) over that many client
    processes that start their clocks together: one Python client tops out at a few thousand
    requests/s, below what a server on a GPU host can answer."""
    host = urlparse(url).hostname
    if host not in _LOOPBACK:
        raise ValueError(f"the load generator only targets loopback servers, not {host!r}")
    scheme = urlparse(url).scheme
    wanted = ("grpc",) if payload.protocol == "grpc" else ("http",)
    if scheme not in wanted:  # an HTTP payload sent to grpc:// failed every request as "0"
        raise ValueError(
            f"a {payload.protocol.upper()} payload needs a {wanted[0]}:// URL, got {url!r}"
        )
    if processes < 1 or concurrency < 1:
        raise ValueError("concurrency and processes must be >= 1")
    url = url.rstrip("/")
    try:  # a refused connection is a wrong URL or a stopped server, not a measurement
        socket.create_connection((host, urlparse(url).port or 80), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {url}: {exc.strerror or exc}") from None
    _check_answers(url, payload, min(300.0, seconds + _MARGIN_S))
    processes = min(processes, concurrency)
    if processes == 1:
        return _summary(
            concurrency,
            payload,
            [asyncio.run(_run(url, payload, concurrency, requests, seconds, warmup))],
        )
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(
            target=_client,
            args=(url, payload, c, r, seconds, max(1, warmup // processes), barrier, results),
            daemon=True,
        )
        for c, r in zip(_split(concurrency, processes), _split(requests, processes), strict=True)
    ]
    for proc in procs:
        proc.start()
    try:
        parts = [results.get(timeout=seconds + 600) for _ in procs]
    except queue.Empty:
        raise RuntimeError("a load generator process did not report back") from None
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        raise RuntimeError(f"load generator process failed: {errors[0]}")
    return _summary(concurrency, payload, [_Raw(**p) for p in parts])
