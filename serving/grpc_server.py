"""KServe v2 over gRPC, as Triton speaks it: ``inference.GRPCInferenceService``.

The servicer is generated from the protos that ship in ``tritonclient[grpc]`` and runs on
``grpc.aio`` in the same event loop as the HTTP server, sharing its ``Service`` (batcher,
limits, worker pool, statistics, both models, the review queue) and its keys and rate limits
(``serving.guard``; metadata ``authorization: Bearer KEY`` or ``x-api-key``). So
``tritonclient.grpc`` and ``perf_analyzer -i grpc`` work unchanged: health, metadata, model
configuration, statistics, and inference with BYTES images or FP32 tiles, sent as typed
contents or as raw bytes.

Errors get the status Triton gives them: INVALID_ARGUMENT for a malformed request or an image
that cannot be decoded, NOT_FOUND for an unknown model or version, UNAUTHENTICATED for a missing
or wrong key, RESOURCE_EXHAUSTED for a spent rate limit or a message over the size limit,
UNAVAILABLE when overloaded or shutting down, DEADLINE_EXCEEDED past the work timeout, INTERNAL
for a failure of the server itself (logged, counted under its code). The
shared-memory, repository and trace services answer UNIMPLEMENTED. A message is at most the HTTP
body limit, and never more than 2 GiB - 1 byte (gRPC's sizes are 32-bit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from detector import __version__
from serving.guard import AccessDenied, Guard, credential
from serving.kserve import InferError, infer, model_stats, resolve_model
from serving.kserve_http import EXTENSIONS, PARSE_INLINE_BYTES
from serving.protocol import (
    DTYPES,
    InferRequest,
    ProtocolError,
    Tensor,
    binary_tensor,
    check_batch,
    check_output_parameters,
    check_shape,
    count_elements,
    encode_bytes_tensor,
    json_tensor,
)
from serving.runner import GrpcBindError
from serving.service import Unavailable, WorkTimeout

if TYPE_CHECKING:
    from serving.service import Service

__all__ = ["GrpcBindError", "GrpcServer"]

log = logging.getLogger("synthdetect.grpc")

_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}  # fmt: skip
_OPEN = ("ServerLive", "ServerReady")
_INFER_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT,
                "unprocessable": grpc.StatusCode.INVALID_ARGUMENT,
                "not_found": grpc.StatusCode.NOT_FOUND}  # fmt: skip
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's message sizes are C ints: more fails to start


def _param(p: service_pb2.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def parse_infer_request(
    msg: service_pb2.ModelInferRequest, max_batch: int | None = None
) -> InferRequest:
    """A gRPC ModelInferRequest as the transport-neutral ``InferRequest``."""
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise ProtocolError(
            f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs (one each, in order)"
        )
    if not msg.inputs:
        raise ProtocolError("request needs at least one input")
    tensors: dict[str, Tensor] = {}
    for i, spec in enumerate(msg.inputs):
        if spec.datatype not in DTYPES:
            raise ProtocolError(f"input {spec.name!r}: unknown datatype {spec.datatype!r}")
        shape = check_shape(list(spec.shape), spec.name)
        check_batch(shape, spec.name, max_batch)
        if raw:
            if spec.HasField("contents"):  # Triton refuses the two together as well
                raise ProtocolError(f"input {spec.name!r} has both contents and raw_input_contents")
            tensor = binary_tensor(spec.name, spec.datatype, shape, raw[i])
        elif spec.datatype not in _CONTENTS:  # FP16, BF16: the proto has no typed field
            raise ProtocolError(
                f"input {spec.name!r}: {spec.datatype} has no typed contents field; send it as "
                "raw_input_contents"
            )
        else:
            values = list(getattr(spec.contents, _CONTENTS[spec.datatype]))
            if spec.datatype == "BYTES":
                flat = [bytes(v) for v in values]
                if len(flat) != count_elements(shape):
                    raise ProtocolError(
                        f"input {spec.name!r}: {len(flat)} values for shape {shape}"
                    )
                tensor = Tensor(spec.name, "BYTES", shape, flat)
            else:
                tensor = json_tensor(spec.name, spec.datatype, shape, values)
        if spec.name in tensors:
            raise ProtocolError(f"input {spec.name!r} given twice")
        tensors[spec.name] = tensor
    for out in msg.outputs:
        check_output_parameters(
            {k: _param(v) for k, v in out.parameters.items()}, f"output {out.name!r}"
        )
    outputs = [o.name for o in msg.outputs] or None
    params = {k: _param(v) for k, v in msg.parameters.items()}
    return InferRequest(
        id=msg.id or None,
        tensors=tensors,
        outputs=outputs,
        binary_outputs=set(outputs or ()),
        binary_all=True,  # gRPC answers carry raw_output_contents, as Triton's do
        parameters=params,
    )


def _unimplemented(name: str):
    async def method(self, request, context):  # the generated stub logs a traceback each call
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{name} is not served here (health, metadata, configuration, statistics and "
            "inference are)",
        )

    method.__name__ = name
    return method


_SERVICE_PREFIX = "/inference.GRPCInferenceService/"


class _KeyCheck(grpc.aio.ServerInterceptor):
    """A missing or wrong key is refused from the call's metadata, before its message is read:
    the servicer's handlers take the whole (deserialised) request first, so without this a
    caller without a key had the server read and parse up to the size limit per call (and an
    oversized one was told RESOURCE_EXHAUSTED, not UNAUTHENTICATED). The servicer checks the
    key again with the rate limit, which is spent there once per call."""

    def __init__(self, servicer: _Servicer) -> None:
        self.servicer = servicer

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        name = method[len(_SERVICE_PREFIX) :] if method.startswith(_SERVICE_PREFIX) else ""
        if name and name not in _OPEN and self.servicer.guard.keys:
            meta = dict(handler_call_details.invocation_metadata or ())
            try:
                self.servicer.guard.identify(
                    credential(meta.get("authorization"), meta.get("x-api-key"))
                )
            except AccessDenied as exc:
                return self.servicer.refusal(name, exc.reason)
        return await continuation(handler_call_details)


class _Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: Service, guard: Guard) -> None:
        self.s = service
        self.guard = guard

    # --- the guard, the metrics and the error mapping, around every call --------------------

    def refusal(self, method: str, reason: str):
        """A handler that answers UNAUTHENTICATED without reading the request: a streaming
        one, whose messages are read only when it asks (a unary one has them read first)."""

        async def refuse(requests, context):
            self._count(method, grpc.StatusCode.UNAUTHENTICATED, time.perf_counter())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        return grpc.stream_unary_rpc_method_handler(refuse)

    def _count(self, method: str, code: grpc.StatusCode, start: float) -> None:
        endpoint = f"grpc:{method}"
        self.s.metrics.requests.labels(endpoint, code.name).inc()
        self.s.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        if code != grpc.StatusCode.OK:
            self.s.metrics.errors.labels(f"grpc_{code.name.lower()}").inc()

    async def _call(self, method: str, context, work):
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if method not in _OPEN:
                meta = dict(context.invocation_metadata() or ())
                caller = self.guard.check(
                    credential(meta.get("authorization"), meta.get("x-api-key"))
                )
            else:
                caller = None
            if method == "ModelInfer":
                with self.s.admit():
                    return await work(caller)
            return await work(caller)
        except AccessDenied as exc:
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if exc.rate_limited
                else grpc.StatusCode.UNAUTHENTICATED
            )
            message = exc.reason
        except InferError as exc:
            code, message = _INFER_CODES[exc.kind], exc.message
        except ProtocolError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except WorkTimeout as exc:
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, exc.reason
        except Unavailable as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, exc.reason
        except grpc.aio.AbortError:
            raise
        except Exception:  # a bug: INTERNAL (as the HTTP side's 500), counted as one, logged once
            log.exception("gRPC %s failed", method)
            code, message = grpc.StatusCode.INTERNAL, "internal server error"
        finally:
            self._count(method, code, start)
        await context.abort(code, message)

    # --- health and metadata ----------------------------------------------------------------

    async def ServerLive(self, request, context):
        return await self._call(
            "ServerLive", context, _const(service_pb2.ServerLiveResponse(live=True))
        )

    async def ServerReady(self, request, context):
        async def work(_):
            return service_pb2.ServerReadyResponse(ready=await self.s.readiness() is None)

        return await self._call("ServerReady", context, work)

    async def ModelReady(self, request, context):
        async def work(_):
            try:  # one engine: the server's answer
                resolve_model(self.s, request.name, request.version)
            except InferError:  # as Triton: an unknown model or version is not ready
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=await self.s.readiness() is None)

        return await self._call("ModelReady", context, work)

    async def ServerMetadata(self, request, context):
        reply = service_pb2.ServerMetadataResponse(
            name="synthdetect", version=__version__, extensions=EXTENSIONS
        )
        return await self._call("ServerMetadata", context, _const(reply))

    async def ModelMetadata(self, request, context):
        async def work(_):
            name = resolve_model(self.s, request.name, request.version)
            return json_format.ParseDict(
                self.s.models[name].metadata(), service_pb2.ModelMetadataResponse()
            )

        return await self._call("ModelMetadata", context, work)

    async def ModelConfig(self, request, context):
        async def work(_):
            name = resolve_model(self.s, request.name, request.version)
            config = json_format.ParseDict(
                self.s.model_config(name), model_config_pb2.ModelConfig()
            )
            return service_pb2.ModelConfigResponse(config=config)

        return await self._call("ModelConfig", context, work)

    async def ModelStatistics(self, request, context):
        async def work(_):
            names = (
                [resolve_model(self.s, request.name, request.version)]
                if request.name
                else list(self.s.models)
            )
            reply = service_pb2.ModelStatisticsResponse()
            for name in names:
                json_format.ParseDict(model_stats(self.s, name), reply.model_stats.add())
            return reply

        return await self._call("ModelStatistics", context, work)

    # --- inference --------------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        async def work(caller):
            name = resolve_model(self.s, request.model_name, request.model_version)
            limit = self.s.config.batcher.max_batch_size
            if not request.raw_input_contents and request.ByteSize() > PARSE_INLINE_BYTES:
                # typed contents become Python lists, then arrays: off the event loop when large
                req = await asyncio.get_running_loop().run_in_executor(
                    self.s.pool, parse_infer_request, request, limit
                )
            else:
                req = parse_infer_request(request, limit)
            outputs, _ = await infer(self.s, name, req, caller.key if caller else "anonymous")
            reply = service_pb2.ModelInferResponse(
                model_name=name, model_version="1", id=request.id
            )
            for out in outputs:
                reply.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
                reply.raw_output_contents.append(
                    encode_bytes_tensor(out.value)  # type: ignore[arg-type]
                    if out.datatype == "BYTES"
                    else np.ascontiguousarray(out.value, DTYPES[out.datatype]).tobytes()
                )
            return reply

        return await self._call("ModelInfer", context, work)


# Triton's shared-memory, repository, trace, log and streaming services: a clean UNIMPLEMENTED
for name in ("CudaSharedMemoryRegister", "CudaSharedMemoryStatus", "CudaSharedMemoryUnregister",
             "LogSettings", "ModelStreamInfer", "RepositoryIndex", "RepositoryModelLoad",
             "RepositoryModelUnload", "SystemSharedMemoryRegister", "SystemSharedMemoryStatus",
             "SystemSharedMemoryUnregister", "TraceSetting"):  # fmt: skip
    setattr(_Servicer, name, _unimplemented(name))


def _const(reply):
    async def work(_):
        return reply

    return work


class GrpcServer:
    """The gRPC server on ``host:port`` (``grpc.aio``: start and stop in the running loop)."""

    def __init__(
        self,
        service: Service,
        guard: Guard,
        host: str,
        port: int,
        max_message_bytes: int,
        reuse_port: bool = False,
        idle_timeout_s: float = 15.0,
    ) -> None:
        self.max_message_bytes = min(max_message_bytes, MAX_MESSAGE_BYTES)
        idle_ms = max(1, int(idle_timeout_s * 1000))
        servicer = _Servicer(service, guard)
        self.server = grpc.aio.server(
            interceptors=[_KeyCheck(servicer)],
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                # as on the HTTP port (--idle-timeout-s): a connection with no call in flight,
                # or one that never finishes its handshake, is closed, so that idle clients
                # cannot hold the process's file descriptors (and starve HTTP of them)
                ("grpc.max_connection_idle_ms", idle_ms),
                ("grpc.server_handshake_timeout_ms", idle_ms),
            ],
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self.server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:  # older grpc returns 0 when it cannot bind; newer raises RuntimeError
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise GrpcBindError(
                f"cannot listen on grpc://{address} (the port is in use or not allowed)"
            )
        self.address = address

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float = 30.0) -> None:
        await self.server.stop(grace)
