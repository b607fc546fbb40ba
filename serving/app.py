"""HTTP front of the scoring service: KServe v2 (Triton-compatible), ``/v1/score``, metrics.

Every error is JSON ``{"error": reason}`` with a 4xx/5xx status: 400 malformed request, 401
missing or wrong API key, 404 unknown route or model, 413 body too large, 422 image that cannot
be decoded, 429 rate limit, 503 overloaded or shutting down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentLengthError

from detector.fusion import Verdict
from detector.image import ImageError
from detector.registry import RegistryError
from serving.batcher import QueueFull
from serving.protocol import HEADER, ProtocolError, encode_response, parse_request
from serving.service import BYTES_MODEL, TENSOR_MODEL, Service

__all__ = ["HttpConfig", "make_app"]

log = logging.getLogger("synthdetect.server")


class _OneLineProtocolErrors(logging.Filter):
    """aiohttp answers a malformed HTTP message (bad Content-Length, chunking, method) with a
    400 before any handler runs, and logs the parser's traceback. A client's bad bytes are not
    a server fault: log them as one line with the parser's reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            reason = " ".join(str(exc.message).split())
            record.msg, record.args = f"malformed HTTP request (400): {reason}", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _quiet_protocol_errors() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _OneLineProtocolErrors) for f in server_log.filters):
        server_log.addFilter(_OneLineProtocolErrors())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
SERVICE = web.AppKey("service", Service)


