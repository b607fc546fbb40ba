"""KServe v2 over HTTP, as Triton speaks it: health, metadata, config, statistics, infer.

The models, their checks and their statistics are ``serving.kserve``'s; the descriptions
(metadata and config) are ``detector.model_io``'s. This module only translates HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from detector import __version__
from serving.http import HttpError, json_response, read_body
from serving.kserve import InferError, infer, model_stats, resolve_model
from serving.protocol import HEADER, ProtocolError, encode_response, parse_request

if TYPE_CHECKING:
    from serving.service import Service

__all__ = ["EXTENSIONS", "KServeRoutes", "http_status"]

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
PARSE_INLINE_BYTES = 256 * 1024  # larger bodies are parsed on a worker thread (HTTP, gRPC)
_STATUS = {"invalid": 400, "not_found": 404, "unprocessable": 422}


# Triton's HTTP paths this server does not serve, and what a client asked for there
UNSERVED = {
    "/v2/repository/{tail:.*}": "the model repository extension",
    "/v2/systemsharedmemory{tail:(/.*)?}": "the system shared-memory extension",
    "/v2/cudasharedmemory{tail:(/.*)?}": "the CUDA shared-memory extension",
    "/v2/trace/setting": "the trace extension",
    "/v2/models/{model}/trace/setting": "the trace extension",
    "/v2/logging": "the logging extension",
    "/v2/models/{model}/generate": "the generate extension",
    "/v2/models/{model}/generate_stream": "the generate extension",
}


def _unserved(name: str):
    async def handler(request: web.Request) -> web.Response:
        raise HttpError(
            404,
            f"{name} is not served here (health, metadata, configuration, statistics and "
            f"inference are; extensions: GET /v2)",
        )

    return handler


def http_status(exc: InferError) -> HttpError:
    return HttpError(_STATUS[exc.kind], exc.message)


class KServeRoutes:
    def __init__(self, service: Service, body_timeout_s: float, actor, max_body_bytes: int) -> None:
        self.s = service
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes  # an inflated (gzip, deflate) body's limit too
        self.actor = actor  # request -> the caller's key label (for the review queue)

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2", self.server_metadata)
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.router.add_get(prefix, self.model_metadata)
            app.router.add_get(prefix + "/ready", self.model_ready)
            app.router.add_get(prefix + "/config", self.model_config)
            app.router.add_get(prefix + "/stats", self.model_stats)
            app.router.add_post(prefix + "/infer", self.infer)
        app.router.add_get("/v2/models/stats", self.all_stats)
        # Triton's other extensions: a reason instead of a bare 404 (gRPC: UNIMPLEMENTED)
        for path, name in UNSERVED.items():
            for method in ("GET", "POST"):
                app.router.add_route(method, path, _unserved(name))

    def _model(self, request: web.Request) -> str:
        try:
            return resolve_model(
                self.s, request.match_info["model"], request.match_info.get("version")
            )
        except InferError as exc:
            raise http_status(exc) from None

    # --- health and metadata ----------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        if (reason := await self.s.readiness()) is not None:
            return json_response(503, {"error": reason})
        return web.Response(status=200)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response(
            200, {"name": "synthdetect", "version": __version__, "extensions": EXTENSIONS}
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        return json_response(200, self.s.models[self._model(request)].metadata())

    async def model_ready(self, request: web.Request) -> web.Response:
        self._model(request)  # both models run on the one engine: ready when the server is
        return await self.ready(request)

    async def model_config(self, request: web.Request) -> web.Response:
        return json_response(200, self.s.model_config(self._model(request)))

    async def model_stats(self, request: web.Request) -> web.Response:
        return json_response(200, {"model_stats": [model_stats(self.s, self._model(request))]})

    async def all_stats(self, request: web.Request) -> web.Response:
        return json_response(200, {"model_stats": [model_stats(self.s, m) for m in self.s.models]})

    # --- inference --------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        name = self._model(request)
        raw_len = request.headers.get(HEADER)
        try:
            header_len = int(raw_len) if raw_len is not None else None
        except ValueError:
            raise HttpError(400, f"{HEADER} must be an integer") from None
        # tritonclient's request_compression_algorithm (gzip, deflate), as Triton takes it
        body = await read_body(request, self.body_timeout_s, inflate=self.max_body_bytes)
        limit = self.s.config.batcher.max_batch_size
        try:
            if len(body) > PARSE_INLINE_BYTES:  # a big JSON tensor must not block the loop
                # as scoring work: it takes the request's slot first (an overloaded server
                # refuses before parsing), under the work timeout
                req = await self.s.run(parse_request, body, header_len, limit)
            else:
                req = parse_request(body, header_len, limit)
        except ProtocolError as exc:
            raise HttpError(400, str(exc)) from None
        try:
            outputs, binary = await infer(self.s, name, req, self.actor(request))
        except InferError as exc:
            raise http_status(exc) from None
        body, headers = encode_response(
            name, "1", req.id, [(o.name, o.datatype, o.value, o.shape) for o in outputs], binary
        )
        return web.Response(body=body, headers=headers)
