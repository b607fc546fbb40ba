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
from aiohttp.http_exceptions import BadHttpMessage

from detector.fusion import Verdict
from detector.image import ImageError
from detector.registry import RegistryError
from serving.batcher import QueueFull
from serving.http import HttpError, flag, json_response, read_body, read_multipart
from serving.protocol import HEADER, ProtocolError, encode_response, parse_request
from serving.review_http import ReviewRoutes
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


_PARSE_INLINE_BYTES = 256 * 1024  # larger KServe bodies are parsed on a worker thread
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
PAGE_PREFIX = "/review"  # the review page's static files (no data; its API calls carry keys)
SERVICE = web.AppKey("service", Service)


@dataclass(frozen=True)
class HttpConfig:
    max_body_bytes: int = 64 * 1024 * 1024
    api_keys: tuple[str, ...] = ()  # scoring and reporting
    reviewer_keys: tuple[str, ...] = ()  # all of that, and the review queue
    rate_limit: float | None = None  # requests per second per key (token bucket)
    rate_burst: int = 20
    cors_origins: tuple[str, ...] = ()
    access_log: bool = True
    body_timeout_s: float = 30.0  # a client that declares more body than it sends gets 408
    work_timeout_s: float = 60.0  # a request's scoring work past this answers 503


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a key's label (never the key) and its role."""

    key: str  # "anonymous" when the server has no keys; else "key<N>" / "reviewer<N>"
    role: str  # "scorer" or "reviewer"


ROLES = ("scorer", "reviewer")
CALLER = web.RequestKey("caller", Caller)  # request[CALLER]: set by the middleware


class Guard:
    """API keys (constant-time, no hint of which part was wrong) with roles, and per-key rate
    limits. Without keys every caller is an anonymous reviewer (a server on loopback)."""

    def __init__(self, config: HttpConfig) -> None:
        self.keys = [(k.encode(), f"key{i}", "scorer") for i, k in enumerate(config.api_keys)]
        self.keys += [
            (k.encode(), f"reviewer{i}", "reviewer") for i, k in enumerate(config.reviewer_keys)
        ]
        self.rate, self.burst = config.rate_limit, config.rate_burst
        self.buckets: dict[str, _Bucket] = {}

    def check(self, request: web.Request) -> Caller:
        caller = Caller("anonymous", "reviewer")
        if self.keys:
            auth = request.headers.get("Authorization", "")
            given = (
                auth[7:] if auth.startswith("Bearer ") else request.headers.get("X-API-Key", "")
            ).encode()
            # Compare with every key, without stopping early, so timing says nothing.
            match = [hmac.compare_digest(given, k) for k, _, _ in self.keys]
            if not any(match):
                raise HttpError(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})
            _, label, role = self.keys[match.index(True)]
            caller = Caller(label, role)
        if self.rate:
            now = time.monotonic()
            bucket = self.buckets.setdefault(caller.key, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens < 1:
                wait = (1 - bucket.tokens) / self.rate
                raise HttpError(
                    429, "rate limit exceeded", {"Retry-After": f"{max(1, round(wait))}"}
                )
            bucket.tokens -= 1
        return caller


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
            # (a CORS preflight carries no key: browsers send none with it)
            open_path = request.path in OPEN_PATHS or _is_page(request.path)
            if not open_path and request.method != "OPTIONS":
                request[CALLER] = guard.check(request)
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
                json_response(exc.status, {"error": exc.reason}, exc.headers),
                exc.status,
                exc.reason,
            )

        except web.HTTPRequestEntityTooLarge:
            reason = f"request body exceeds {config.max_body_bytes} bytes"
            response, status = json_response(413, {"error": reason}), 413
        except web.HTTPException as exc:  # aiohttp's own 404/405 etc., as JSON
            reason = exc.reason
            response, status = json_response(exc.status, {"error": exc.reason}), exc.status
        except Exception:
            log.exception("unhandled error on %s", request.path)
            reason = "internal server error"
            response, status = json_response(500, {"error": reason}), 500
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
            response.headers["Vary"] = "Origin"
            if origin and (origin in config.cors_origins or "*" in config.cors_origins):
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        if config.access_log:
            log.info(json.dumps({"id": rid, "method": request.method, "path": request.path, "status": status,
                                 "ms": round(elapsed * 1000, 2), "error": reason or None}))  # fmt: skip
        return response

    app = web.Application(middlewares=[middleware], client_max_size=config.max_body_bytes)
    app[SERVICE] = service
    routes = _Routes(service, config.body_timeout_s, config.max_body_bytes, config.work_timeout_s)
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
    ReviewRoutes(routes, CALLER).add_to(app)
    if config.cors_origins:
        app.router.add_route("OPTIONS", "/{tail:.*}", _preflight(config.cors_origins))
    return app


_CORS_METHODS = "GET, POST, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-Id, " + HEADER
_CORS_EXPOSE = "X-Request-Id, Retry-After, " + HEADER


def _preflight(origins: tuple[str, ...]) -> Handler:
    async def preflight(request: web.Request) -> web.Response:
        """A browser's CORS preflight: the origin must be allowed (403 otherwise); the answer
        says which methods and headers may follow."""
        origin = request.headers.get("Origin", "")
        if not origin or not (origin in origins or "*" in origins):
            raise HttpError(403, f"origin {origin!r} is not allowed (--cors-origin)")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": _CORS_METHODS,
                "Access-Control-Allow-Headers": _CORS_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )

    return preflight


