"""One description of each model the server exposes, rendered for every protocol.

The tensor model (``synthdetect_tiles``: FP32 tiles in, logits out) is described by the ONNX
sidecar's ``inputs`` and ``outputs``, written by ``export`` from the exported graph; the bytes
model (``synthdetect``: encoded image files in, calibrated probability and label out) wraps the
whole detector. From one ``ModelDescription`` come the KServe v2 model metadata, Triton's model
configuration (the JSON of ``/v2/models/{m}/config``, and the gRPC ``ModelConfig``) and the
``config.pbtxt`` of an exported Triton model repository, so none is spelled out by hand twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BYTES_MODEL",
    "TENSOR_MODEL",
    "ModelDescription",
    "TensorSpec",
    "bytes_model",
    "tensor_model",
]

BYTES_MODEL = "synthdetect"
TENSOR_MODEL = "synthdetect_tiles"
_TRITON_TYPES = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "INT64": "TYPE_INT64",
                 "BYTES": "TYPE_STRING"}  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe datatype (FP32, BYTES, ...)
    shape: tuple[int, ...]  # -1 for the batch dimension

    @property
    def dims(self) -> list[int]:
        """Triton's dims: the shape without the batch dimension."""
        return list(self.shape[1:])

    @property
    def triton_type(self) -> str:
        return _TRITON_TYPES[self.datatype]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelDescription:
    name: str
    platform: str  # KServe metadata platform
    backend: str  # Triton backend
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    version: str = "1"

    def metadata(self) -> dict[str, Any]:
        """KServe v2 model metadata (``GET /v2/models/{name}``)."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }

    def config(
        self, max_batch_size: int, max_queue_delay_us: int, gpu: bool, instances: int = 1
    ) -> dict[str, Any]:
        """Triton's model configuration as JSON (``GET /v2/models/{name}/config``)."""
        return {
            "name": self.name,
            "platform": self.platform if self.backend == "onnxruntime" else "",
            "backend": self.backend,
            "max_batch_size": max_batch_size,
            "input": [
                {
                    "name": t.name,
                    "data_type": t.triton_type,
                    "format": "FORMAT_NONE",
                    "dims": t.dims,
                }
                for t in self.inputs
            ],
            "output": [
                {"name": t.name, "data_type": t.triton_type, "dims": t.dims} for t in self.outputs
            ],
            "dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us},
            "instance_group": [
                {"name": self.name, "count": instances, "kind": "KIND_GPU" if gpu else "KIND_CPU"}
            ],
            "version_policy": {"latest": {"num_versions": 1}},
        }

    def pbtxt(
        self,
        max_batch_size: int,
        max_queue_delay_us: int,
        gpu: bool,
        instances: int = 1,
        extra: str = "",
    ) -> str:
        """The same configuration as Triton's ``config.pbtxt`` (a model repository's)."""

        def tensors(specs: tuple[TensorSpec, ...]) -> str:
            return ", ".join(
                f'{{ name: "{t.name}" data_type: {t.triton_type} dims: {json.dumps(t.dims)} }}'
                for t in specs
            )

        return (
            f'name: "{self.name}"\n'
            f'backend: "{self.backend}"\n'
            f"max_batch_size: {max_batch_size}\n"
            f"input [ {tensors(self.inputs)} ]\n"
            f"output [ {tensors(self.outputs)} ]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n"
            f"instance_group [ {{ count: {instances} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]\n"
            f"{extra}"
        )


def _specs(entries: list[dict], what: str) -> tuple[TensorSpec, ...]:
    try:
        return tuple(TensorSpec(e["name"], e["datatype"], tuple(e["shape"])) for e in entries)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"model sidecar: malformed {what} ({exc})") from None


def tensor_model(sidecar: dict[str, Any], name: str = TENSOR_MODEL) -> ModelDescription:
    """The ONNX graph as exported: its inputs and outputs from the sidecar (checked whole:
    a Triton repository copies it for clients)."""
    from detector.engine import check_sidecar

    try:
        check_sidecar(sidecar)
    except ValueError as exc:
        raise ValueError(f"model sidecar: {exc}") from None
    return ModelDescription(
        name,
        "onnxruntime_onnx",
        "onnxruntime",
        _specs(sidecar.get("inputs") or [], "inputs"),
        _specs(sidecar.get("outputs") or [], "outputs"),
    )


def bytes_model(name: str = BYTES_MODEL) -> ModelDescription:
    """The whole detector: encoded image files in, calibrated P(generated) and label out."""
    return ModelDescription(
        name,
        "synthdetect",
        "synthdetect",
        (TensorSpec("image", "BYTES", (-1, 1)),),
        (TensorSpec("probability", "FP32", (-1, 1)), TensorSpec("label", "BYTES", (-1, 1))),
    )