@dataclass(frozen=True)
class HttpConfig:
    max_body_bytes: int = 64 * 1024 * 1024
    api_keys: tuple[str, ...] = ()
    rate_limit: float | None = None  # requests per second per key (token bucket)
    rate_burst: int = 20
    cors_origins: tuple[str, ...] = ()
    access_log: bool = True
    body_timeout_s: float = 30.0  # a client that declares more body than it sends gets 408


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _json(status: int, payload: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers=headers,
    )


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class Guard:
    """API keys (constant-time, no hint of which part was wrong) and per-key rate limits."""

    def __init__(self, config: HttpConfig) -> None:
        self.keys = [k.encode() for k in config.api_keys]
        self.rate, self.burst = config.rate_limit, config.rate_burst
        self.buckets: dict[str, _Bucket] = {}

    def check(self, request: web.Request) -> str:
        key = "anonymous"
        if self.keys:
            auth = request.headers.get("Authorization", "")
            given = (
                auth[7:] if auth.startswith("Bearer ") else request.headers.get("X-API-Key", "")
            ).encode()
            # Compare with every key, without stopping early, so timing says nothing.
            match = [hmac.compare_digest(given, k) for k in self.keys]
            if not any(match):
                raise HttpError(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})
            key = f"key{match.index(True)}"
        if self.rate:
            now = time.monotonic()
            bucket = self.buckets.setdefault(key, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens < 1:
                wait = (1 - bucket.tokens) / self.rate
                raise HttpError(
                    429, "rate limit exceeded", {"Retry-After": f"{max(1, round(wait))}"}
                )
            bucket.tokens -= 1
        return key


def make_app(service: Service, config: HttpConfig | None = None) -> web.Application:
    config = config or HttpConfig()
    _quiet_protocol_errors()
    guard = Guard(config)
    inflight = {"n": 0}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        endpoint = _endpoint(request)
        status, reason = 500, ""
        counted = False
        try:
            if request.path not in OPEN_PATHS:
                guard.check(request)
            if (
                request.content_length is not None
                and request.content_length > config.max_body_bytes
            ):
                raise HttpError(
                    413,
                    f"request body of {request.content_length} bytes exceeds {config.max_body_bytes}",
                )
            if request.method == "POST":
                if inflight["n"] >= service.config.max_inflight:
                    raise HttpError(503, "server overloaded, retry later", {"Retry-After": "1"})
                inflight["n"] += 1
                counted = True
                service.metrics.inflight.set(inflight["n"])
            response = await handler(request)
            status = response.status
        except HttpError as exc:
            response, status, reason = (
                _json(exc.status, {"error": exc.reason}, exc.headers),
                exc.status,
                exc.reason,
            )

        except web.HTTPRequestEntityTooLarge:
            reason = f"request body exceeds {config.max_body_bytes} bytes"
            response, status = _json(413, {"error": reason}), 413
        except web.HTTPException as exc:  # aiohttp's own 404/405 etc., as JSON
            reason = exc.reason
            response, status = _json(exc.status, {"error": exc.reason}), exc.status
        except Exception:
            log.exception("unhandled error on %s", request.path)
            reason = "internal server error"
            response, status = _json(500, {"error": reason}), 500
        finally:
            if counted:
                inflight["n"] -= 1
                service.metrics.inflight.set(inflight["n"])
        if status in (400, 408, 413) and request.method == "POST":
            response.force_close()  # the body may be unread: close rather than wait for it
        elapsed = time.perf_counter() - start
        service.metrics.requests.labels(endpoint, str(status)).inc()
        service.metrics.latency.labels(endpoint).observe(elapsed)
        if status >= 400:
            service.metrics.errors.labels(_reason_label(status)).inc()
        service.metrics.queue.set(service.batcher.queued_tiles)
        response.headers["X-Request-Id"] = rid
        if config.cors_origins:
            origin = request.headers.get("Origin")
            if origin and (origin in config.cors_origins or "*" in config.cors_origins):
                response.headers["Access-Control-Allow-Origin"] = origin
        if config.access_log:
            log.info(json.dumps({"id": rid, "method": request.method, "path": request.path, "status": status,
                                 "ms": round(elapsed * 1000, 2), "error": reason or None}))  # fmt: skip
        return response

    app = web.Application(middlewares=[middleware], client_max_size=config.max_body_bytes)
    app[SERVICE] = service
    routes = _Routes(service, config.body_timeout_s, config.max_body_bytes)
    app.router.add_get("/v2/health/live", routes.live)
    app.router.add_get("/v2/health/ready", routes.ready)
    app.router.add_get("/v2", routes.server_metadata)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(prefix, routes.model_metadata)
        app.router.add_get(prefix + "/ready", routes.model_ready)
        app.router.add_get(prefix + "/config", routes.model_config)
        app.router.add_get(prefix + "/stats", routes.model_stats)
        app.router.add_post(prefix + "/infer", routes.infer)
    app.router.add_get("/v2/models/stats", routes.all_stats)
    app.router.add_post("/v1/score", routes.score)
    app.router.add_get("/metrics", routes.metrics)
    return app


def _endpoint(request: web.Request) -> str:
    route = request.match_info.route.resource
    return route.canonical if route is not None else "unmatched"


def _reason_label(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
            413: "too_large", 422: "undecodable_image", 429: "rate_limited", 503: "overloaded"}.get(status, "server_error")  # fmt: skip


class _Routes:
    def __init__(
        self, service: Service, body_timeout_s: float, max_body_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.s = service
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        self.loop_pool = service.pool

    async def run(self, fn, *args):
        """``fn(*args)`` on a worker thread: for work that decodes images or blocks."""
        return await self._scoring(
            lambda: asyncio.get_running_loop().run_in_executor(self.loop_pool, fn, *args)
        )

    async def run_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """Tiles go from the event loop straight into the batcher (``submit`` never blocks)
        and the batch's future is awaited: no worker-thread hop for tensor requests."""
        return await self._scoring(lambda: asyncio.wrap_future(self.s.batcher.submit(tiles)))

    async def _scoring(self, start):
        # ``active`` counts scoring tasks not yet finished; each submits to the batcher at most
        # once, so the batcher knows when no one else can join a batch (see serving.batcher).
        self.s.active += 1
        try:
            return await start()
        except QueueFull as exc:
            raise HttpError(503, f"server overloaded: {exc}", {"Retry-After": "1"}) from None
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise HttpError(503, "server is shutting down") from None
            raise
        finally:
            self.s.active -= 1

    # --- health and metadata ----------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        if not self.s.ready:
            return web.Response(status=503)
        if not self.s.model_healthy and not await self.run(self.s.probe_model):
            reason = self.s.model_failure_reason or "the model keeps failing"
            return _json(503, {"error": f"model unhealthy: {reason}"})
        return web.Response(status=200)

    async def server_metadata(self, request: web.Request) -> web.Response:
        from detector import __version__

        return _json(200, {"name": "synthdetect", "version": __version__,
                           "extensions": ["binary_tensor_data", "model_configuration", "statistics"]})  # fmt: skip

    def _model(self, request: web.Request) -> str:
        name = request.match_info["model"]
        if name not in (BYTES_MODEL, TENSOR_MODEL):
            raise HttpError(404, f"unknown model {name!r} (served: {BYTES_MODEL}, {TENSOR_MODEL})")
        version = request.match_info.get("version")
        if version not in (None, "1"):
            raise HttpError(404, f"model {name!r} has no version {version!r} (served: 1)")
        return name

    def _io(self, name: str) -> tuple[list[dict], list[dict]]:
        size = self.s.input_size
        if name == TENSOR_MODEL:
            return ([{"name": "images", "datatype": "FP32", "shape": [-1, 3, size, size]}],
                    [{"name": "logits", "datatype": "FP32", "shape": [-1, 1]}])  # fmt: skip
        return ([{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}],
                [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]},
                 {"name": "label", "datatype": "BYTES", "shape": [-1, 1]}])  # fmt: skip

    async def model_metadata(self, request: web.Request) -> web.Response:
        name = self._model(request)
        inputs, outputs = self._io(name)
        platform = "onnxruntime_onnx" if name == TENSOR_MODEL else "synthdetect"
        return _json(
            200,
            {
                "name": name,
                "versions": ["1"],
                "platform": platform,
                "inputs": inputs,
                "outputs": outputs,
            },
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        self._model(request)
        return web.Response(status=200 if self.s.ready else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        name = self._model(request)
        inputs, outputs = self._io(name)
        tname = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}

        def dims(t: dict) -> list[int]:
            return t["shape"][1:]

        config = {
            "name": name,
            "platform": "onnxruntime_onnx" if name == TENSOR_MODEL else "",
            "backend": "onnxruntime" if name == TENSOR_MODEL else "synthdetect",
            "max_batch_size": self.s.config.batcher.max_batch_size,
            "input": [
                {
                    "name": t["name"],
                    "data_type": tname[t["datatype"]],
                    "format": "FORMAT_NONE",
                    "dims": dims(t),
                }
                for t in inputs
            ],
            "output": [
                {"name": t["name"], "data_type": tname[t["datatype"]], "dims": dims(t)}
                for t in outputs
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": self.s.config.batcher.max_queue_delay_us
            },
            "instance_group": [
                {
                    "name": name,
                    "count": 1,
                    "kind": "KIND_GPU" if self.s.batcher.device == "cuda" else "KIND_CPU",
                }
            ],
            "version_policy": {"latest": {"num_versions": 1}},
        }
        return _json(200, config)

    def _stats(self, name: str) -> dict:
        st = self.s.stats[name]

        def dur(count: int, ns: int) -> dict:
            return {"count": count, "ns": ns}

        return {
            "name": name,
            "version": "1",
            "last_inference": st.last,
            "inference_count": st.inferences,
            "execution_count": st.executions,
            "inference_stats": {
                "success": dur(st.success, st.success_ns),
                "fail": dur(st.fail, st.fail_ns),
                "queue": dur(st.success, 0),
                "compute_input": dur(st.success, 0),
                "compute_infer": dur(st.success, st.success_ns),
                "compute_output": dur(st.success, 0),
            },
            "batch_stats": [],
        }

    async def model_stats(self, request: web.Request) -> web.Response:
        return _json(200, {"model_stats": [self._stats(self._model(request))]})

    async def all_stats(self, request: web.Request) -> web.Response:
        return _json(200, {"model_stats": [self._stats(m) for m in (BYTES_MODEL, TENSOR_MODEL)]})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.s.metrics.exposition(),
            headers={"Content-Type": self.s.metrics.content_type},
        )

    # --- inference --------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        name = self._model(request)
        raw_len = request.headers.get(HEADER)
        try:
            header_len = int(raw_len) if raw_len is not None else None
        except ValueError:
            raise HttpError(400, f"{HEADER} must be an integer") from None
        body = await _read_body(request, self.body_timeout_s)
        try:
            req = parse_request(body, header_len)
        except ProtocolError as exc:
            raise HttpError(400, str(exc)) from None
        started = time.perf_counter()
        try:
            outputs, items = await (
                self._infer_tensor(req) if name == TENSOR_MODEL else self._infer_bytes(req)
            )
        except HttpError:
            self.s.record(name, False, started, 0)
            raise
        self.s.record(name, True, started, items)
        wanted = req.outputs or [o[0] for o in outputs]
        unknown = set(wanted) - {o[0] for o in outputs}
        if unknown:
            raise HttpError(400, f"unknown outputs {sorted(unknown)} for model {name!r}")
        chosen = [o for o in outputs if o[0] in wanted]
        binary = {o[0] for o in chosen} if req.binary_all else req.binary_outputs
        body, headers = encode_response(name, "1", req.id, chosen, binary)
        return web.Response(body=body, headers=headers)

    async def _infer_tensor(self, req) -> tuple[list, int]:
        size = self.s.input_size
        if set(req.inputs) != {"images"}:
            raise HttpError(
                400, f"model {TENSOR_MODEL!r} takes one input 'images', got {sorted(req.inputs)}"
            )
        if req.datatypes["images"] != "FP32":
            raise HttpError(400, f"input 'images' must be FP32, got {req.datatypes['images']}")
        tiles = req.inputs["images"]
        if tiles.ndim != 4 or tuple(tiles.shape[1:]) != (3, size, size):
            raise HttpError(
                400,
                f"input 'images' must have shape [N, 3, {size}, {size}], got {list(tiles.shape)}",
            )
        if len(tiles) > self.s.config.batcher.max_batch_size:
            raise HttpError(
                400,
                f"batch of {len(tiles)} exceeds max_batch_size {self.s.config.batcher.max_batch_size}",
            )
        if not np.isfinite(tiles).all():
            raise HttpError(400, "input 'images' contains NaN or infinity")
        logits = await self.run_tiles(np.ascontiguousarray(tiles, np.float32))
        return [("logits", "FP32", logits.reshape(-1, 1).astype(np.float32), [len(tiles), 1])], len(
            tiles
        )

    async def _infer_bytes(self, req) -> tuple[list, int]:
        if set(req.inputs) != {"image"}:
            raise HttpError(
                400,
                f"model {BYTES_MODEL!r} takes one input 'image' (BYTES), got {sorted(req.inputs)}",
            )
        if req.datatypes["image"] != "BYTES":
            raise HttpError(
                400,
                f"input 'image' must be BYTES (encoded image files), got {req.datatypes['image']}",
            )
        blobs = req.inputs["image"]
        if len(blobs) > self.s.config.batcher.max_batch_size:
            raise HttpError(
                400,
                f"batch of {len(blobs)} exceeds max_batch_size {self.s.config.batcher.max_batch_size}",
            )
        results = await asyncio.gather(*(self.run(self.s.score_blobs, [b]) for b in blobs))
        probs, labels = [], []
        for i, (res,) in enumerate(results):
            if isinstance(res, ImageError):
                raise HttpError(422, f"image {i}: {res}")
            probs.append(np.nan if res.probability is None else res.probability)
            labels.append(res.label.encode())
        n = len(blobs)
        return [("probability", "FP32", np.asarray(probs, np.float32).reshape(n, 1), [n, 1]),
                ("label", "BYTES", labels, [n, 1])], n  # fmt: skip

    async def score(self, request: web.Request) -> web.Response:
        detector = self.s.detector
        methods = request.query.get("methods")
        flag = request.query.get("include_prompt", "false").lower()
        if flag not in _FLAGS:
            raise HttpError(400, f"include_prompt must be true or false, got {flag!r}")
        include_prompt = _FLAGS[flag]
        heat_flag = request.query.get("heatmap", "false").lower()
        if heat_flag not in _FLAGS:
            raise HttpError(400, f"heatmap must be true or false, got {heat_flag!r}")
        heatmap = _FLAGS[heat_flag]
        if methods is not None or include_prompt:
            names = self.s.default_methods
            if methods is not None:
                names = [m.strip() for m in methods.split(",") if m.strip()]
                if not names:
                    raise HttpError(400, "methods is empty: name at least one method")
            try:
                detector = self.s.make_detector(names, include_prompt)
            except (RegistryError, ValueError, RuntimeError) as exc:
                raise HttpError(400, str(exc)) from None
        if request.content_type.startswith("multipart/"):
            files = await self._multipart(request)
            results = await asyncio.gather(
                *(self.run(self.s.score_blobs, [data], detector) for _, data in files)
            )
            out = [_record(name, res[0]) for (name, _), res in zip(files, results, strict=True)]
            if heatmap:
                for rec, (_, data) in zip(out, files, strict=True):
                    if "verdict" in rec:
                        rec["heatmap"] = await self.run(self.s.heatmap, data)
            return _json(200, {"results": out})
        body = await _read_body(request, self.body_timeout_s)
        if not body:
            raise HttpError(
                400, "empty body: send an image file, or multipart/form-data with files"
            )
        (res,) = await self.run(self.s.score_blobs, [body], detector)
        if isinstance(res, ImageError):
            raise HttpError(422, str(res))
        rec = _record(None, res)
        if heatmap:
            rec["heatmap"] = await self.run(self.s.heatmap, body)
        return _json(200, rec)

    async def _multipart(self, request: web.Request) -> list[tuple[str, bytes]]:
        """The files of a multipart body, read as they stream in: the whole body is bounded by
        the body limit (413), the file count by the batch limit (400), and the whole body must
        arrive within the body timeout (408), however it is framed (chunked too)."""
        max_files = self.s.config.batcher.max_batch_size * 4
        total = 0
        files: list[tuple[str, bytes]] = []

        deadline = asyncio.get_running_loop().time() + self.body_timeout_s

        async def timed(coro):  # the whole body within the timeout, not each read
            try:
                return await asyncio.wait_for(coro, deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise HttpError(
                    408, f"request body not received within {self.body_timeout_s:.0f} s"
                ) from None

        try:
            reader = await request.multipart()
            while (part := await timed(reader.next())) is not None:
                is_file = part.filename is not None or part.name in ("file", "files", "image")
                if is_file and len(files) >= max_files:
                    raise HttpError(400, f"too many files in one request (more than {max_files})")
                chunks = []
                while chunk := await timed(part.read_chunk(1 << 16)):
                    total += len(chunk)
                    if total > self.max_body_bytes:
                        raise HttpError(413, f"request body exceeds {self.max_body_bytes} bytes")
                    if is_file:
                        chunks.append(chunk)
                if is_file:
                    files.append(
                        (part.filename or part.name or f"part{len(files)}", b"".join(chunks))
                    )
        except (BadHttpMessage, ContentLengthError, ValueError) as exc:
            raise HttpError(400, f"malformed multipart body: {exc}") from None
        except ConnectionResetError:
            raise HttpError(400, "connection closed before the body was complete") from None
        if not files:
            raise HttpError(400, "multipart request has no files")
        return files


async def _read_body(request: web.Request, timeout: float = 30.0) -> bytes:
    """The whole body, or a 4xx when the client sends less than it declared or stalls."""
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise HttpError(408, f"request body not received within {timeout:.0f} s") from None
    except (BadHttpMessage, ContentLengthError) as exc:
        raise HttpError(
            400, f"malformed request body: {exc.message if hasattr(exc, 'message') else exc}"
        ) from None
    except ConnectionResetError:
        raise HttpError(400, "connection closed before the body was complete") from None


def _record(filename: str | None, res: Verdict | ImageError) -> dict:
    rec: dict = {} if filename is None else {"filename": filename}
    if isinstance(res, ImageError):
        rec["error"] = str(res)
    else:
        rec["verdict"] = res.to_dict()
    return rec
