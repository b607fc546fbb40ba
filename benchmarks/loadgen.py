"""A closed-loop HTTP load generator: N workers, each sending its next request when the
previous one returns, bounded by a request count and a time limit, loopback only.

Payload kinds: ``tiles`` (KServe v2 binary FP32 tensor to the tensor model), ``bytes``
(KServe v2 BYTES tensor of encoded images), ``score`` (raw image bodies to ``/v1/score``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import numpy as np

__all__ = ["LoadResult", "Payload", "bytes_payload", "run_load", "score_payload", "tiles_payload"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Payload:
    path: str
    bodies: tuple[bytes, ...]
    headers: dict[str, str]
    items_per_request: int  # images or tiles carried by one request
    header_lengths: tuple[int, ...] | None = None  # KServe binary: JSON length of each body


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


async def _run(
    url: str, payload: Payload, concurrency: int, requests: int, seconds: float, warmup: int
) -> LoadResult:
    import aiohttp

    latencies: list[float] = []
    codes: dict[str, int] = {}
    counter = {"sent": 0}
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=300)
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

        for i in range(warmup):
            await one(i)
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker() -> None:
            while counter["sent"] < requests and time.perf_counter() < deadline:
                i = counter["sent"]
                counter["sent"] += 1
                status, elapsed = await one(i)
                codes[str(status)] = codes.get(str(status), 0) + 1
                if status == 200:
                    latencies.append(elapsed)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        total = time.perf_counter() - start
    ok = len(latencies)
    lat = np.array(latencies or [np.nan]) * 1000
    return LoadResult(
        concurrency=concurrency,
        requests=counter["sent"],
        errors=counter["sent"] - ok,
        seconds=round(total, 3),
        items_per_s=ok * payload.items_per_request / total,
        requests_per_s=ok / total,
        p50_ms=float(np.percentile(lat, 50)),
        p90_ms=float(np.percentile(lat, 90)),
        p99_ms=float(np.percentile(lat, 99)),
        status_codes=codes,
    )


def run_load(
    url: str,
    payload: Payload,
    concurrency: int,
    *,
    requests: int = 2000,
    seconds: float = 20.0,
    warmup: int = 10,
) -> LoadResult:
    """Drive ``url`` (loopback only) with ``concurrency`` closed-loop workers."""
    host = urlparse(url).hostname
    if host not in _LOOPBACK:
        raise ValueError(f"the load generator only targets loopback servers, not {host!r}")
    return asyncio.run(_run(url.rstrip("/"), payload, concurrency, requests, seconds, warmup))
