"""The HTTP app: one middleware (keys, limits, errors, metrics, logs) and the route table.

Each concern has its own module: ``serving.kserve_http`` (KServe v2 / Triton), ``serving.
score_http`` (``/v1/score``), ``serving.review_http`` (reports, the review queue and page);
``serving.http`` has the JSON error and the bounded body readers, ``serving.guard`` the keys
and rate limits. A new endpoint is a route in one of those modules (or a new one added here).

Every error is JSON ``{"error": reason}`` with a 4xx/5xx status: 400 malformed request, 401
missing or wrong API key, 403 a key without the role, 404 unknown route or model, 408 body not
received in time, 413 body too large, 415 compressed body (any ``Content-Encoding`` but
``identity``, and gzip or deflate on KServe infer: see ``serving.http``), 422 image that cannot be decoded (or too small for a
heatmap), 429 rate limit, 503 overloaded, too slow or shutting down.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from serving.guard import AccessDenied, Caller, Guard, credential
from serving.http import HttpError, json_response
from serving.kserve_http import KServeRoutes
from serving.protocol import HEADER
from serving.review_http import ReviewRoutes
from serving.score_http import ScoreRoutes
from serving.service import Service, Unavailable, WorkTimeout

__all__ = ["CALLER", "GUARD", "HttpConfig", "make_app"]

log = logging.getLogger("synthdetect.server")


class _OneLineProtocolErrors(logging.Filter):
    """aiohttp answers a malformed HTTP message (bad Content-Length, chunking, method) with a
    400 before any handler runs, and logs the parser's traceback. A client's bad bytes are not
    a server fault: log them as one line with the parser's reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            # the reason without the parser's excerpt of the bad bytes (a header line can hold
            # an API key: "Invalid header value char: b'X-API-Key: ...'")
            reason = " ".join(str(exc.message).split()).split(": b'")[0]
            record.msg, record.args = f"malformed HTTP request (400): {reason}", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _quiet_protocol_errors() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _OneLineProtocolErrors) for f in server_log.filters):
        server_log.addFilter(_OneLineProtocolErrors())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
PAGE_PREFIX = "/review"  # the review page's static files (no data; its API calls carry keys)
SERVICE = web.AppKey("service", Service)
GUARD = web.AppKey("guard", Guard)  # shared with the gRPC server (one set of rate buckets)


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


CALLER = web.RequestKey("caller", Caller)  # request[CALLER]: set by the middleware


def make_app(service: Service, config: HttpConfig | None = None) -> web.Application:
    config = config or HttpConfig()
    _quiet_protocol_errors()
    guard = Guard(config.api_keys, config.reviewer_keys, config.rate_limit, config.rate_burst)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        rid = request.headers.get("X-Request-Id", "")
        if not _REQUEST_ID.fullmatch(rid):  # echoed and logged: short and plain, or ours
            rid = uuid.uuid4().hex[:16]
        endpoint = _endpoint(request)
        status, reason, label = 500, "", None
        try:
            # (a CORS preflight carries no key: browsers send none with it)
            open_path = request.path in OPEN_PATHS or _is_page(request.path)
            if not open_path and request.method != "OPTIONS":
                given = credential(
                    request.headers.get("Authorization"), request.headers.get("X-API-Key")
                )
                request[CALLER] = guard.check(given)
            if (
                request.content_length is not None
                and request.content_length > config.max_body_bytes
            ):
                raise HttpError(
                    413,
                    f"request body of {request.content_length} bytes exceeds {config.max_body_bytes}",
                )
            if request.path in OPEN_PATHS:  # health probes: never refused for load
                response = await handler(request)
            else:  # a slot once the request's work starts (GETs too: a review heatmap)
                with service.admit(at_work=True):
                    response = await handler(request)
            status = response.status
        except AccessDenied as exc:
            status, reason = (429, exc.reason) if exc.rate_limited else (401, exc.reason)
            headers = (
                {"Retry-After": str(exc.retry_after)}
                if exc.rate_limited
                else {"WWW-Authenticate": "Bearer"}
            )
            response = json_response(status, {"error": reason}, headers)
        except Unavailable as exc:
            status, reason = 503, exc.reason
            label = "work_timeout" if isinstance(exc, WorkTimeout) else None
            response = json_response(503, {"error": reason}, {"Retry-After": str(exc.retry_after)})
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
            kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}  # 405 MUST
            response, status = json_response(exc.status, {"error": reason}, kept), exc.status
        except Exception:
            log.exception("unhandled error on %s", request.path)
            reason = "internal server error"
            response, status = json_response(500, {"error": reason}), 500
        if status in (400, 408, 413, 415) and request.method == "POST":
            response.force_close()  # the body may be unread: close rather than wait for it
        elapsed = time.perf_counter() - start
        service.metrics.requests.labels(endpoint, str(status)).inc()
        service.metrics.latency.labels(endpoint).observe(elapsed)
        if status >= 400:
            service.metrics.errors.labels(label or _reason_label(status)).inc()
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

    async def no_version(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "synthdetect"  # not the Python and aiohttp versions

    app.on_response_prepare.append(no_version)
    app[SERVICE] = service
    app[GUARD] = guard
    KServeRoutes(service, config.body_timeout_s, _actor, config.max_body_bytes).add_to(app)
    ScoreRoutes(service, config.body_timeout_s, config.max_body_bytes, _actor).add_to(app)
    ReviewRoutes(service, config.body_timeout_s, config.max_body_bytes, CALLER).add_to(app)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=service.metrics.exposition(),
            headers={"Content-Type": service.metrics.content_type},
        )

    app.router.add_get("/metrics", metrics)
    if config.cors_origins:
        # one preflight route per path served, not a catch-all: that made every path exist,
        # so an unknown one answered 405 rather than 404
        preflight = _preflight(config.cors_origins)
        for resource in list(app.router.resources()):
            if isinstance(resource, web.StaticResource):
                resource.set_options_route(preflight)
            else:
                resource.add_route("OPTIONS", preflight)
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
            413: "too_large", 415: "compressed_body", 422: "undecodable_image", 429: "rate_limited", 503: "overloaded"}.get(status, "server_error")  # fmt: skip


def _actor(request: web.Request) -> str:
    caller = request.get(CALLER)
    return caller.key if caller is not None else "anonymous"
