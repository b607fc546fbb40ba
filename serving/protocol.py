"""KServe v2 / Open Inference Protocol as Triton speaks it, including the binary extension.

Requests: a JSON header ``{id?, parameters?, inputs: [{name, shape, datatype, parameters?,
data?}], outputs?: [{name, parameters?}]}``, optionally followed by raw tensors (the
``Inference-Header-Content-Length`` header gives the JSON's length; each binary input names
its size in ``parameters.binary_data_size``). BYTES elements are a 4-byte little-endian length
and the bytes. Responses mirror this; outputs asked with ``binary_data: true`` (or all, with
``binary_data_output``) are sent raw after the JSON. JSON has no NaN or infinity: in JSON data
such a float is ``null`` (which tritonclient's ``as_numpy`` reads back as NaN), in binary data
it stays as it is.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.methods.base import json_safe

__all__ = [
    "DTYPES",
    "InferRequest",
    "ProtocolError",
    "Tensor",
    "binary_tensor",
    "check_output_parameters",
    "check_shape",
    "count_elements",
    "decode_bytes_tensor",
    "encode_bytes_tensor",
    "encode_response",
    "json_tensor",
    "parse_request",
]

HEADER = "Inference-Header-Content-Length"
DTYPES: dict[str, np.dtype | None] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": None,
}
_MAX_ELEMENTS = 1 << 28


class ProtocolError(ValueError):
    """A malformed request; the message is returned to the client in ``{"error": ...}``."""


@dataclass(frozen=True)
class Tensor:
    """One input of a request: its name, datatype, shape and value (a numpy array, or the
    list of byte strings of a BYTES tensor)."""

    name: str
    datatype: str
    shape: list[int]
    value: np.ndarray | list[bytes]


@dataclass
class InferRequest:
    id: str | None
    tensors: dict[str, Tensor]
    outputs: list[str] | None = None  # None: all outputs
    binary_outputs: set[str] = field(default_factory=set)
    binary_all: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> dict[str, np.ndarray | list[bytes]]:
        return {name: t.value for name, t in self.tensors.items()}

    @property
    def datatypes(self) -> dict[str, str]:
        return {name: t.datatype for name, t in self.tensors.items()}


def encode_bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_bytes_tensor(raw: bytes, count: int) -> list[bytes]:
    items, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise ProtocolError("BYTES tensor is truncated (missing a length prefix)")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ProtocolError("BYTES tensor is truncated (an element is shorter than its length)")
        items.append(raw[pos : pos + n])
        pos += n
    if pos != len(raw):
        raise ProtocolError(f"BYTES tensor has {len(raw) - pos} trailing bytes")
    return items


def count_elements(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_ELEMENTS for d in value
    ):
        raise ProtocolError(
            f"input {name!r}: shape must be a list of integers within 0..{_MAX_ELEMENTS}"
        )
    if count_elements(value) > _MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: too many elements")
    return value


def _flatten(data: Any) -> list:
    if isinstance(data, list):
        out: list = []
        for item in data:
            out.extend(_flatten(item) if isinstance(item, list) else [item])
        return out
    return [data]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} parameters must be a JSON object")
    return value


def binary_tensor(name: str, dtype: str, shape: list[int], raw: bytes) -> Tensor:
    count = count_elements(shape)
    if dtype == "BYTES":
        return Tensor(name, dtype, shape, decode_bytes_tensor(raw, count))
    expected = count * DTYPES[dtype].itemsize  # type: ignore[union-attr]
    if len(raw) != expected:
        raise ProtocolError(
            f"input {name!r}: {len(raw)} bytes for shape {shape} {dtype} (expected {expected})"
        )
    return Tensor(name, dtype, shape, np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape))


def json_tensor(name: str, dtype: str, shape: list[int], data: Any) -> Tensor:
    flat = _flatten(data)
    if len(flat) != count_elements(shape):
        raise ProtocolError(f"input {name!r}: {len(flat)} values for shape {shape}")
    if dtype == "BYTES":  # JSON carries BYTES elements as strings
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings")
        return Tensor(name, dtype, shape, [v.encode("utf-8") for v in flat])
    if not all(isinstance(v, int | float) for v in flat):
        raise ProtocolError(f"input {name!r}: {dtype} data must be numbers")
    try:
        value = np.asarray(flat, dtype=DTYPES[dtype]).reshape(shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"input {name!r}: data does not fit {dtype} ({exc})") from None
    return Tensor(name, dtype, shape, value)


def _load_header(head: bytes) -> dict:
    try:
        req = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ProtocolError(f"request header is not valid JSON ({reason})") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    return req


def check_batch(shape: list[int], name: str, max_batch: int | None) -> None:
    """Refuse a batch larger than the model takes before its tensor is built (a 10-million
    element BYTES tensor took 660 MB and seconds before the same refusal came later)."""
    if max_batch is not None and shape and shape[0] > max_batch:
        raise ProtocolError(
            f"input {name!r}: batch of {shape[0]} exceeds max_batch_size {max_batch}"
        )


def parse_request(
    body: bytes, header_length: int | None, max_batch: int | None = None
) -> InferRequest:
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(f"{HEADER} {header_length} does not fit a {len(body)}-byte body")
        head, binary = body[:header_length], body[header_length:]
    else:
        head, binary = body, b""
    req = _load_header(head)
    tensors: dict[str, Tensor] = {}
    pos = 0
    for spec in req["inputs"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError("every input needs a 'name'")
        name = spec["name"]
        dtype = spec.get("datatype")
        if dtype not in DTYPES:
            raise ProtocolError(f"input {name!r}: unknown datatype {dtype!r}")
        shape = check_shape(spec.get("shape"), name)
        check_batch(shape, name, max_batch)
        size = _parameters(spec.get("parameters"), f"input {name!r}").get("binary_data_size")
        if size is not None and "data" in spec:
            raise ProtocolError(f"input {name!r} has both data and binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"input {name!r}: binary_data_size must be an integer >= 0")
            if pos + size > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {size} exceeds the body")
            tensor = binary_tensor(name, dtype, shape, binary[pos : pos + size])
            pos += size
        elif "data" in spec:
            tensor = json_tensor(name, dtype, shape, spec["data"])
        else:
            raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
        if name in tensors:
            raise ProtocolError(f"input {name!r} given twice")
        tensors[name] = tensor
    if pos != len(binary):
        raise ProtocolError(f"{len(binary) - pos} bytes after the declared binary inputs")
    params = _parameters(req.get("parameters"), "request")
    outputs, binary_outputs = None, set()
    if req.get("outputs") is not None:
        if not isinstance(req["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for out in req["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise ProtocolError("every requested output needs a 'name'")
            outputs.append(out["name"])
            where = f"output {out['name']!r}"
            out_params = _parameters(out.get("parameters"), where)
            check_output_parameters(out_params, where)
            if _flag(out_params, "binary_data", where):
                binary_outputs.add(out["name"])
    if req.get("id") is not None and not isinstance(req["id"], str):  # Triton: 400 as well
        raise ProtocolError(f"'id' must be a string, got {req['id']!r}")
    return InferRequest(
        id=req.get("id"),
        tensors=tensors,
        outputs=outputs,
        binary_outputs=binary_outputs,
        # as Triton: the default for outputs not listed; a listed one has its own binary_data
        binary_all=_flag(params, "binary_data_output", "request") and outputs is None,
        parameters=params,
    )


def _flag(params: dict, key: str, where: str) -> bool:
    """A boolean parameter: absent is false; "false" (a string) is not true, it is refused."""
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}: parameter {key!r} must be true or false, got {value!r}")
    return value


def check_output_parameters(params: dict, where: str) -> None:
    """Triton's classification extension (``classification``: the top-k classes as
    "score:index" strings) is not served: refused, not ignored (the client would read floats
    where it parses strings)."""
    if "classification" in params:
        raise ProtocolError(
            f"{where}: the classification extension is not served here (the server's "
            "extensions: GET /v2); ask for the output without it"
        )


def _json_numbers(value: np.ndarray) -> list:
    """The elements as JSON numbers; a non-finite float (an abstained probability) as None."""
    flat = value.ravel()
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat.tolist()
    return json_safe(flat.tolist())


def encode_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: list[tuple[str, str, np.ndarray | list[bytes], list[int]]],
    binary: set[str],
) -> tuple[bytes, dict[str, str]]:
    """outputs: (name, datatype, value, shape). Returns (body, extra headers)."""
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request_id is not None:
        header["id"] = request_id
    blobs = []
    for name, dtype, value, shape in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": shape}
        if name in binary:
            raw = (
                encode_bytes_tensor(value)
                if dtype == "BYTES"
                else np.ascontiguousarray(value, DTYPES[dtype]).tobytes()
            )  # type: ignore[arg-type]
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif dtype == "BYTES":
            entry["data"] = [b.decode("utf-8", errors="replace") for b in value]  # type: ignore[union-attr]
        else:
            entry["data"] = _json_numbers(np.asarray(value))
        header["outputs"].append(entry)
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        HEADER: str(len(head)),
    }
