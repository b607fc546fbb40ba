"""The KServe v2 models, whatever the transport: checks, inference, statistics.

``serving.kserve_http`` (HTTP/JSON + the binary extension) and ``serving.grpc_server``
(Triton's gRPC service) both parse a request into ``serving.protocol.InferRequest`` and call
``infer`` here, so the two protocols check the same things, run the same batcher and count the
same statistics. Errors are ``InferError`` with a kind each transport maps to its own status
(``invalid``: HTTP 400 / gRPC INVALID_ARGUMENT; ``not_found``: 404 / NOT_FOUND;
``unprocessable``: 422 / INVALID_ARGUMENT, an image that cannot be decoded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.fusion import Verdict
from detector.image import ImageError
from detector.model_io import BYTES_MODEL, TENSOR_MODEL
from serving.protocol import InferRequest
from serving.service import gather_or_cancel

if TYPE_CHECKING:
    from serving.service import Service

__all__ = ["InferError", "Output", "infer", "model_stats", "resolve_model"]


class InferError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass(frozen=True)
class Output:
    name: str
    datatype: str
    value: np.ndarray | list[bytes]
    shape: list[int]


def resolve_model(service: Service, name: str, version: str | None) -> str:
    if name not in service.models:
        raise InferError(
            "not_found", f"unknown model {name!r} (served: {', '.join(service.models)})"
        )
    if version not in (None, "", "1"):
        raise InferError("not_found", f"model {name!r} has no version {version!r} (served: 1)")
    return name


async def infer(
    service: Service, name: str, req: InferRequest, actor: str
) -> tuple[list[Output], set[str]]:
    """Run one request on a served model; returns the outputs asked for and which of them
    go back as binary."""
    started = time.perf_counter()
    uncertain: list[tuple[bytes, Verdict]] = []
    served = {o.name for o in service.models[name].outputs}
    unknown = set(req.outputs or ()) - served
    if unknown:  # before any work, and a failed request in the statistics, as Triton counts it
        service.record(name, False, started, 0)
        raise InferError("invalid", f"unknown outputs {sorted(unknown)} for model {name!r}")
    try:
        if name == TENSOR_MODEL:
            outputs, items = await _infer_tensor(service, req)
        else:
            outputs, items, uncertain = await _infer_bytes(service, req)
    except Exception:
        service.record(name, False, started, 0)
        raise
    service.record(name, True, started, items)
    wanted = req.outputs or [o.name for o in outputs]
    # Only now, the whole request answered: a refused one (a bad image later in the batch)
    # leaves the review queue as it was, however often the client retries.
    if service.reviews is not None:
        for blob, verdict in uncertain:
            await service.run(service.queue_review, blob, verdict, "uncertain", actor, None)
    chosen = [o for o in outputs if o.name in wanted]
    binary = {o.name for o in chosen} if req.binary_all else set(req.binary_outputs)
    return chosen, binary


def _batch_limit(service: Service, n: int) -> None:
    limit = service.config.batcher.max_batch_size
    if n == 0:  # nothing to run: Triton refuses an empty batch too; counting it would skew stats
        raise InferError("invalid", "batch of 0: send at least one")
    if n > limit:
        raise InferError("invalid", f"batch of {n} exceeds max_batch_size {limit}")


async def _infer_tensor(service: Service, req: InferRequest) -> tuple[list[Output], int]:
    size = service.input_size
    if set(req.tensors) != {"images"}:
        raise InferError(
            "invalid", f"model {TENSOR_MODEL!r} takes one input 'images', got {sorted(req.tensors)}"
        )
    t = req.tensors["images"]
    if t.datatype != "FP32":
        raise InferError("invalid", f"input 'images' must be FP32, got {t.datatype}")
    tiles = t.value
    assert isinstance(tiles, np.ndarray)
    if tiles.ndim != 4 or tuple(tiles.shape[1:]) != (3, size, size):
        raise InferError(
            "invalid",
            f"input 'images' must have shape [N, 3, {size}, {size}], got {list(tiles.shape)}",
        )
    _batch_limit(service, len(tiles))
    if not np.isfinite(tiles).all():
        raise InferError("invalid", "input 'images' contains NaN or infinity")
    logits = await service.score_tiles(np.ascontiguousarray(tiles, np.float32))
    n = len(tiles)
    return [Output("logits", "FP32", logits.reshape(-1, 1).astype(np.float32), [n, 1])], n


async def _infer_bytes(
    service: Service, req: InferRequest
) -> tuple[list[Output], int, list[tuple[bytes, Verdict]]]:
    """The outputs, the image count and the uncertain (image, verdict) pairs to queue for
    review once the request has succeeded."""
    if set(req.tensors) != {"image"}:
        raise InferError(
            "invalid",
            f"model {BYTES_MODEL!r} takes one input 'image' (BYTES), got {sorted(req.tensors)}",
        )
    t = req.tensors["image"]
    if t.datatype != "BYTES":
        raise InferError(
            "invalid", f"input 'image' must be BYTES (encoded image files), got {t.datatype}"
        )
    if len(t.shape) != 2 or t.shape[1] != 1:  # as Triton checks the model's dims [-1, 1]
        raise InferError(
            "invalid",
            f"input 'image' must have shape [N, 1] (one encoded image per row), got {t.shape}",
        )
    blobs = t.value
    assert isinstance(blobs, list)
    _batch_limit(service, len(blobs))
    results = await gather_or_cancel(*(service.score([b]) for b in blobs))
    probs, labels, uncertain = [], [], []
    for i, (res,) in enumerate(results):
        if isinstance(res, ImageError):
            raise InferError("unprocessable", f"image {i}: {res}")
        probs.append(np.nan if res.probability is None else res.probability)
        labels.append(res.label.encode())
        if res.label == "uncertain":
            uncertain.append((blobs[i], res))
    n = len(blobs)
    return [Output("probability", "FP32", np.asarray(probs, np.float32).reshape(n, 1), [n, 1]),
            Output("label", "BYTES", labels, [n, 1])], n, uncertain  # fmt: skip


def model_stats(service: Service, name: str) -> dict[str, Any]:
    """Triton-style statistics of one model (counts and nanoseconds)."""
    st = service.stats[name]

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
