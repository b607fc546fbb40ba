"""The shared HTTP pieces on their own: the body readers' refusals, the KServe JSON encoder."""

from __future__ import annotations

import asyncio
import json
import math
from unittest import mock

import numpy as np
import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from serving.http import HttpError, read_body, read_multipart
from serving.protocol import encode_response

pytestmark = pytest.mark.unit


def _request(headers: dict[str, str], exc: BaseException | None = None) -> web.Request:
    """A POST whose body stream fails with ``exc`` when read (as aiohttp's does when it cannot
    undo the body's encoding), or holds a few bytes."""
    payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    if exc is not None:
        payload.set_exception(exc)
    else:
        payload.feed_data(b"abc")
        payload.feed_eof()
    return make_mocked_request("POST", "/v1/score", headers, payload=payload)


def _refusal(reader, headers: dict[str, str], exc: BaseException | None = None) -> HttpError:
    async def go() -> HttpError:
        with pytest.raises(HttpError) as err:
            await reader(_request(headers, exc))
        return err.value

    return asyncio.run(go())


def _read_multipart(request: web.Request):
    return read_multipart(request, 4, 1 << 20, 5.0)


@pytest.mark.parametrize("reader", [read_body, _read_multipart], ids=["body", "multipart"])
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "GZIP", "identity, gzip"])
def test_a_compressed_body_is_refused_before_it_is_read(reader, coding):
    # the stream would fail if read: the refusal must come first
    err = _refusal(
        reader,
        {"Content-Encoding": coding, "Content-Type": "multipart/form-data; boundary=x"},
        AssertionError("the body was read"),
    )
    assert err.status == 415
    assert err.reason == f"Content-Encoding {coding} is not accepted: send the body uncompressed"


@pytest.mark.parametrize("reader", [read_body, _read_multipart], ids=["body", "multipart"])
def test_a_body_aiohttp_cannot_decode_is_a_400(reader):
    err = _refusal(
        reader,
        {"Content-Type": "multipart/form-data; boundary=x"},
        web.RequestPayloadError("Can not decode content-encoding: gzip"),
    )
    assert err.status == 400 and "Can not decode content-encoding: gzip" in err.reason


@pytest.mark.parametrize("coding", [None, "", "identity", "Identity"])
def test_an_uncompressed_body_is_read(coding):
    async def go() -> bytes:
        return await read_body(_request({} if coding is None else {"Content-Encoding": coding}))

    assert asyncio.run(go()) == b"abc"


def _strict(body: bytes) -> dict:
    def refuse(name: str):
        raise AssertionError(f"{name} is not JSON")

    return json.loads(body, parse_constant=refuse)


def test_non_finite_floats_are_json_null_and_raw_in_binary():
    values = np.array([[np.nan], [0.25], [np.inf], [-np.inf]], np.float32)
    outputs = [("p32", "FP32", values, [4, 1]), ("p64", "FP64", values.astype(np.float64), [4, 1]),
               ("n", "INT32", np.array([1, 2], np.int32), [2])]  # fmt: skip
    body, headers = encode_response("m", "1", None, outputs, set())
    assert headers["Content-Type"] == "application/json"
    out = _strict(body)["outputs"]
    assert out[0]["data"] == out[1]["data"] == [None, 0.25, None, None]
    assert out[2]["data"] == [1, 2]
    assert math.isnan(np.array(out[0]["data"], np.float32)[0])  # what tritonclient reads back
    body, headers = encode_response("m", "1", None, outputs[:1], {"p32"})
    head = int(headers["Inference-Header-Content-Length"])
    _strict(body[:head])
    raw = np.frombuffer(body[head:], np.float32)
    assert math.isnan(raw[0]) and raw[1] == 0.25 and np.isinf(raw[2:]).all()


def test_the_v1_json_responses_write_non_finite_numbers_as_null():
    """/v1 bodies (``json_response``) are JSON every parser reads: Python's json writes a bare
    NaN unless told not to, and one hidden in a verdict's details would break a strict client."""
    from serving.http import json_response

    payload = {"probability": float("nan"), "ok": 0.5, "nested": [{"x": float("inf")}, (1, -1e999)]}
    res = json_response(200, payload)
    assert _strict(res.body) == {"probability": None, "ok": 0.5, "nested": [{"x": None}, [1, None]]}
    assert _strict(json_response(200, {"a": 1.0, "b": "c"}).body) == {"a": 1.0, "b": "c"}


def test_infer_parameters_are_read_as_triton_reads_them():
    """binary_data_output is the default for outputs not listed (it overrode a listed output's
    own choice); "false" as a string was true; a numeric id was echoed as text; a
    classification request was ignored (floats came back where "score:index" strings are
    parsed)."""
    from serving.protocol import ProtocolError, parse_request

    def body(**extra) -> bytes:
        req = {"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
        return json.dumps({**req, **extra}).encode()

    listed = {"outputs": [{"name": "logits"}], "parameters": {"binary_data_output": True}}
    req = parse_request(body(**listed), None)
    assert not req.binary_all and req.binary_outputs == set()
    assert parse_request(body(parameters={"binary_data_output": True}), None).binary_all
    own = [{"name": "logits", "parameters": {"binary_data": True}}]
    assert parse_request(body(outputs=own), None).binary_outputs == {"logits"}
    assert parse_request(body(id="a-1"), None).id == "a-1"
    for bad, message in (
        ({"parameters": {"binary_data_output": "false"}}, "'binary_data_output' must be true"),
        ({"outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]}, "'binary_data'"),
        ({"id": 123}, "'id' must be a string"),
        ({"outputs": [{"name": "logits", "parameters": {"classification": 1}}]},
         "classification extension is not served"),
    ):  # fmt: skip
        with pytest.raises(ProtocolError, match=message):
            parse_request(body(**bad), None)


def _body_request(headers: dict[str, str], data: bytes) -> web.Request:
    payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(data)
    payload.feed_eof()
    return make_mocked_request("POST", "/v2/models/m/infer", headers, payload=payload)


def test_the_infer_body_may_come_gzip_or_deflate_and_inflates_within_the_limit():
    """tritonclient's request_compression_algorithm was refused with 415 (Triton takes it);
    inflating stops at the byte limit, so a gzip bomb costs no memory."""
    import gzip
    import zlib

    def read(coding: str, data: bytes, inflate: int = 1000):
        async def go():
            return await read_body(
                _body_request({"Content-Encoding": coding}, data), inflate=inflate
            )

        return asyncio.run(go())

    text = b'{"inputs": []}' * 20
    assert read("gzip", gzip.compress(text)) == text
    assert read("deflate", zlib.compress(text)) == text
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert read("deflate", raw.compress(text) + raw.flush()) == text  # headerless deflate
    for coding, data, status, reason in (
        ("gzip", gzip.compress(bytes(10_000_000)), 413, "inflates past 1000 bytes"),
        ("gzip", gzip.compress(text)[:-12], 400, "ends before its stream does"),
        ("gzip", b"not gzip at all", 400, "malformed gzip body"),
        ("br", b"x", 415, "or as gzip / deflate"),
    ):
        with pytest.raises(HttpError) as err:
            read(coding, data)
        assert err.value.status == status and reason in err.value.reason, err.value.reason
    assert err.value.headers == {"Accept-Encoding": "gzip, deflate"}