def _is_page(path: str) -> bool:
    return path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + "/")


def _endpoint(request: web.Request) -> str:
    route = request.match_info.route.resource
    return route.canonical if route is not None else "unmatched"


def _reason_label(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
            413: "too_large", 422: "undecodable_image", 429: "rate_limited", 503: "overloaded"}.get(status, "server_error")  # fmt: skip


class _Routes:
    def __init__(
        self,
        service: Service,
        body_timeout_s: float,
        max_body_bytes: int = 64 * 1024 * 1024,
        work_timeout_s: float = 60.0,
    ) -> None:
        self.s = service
        self.body_timeout_s = body_timeout_s
        self.work_timeout_s = work_timeout_s
        self.max_body_bytes = max_body_bytes
        self.loop_pool = service.pool

    async def run(self, fn, *args):
        """``fn(*args)`` on a worker thread: for work that decodes images or blocks. Past the
        work timeout the request answers 503 at once; the thread finishes its step (a decoder
        cannot be interrupted) and its result is dropped, while the decode limits, the pixel
        budget and the worker count bound what such work can cost."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.loop_pool, fn, *args)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # abandoned: no log
        try:
            return await self._scoring(
                lambda: asyncio.wait_for(asyncio.shield(future), self.work_timeout_s)
            )
        except TimeoutError:
            self.s.metrics.errors.labels("work_timeout").inc()
            raise HttpError(
                503,
                f"scoring did not finish within {self.work_timeout_s:g} s; retry later",
                {"Retry-After": "5"},
            ) from None

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
            return json_response(503, {"error": f"model unhealthy: {reason}"})
        return web.Response(status=200)

    async def server_metadata(self, request: web.Request) -> web.Response:
        from detector import __version__

        return json_response(200, {"name": "synthdetect", "version": __version__,
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
        return json_response(
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
        return json_response(200, config)

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
        return json_response(200, {"model_stats": [self._stats(self._model(request))]})

    async def all_stats(self, request: web.Request) -> web.Response:
        return json_response(
            200, {"model_stats": [self._stats(m) for m in (BYTES_MODEL, TENSOR_MODEL)]}
        )

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
        body = await read_body(request, self.body_timeout_s)
        try:
            if len(body) > _PARSE_INLINE_BYTES:  # a big JSON tensor must not block the loop
                req = await asyncio.get_running_loop().run_in_executor(
                    self.s.pool, parse_request, body, header_len
                )
            else:
                req = parse_request(body, header_len)
        except ProtocolError as exc:
            raise HttpError(400, str(exc)) from None
        started = time.perf_counter()
        try:
            outputs, items = await (
                self._infer_tensor(req)
                if name == TENSOR_MODEL
                else self._infer_bytes(req, _actor(request))
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

    async def _infer_bytes(self, req, actor: str) -> tuple[list, int]:
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
            if self.s.reviews is not None and res.label == "uncertain":
                await self.run(self.s.queue_review, blobs[i], res, "uncertain", actor, None)
        n = len(blobs)
        return [("probability", "FP32", np.asarray(probs, np.float32).reshape(n, 1), [n, 1]),
                ("label", "BYTES", labels, [n, 1])], n  # fmt: skip

    async def score(self, request: web.Request) -> web.Response:
        detector = self.s.detector
        methods = request.query.get("methods")
        include_prompt = flag(request, "include_prompt")
        heatmap = flag(request, "heatmap")
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
        review = flag(request, "review")
        if review and self.s.reviews is None:
            raise HttpError(
                400, "review=true needs the review queue: start the server with --review-db PATH"
            )
        multipart = request.content_type.startswith("multipart/")
        if multipart:
            files = await self.multipart_files(request)
        else:
            body = await read_body(request, self.body_timeout_s)
            if not body:
                raise HttpError(
                    400, "empty body: send an image file, or multipart/form-data with files"
                )
            files = [(None, body)]
        results = await asyncio.gather(
            *(self.run(self.s.score_blobs, [data], detector) for _, data in files)
        )
        out = []
        for (name, data), (res,) in zip(files, results, strict=True):
            if not multipart and isinstance(res, ImageError):
                raise HttpError(422, str(res))
            rec = _record(name, res)
            if isinstance(res, Verdict):
                if self.s.reviews is not None and (review or res.label == "uncertain"):
                    reason = "requested" if review else "uncertain"
                    rec["review_id"] = await self.run(
                        self.s.queue_review, data, res, reason, _actor(request), name
                    )
                if heatmap:
                    rec["heatmap"] = await self.run(self.s.heatmap, data)
            out.append(rec)
        return json_response(200, {"results": out} if multipart else out[0])

    async def multipart_files(self, request: web.Request) -> list[tuple[str, bytes]]:
        form = await read_multipart(
            request,
            self.s.config.batcher.max_batch_size * 4,
            self.max_body_bytes,
            self.body_timeout_s,
        )
        if not form.files:
            raise HttpError(400, "multipart request has no files")
        return form.files


def _actor(request: web.Request) -> str:
    caller = request.get(CALLER)
    return caller.key if caller is not None else "anonymous"


def _record(filename: str | None, res: Verdict | ImageError) -> dict:
    rec: dict = {} if filename is None else {"filename": filename}
    if isinstance(res, ImageError):
        rec["error"] = str(res)
    else:
        rec["verdict"] = res.to_dict()
    return rec
