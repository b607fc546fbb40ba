"""The server against real clients: tritonclient, raw HTTP, concurrency, bad input, overload."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import json
import struct
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.app import HttpConfig
from serving.batcher import BatcherConfig
from tests.imagefiles import bomb_png
from training import metadata_writers as P

pytestmark = pytest.mark.integration


def request(
    url: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    method: str | None = None,
):
    req = urllib.request.Request(
        f"http://{url}{path}", data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def jpeg(seed: int, size: int = 96) -> bytes:
    return P.encode(P.synthetic_scene(seed, size, size + 16), "JPEG")


def tiny_png(seed: int = 1) -> bytes:
    """16x16: too small for the model, so every method abstains (uncertain, no probability)."""
    return P.encode(P.synthetic_scene(seed, 16, 16), "PNG")


# --- Triton protocol through tritonclient -------------------------------------------------------


def test_health_and_metadata(server):
    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "synthdetect" and "binary_tensor_data" in meta["extensions"]
    for model in ("synthdetect", "synthdetect_tiles"):
        assert client.is_model_ready(model)
        md = client.get_model_metadata(model)
        assert md["name"] == model and md["versions"] == ["1"]
    cfg = client.get_model_config("synthdetect_tiles")
    assert cfg["max_batch_size"] == 16 and cfg["input"][0]["dims"] == [3, 64, 64]
    assert "dynamic_batching" in cfg
    # the extensions it does not serve answer with a reason tritonclient shows, not "Not Found"
    for call, name in (
        (client.get_model_repository_index, "model repository"),
        (client.get_system_shared_memory_status, "system shared-memory"),
        (client.get_log_settings, "logging"),
    ):
        with pytest.raises(InferenceServerException, match=f"the {name} extension is not served"):
            call()


@pytest.mark.parametrize(
    "binary, compression", [(False, None), (True, None), (True, "gzip"), (False, "deflate")]
)
def test_tensor_model_matches_the_engine(server, binary, compression):
    """Also with tritonclient's request_compression_algorithm (it was refused with 415)."""
    client = httpclient.InferenceServerClient(server.url)
    tiles = np.random.default_rng(3).normal(size=(5, 3, 64, 64)).astype(np.float32)
    inp = httpclient.InferInput("images", list(tiles.shape), "FP32")
    inp.set_data_from_numpy(tiles, binary_data=binary)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer(
        "synthdetect_tiles", [inp], outputs=[out], request_compression_algorithm=compression
    )
    logits = result.as_numpy("logits")
    assert logits.shape == (5, 1)
    expected = server.service.bundle.engine._run(tiles)  # the engine behind the batcher
    np.testing.assert_allclose(logits.ravel(), expected, atol=1e-5)


def test_bytes_model_scores_encoded_images(server):
    client = httpclient.InferenceServerClient(server.url)
    images = [
        jpeg(1),
        P.encode(
            P.synthetic_scene(2, 80, 80), "PNG", png_text={"parameters": P.a1111_parameters()}
        ),
    ]
    data = np.array([[b] for b in images], dtype=np.object_)
    inp = httpclient.InferInput("image", [2, 1], "BYTES")
    inp.set_data_from_numpy(data, binary_data=True)
    result = client.infer("synthdetect", [inp])
    probs = result.as_numpy("probability").ravel()
    labels = [x.decode() for x in result.as_numpy("label").ravel()]
    assert probs.shape == (2,) and labels[1] == "generated" and probs[1] == pytest.approx(0.99)
    _, _, body = request(server.url, "/v1/score", images[0])
    assert json.loads(body)["verdict"]["probability"] == pytest.approx(float(probs[0]), abs=1e-6)


def test_an_abstained_probability_is_json_null_and_nan_in_binary(server):
    """No probability is NaN in the tensor; JSON has no NaN (a strict parser refused the
    response), so JSON carries null, which tritonclient reads back as NaN."""
    blob = struct.pack("<I", len(tiny_png())) + tiny_png()
    image = {"name": "image", "shape": [1, 1], "datatype": "BYTES",
             "parameters": {"binary_data_size": len(blob)}}  # fmt: skip
    body, headers = _binary_infer("synthdetect", {"inputs": [image]}, blob)
    status, _, out = request(server.url, "/v2/models/synthdetect/infer", body, headers)

    def refuse(name: str):
        raise AssertionError(f"{name} is not JSON")

    outputs = {o["name"]: o for o in json.loads(out, parse_constant=refuse)["outputs"]}
    assert status == 200 and outputs["probability"]["data"] == [None]
    assert outputs["label"]["data"] == ["uncertain"]
    client = httpclient.InferenceServerClient(server.url)
    data = np.array([[tiny_png()]], dtype=np.object_)
    for binary in (False, True):
        inp = httpclient.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(data, binary_data=True)
        wanted = [httpclient.InferRequestedOutput("probability", binary_data=binary)]
        probs = client.infer("synthdetect", [inp], outputs=wanted).as_numpy("probability")
        assert probs.shape == (1, 1) and np.isnan(probs).all()


def test_model_config_parses_as_triton_protobuf(server):
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    _, _, body = request(server.url, "/v2/models/synthdetect_tiles/config")
    config = json_format.Parse(body, model_config_pb2.ModelConfig())
    assert config.max_batch_size == 16 and config.input[0].data_type == model_config_pb2.TYPE_FP32


# --- /v1/score ------------------------------------------------------------------------------


def test_score_single_and_multipart(server):
    status, _, body = request(server.url, "/v1/score", jpeg(4), {"Content-Type": "image/jpeg"})
    verdict = json.loads(body)["verdict"]
    assert status == 200 and verdict["methods"]["model"]["probability"] is not None
    status, _, _ = request(server.url, "/v1/score", jpeg(4), {"Content-Encoding": "identity"})
    assert status == 200  # the one Content-Encoding taken: none
    boundary = "XyZ"
    parts = []
    for name, data in (("a.jpg", jpeg(5)), ("b.txt", b"not an image")):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, _, out = request(
        server.url, "/v1/score", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    results = json.loads(out)["results"]
    assert status == 200 and [r["filename"] for r in results] == ["a.jpg", "b.txt"]
    assert "verdict" in results[0] and "not a recognized image" in results[1]["error"]


def test_score_method_selection_and_prompt(server):
    png = P.encode(
        P.synthetic_scene(6, 64, 64),
        "PNG",
        png_text={"parameters": P.a1111_parameters(prompt="blue fox")},
    )
    _, _, body = request(server.url, "/v1/score?methods=generator_params&include_prompt=true", png)
    verdict = json.loads(body)["verdict"]
    assert list(verdict["methods"]) == ["generator_params"]
    assert verdict["methods"]["generator_params"]["details"]["prompt"] == "blue fox"
    status, _, body = request(server.url, "/v1/score?methods=nope", png)
    assert status == 400 and "unknown method" in json.loads(body)["error"]
    status, _, body = request(server.url, "/v1/score?methods=,", png)
    assert status == 400 and "methods is empty" in json.loads(body)["error"]
    status, _, body = request(server.url, "/v1/score?include_prompt=maybe", png)
    assert status == 400 and "include_prompt must be true or false" in json.loads(body)["error"]
    _, _, body = request(server.url, "/v1/score?methods=generator_params&include_prompt=0", png)
    assert "prompt" not in json.loads(body)["verdict"]["methods"]["generator_params"]["details"]


def test_200_concurrent_requests_each_get_their_own_score(server):
    images = [jpeg(100 + i, 64 + 8 * (i % 5)) for i in range(40)]
    alone = [
        json.loads(request(server.url, "/v1/score", img)[2])["verdict"]["probability"]
        for img in images
    ]
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        jobs = [pool.submit(request, server.url, "/v1/score", images[i % 40]) for i in range(200)]
        results = [(i, j.result()) for i, j in enumerate(jobs)]
    for i, (status, _, body) in results:
        assert status == 200
        assert json.loads(body)["verdict"]["probability"] == pytest.approx(alone[i % 40], abs=1e-5)
    _, _, metrics = request(server.url, "/metrics")
    text = metrics.decode()
    assert "synthdetect_batch_tiles_bucket" in text and "synthdetect_request_seconds_bucket" in text
    batches = [
        line for line in text.splitlines() if line.startswith("synthdetect_batch_tiles_count")
    ]
    sums = [line for line in text.splitlines() if line.startswith("synthdetect_batch_tiles_sum")]
    assert float(sums[0].split()[-1]) / float(batches[0].split()[-1]) > 1.5, "tiles were batched"


# --- bad input: 4xx JSON with a reason, and the server keeps serving ------------------------------


def _binary_infer(
    model: str, header: dict, blob: bytes, declared: int | None = None
) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + blob, {
        "Inference-Header-Content-Length": str(len(head) if declared is None else declared)
    }


BAD = {
    "garbage bytes": ("/v1/score", b"\x00\x01garbage" * 10, {}, 422, "not a recognized image"),
    "truncated jpeg": ("/v1/score", jpeg(7)[:300], {}, 422, "truncated"),
    "bomb": ("/v1/score", bomb_png(20_000), {}, 422, "too many pixels"),
    "empty body": ("/v1/score", b"", {}, 400, "empty body"),
    "not json": ("/v2/models/synthdetect_tiles/infer", b"{nope", {}, 400, "not valid JSON"),
    "unknown model": ("/v2/models/gpt/infer", b"{}", {}, 404, "unknown model"),
    "unknown version": ("/v2/models/synthdetect_tiles/versions/7/infer", b"{}", {}, 404, "no version"),
    "wrong shape": ("/v2/models/synthdetect_tiles/infer",
                    json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}]}).encode(),
                    {}, 400, "must have shape"),
    "wrong dtype": ("/v2/models/synthdetect_tiles/infer",
                    json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "INT32", "data": [0] * 12288}]}).encode(),
                    {}, 400, "must be FP32"),
    "count mismatch": ("/v2/models/synthdetect_tiles/infer",
                       json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [0.0] * 5}]}).encode(),
                       {}, 400, "5 values"),
    "bytes not bytes": ("/v2/models/synthdetect/infer",
                        json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}).encode(),
                        {}, 400, "must be BYTES"),
    "bad image in bytes": ("/v2/models/synthdetect/infer",
                           *_binary_infer("synthdetect", {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 12}}]},
                                          struct.pack("<I", 8) + b"notimage"), 422, "image 0"),
    "bad header length": ("/v2/models/synthdetect_tiles/infer", *_binary_infer("t", {"inputs": []}, b"", declared=9999), 400, "does not fit"),
    "binary size too big": ("/v2/models/synthdetect_tiles/infer",
                            *_binary_infer("t", {"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32", "parameters": {"binary_data_size": 49152}}]}, b"\x00" * 100),
                            400, "exceeds the body"),
    "unknown route": ("/v3/whatever", b"x", {}, 404, "Not Found"),
    # Triton's extensions this server lacks name themselves (tritonclient shows the reason)
    "repository load": ("/v2/repository/models/synthdetect/load", b"{}", {}, 404,
                        "the model repository extension is not served here"),
    "shm register": ("/v2/systemsharedmemory/region/r0/register", b"{}", {}, 404,
                     "the system shared-memory extension is not served here"),
    "trace": ("/v2/models/synthdetect/trace/setting", b"{}", {}, 404, "the trace extension"),
}  # fmt: skip


def _infer_json(model: str, inputs: list, **extra) -> tuple[str, bytes, dict]:
    return f"/v2/models/{model}/infer", json.dumps({"inputs": inputs, **extra}).encode(), {}


def _bytes_input(data, **extra) -> dict:
    return {"name": "image", "shape": [1], "datatype": "BYTES", "data": data, **extra}


# Requests that answered 500 with a traceback (issue 16, a hostile client's findings).
BAD.update({
    "100k-deep json": ("/v2/models/synthdetect/infer", b"[" * 100_000 + b"]" * 100_000, {}, 400,
                       "nested too deeply"),
    "int64 overflow": (*_infer_json("synthdetect_tiles", [{"name": "images", "shape": [1], "datatype": "INT64", "data": [2**70]}]),
                       400, "does not fit INT64"),
    "uint8 negative": (*_infer_json("synthdetect_tiles", [{"name": "images", "shape": [1], "datatype": "UINT8", "data": [-1]}]),
                       400, "does not fit UINT8"),
    "fp32 string": (*_infer_json("synthdetect_tiles", [{"name": "images", "shape": [1], "datatype": "FP32", "data": ["1"]}]),
                    400, "must be numbers"),
    **{f"bytes data {v!r}": (*_infer_json("synthdetect", [_bytes_input(v)]), 400, "BYTES data must be strings")
       for v in (None, -1, 1.5, {}, 10**12)},
    "request parameters": (*_infer_json("synthdetect", [_bytes_input(["x"])], parameters=5), 400,
                           "request parameters must be a JSON object"),
    "input parameters": (*_infer_json("synthdetect", [_bytes_input(["x"], parameters=[1])]), 400,
                         "input 'image' parameters must be a JSON object"),
    "output parameters": (*_infer_json("synthdetect", [_bytes_input(["x"])], outputs=[{"name": "label", "parameters": "x"}]),
                          400, "output 'label' parameters must be a JSON object"),
    "outputs not a list": (*_infer_json("synthdetect", [_bytes_input(["x"])], outputs={"name": "label"}),
                           400, "'outputs' must be a list"),
    "binary shape 2**62": ("/v2/models/synthdetect_tiles/infer",
                           *_binary_infer("t", {"inputs": [{"name": "images", "shape": [0, 2**62], "datatype": "FP32", "parameters": {"binary_data_size": 0}}]}, b""),
                           400, "shape must be a list of integers within"),
    "binary size not int": ("/v2/models/synthdetect_tiles/infer",
                            *_binary_infer("t", {"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": "4"}}]}, b"\x00" * 4),
                            400, "binary_data_size must be an integer"),
    **{f"multipart boundary {name}": ("/v1/score", b"--abc\r\n\r\n", {"Content-Type": ctype}, 400, "malformed multipart body")
       for name, ctype in (("absent", "multipart/form-data"), ("empty", "multipart/form-data; boundary="),
                           ("5000 chars", "multipart/form-data; boundary=" + "x" * 5000))},
})  # fmt: skip


# Inputs Triton refuses and this server took (a fresh-user audit): a BYTES tensor shaped other than
# the model's [-1, 1], a tensor with both inline data and a binary part, an empty batch.
_NOT_DECODED = "not an image, never decoded"
BAD.update({
    **{f"bytes shape {shape}": (*_infer_json("synthdetect", [{"name": "image", "shape": shape, "datatype": "BYTES", "data": [_NOT_DECODED]}]),
                                400, "must have shape [N, 1]")
       for shape in ([1], [1, 1, 1])},
    "data and binary part": ("/v2/models/synthdetect/infer",
                             *_binary_infer("synthdetect", {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": ["x"], "parameters": {"binary_data_size": 5}}]},
                                            struct.pack("<I", 1) + b"x"), 400, "has both data and binary_data_size"),
    "empty bytes batch": (*_infer_json("synthdetect", [{"name": "image", "shape": [0, 1], "datatype": "BYTES", "data": []}]), 400, "batch of 0"),
    "empty tiles batch": (*_infer_json("synthdetect_tiles", [{"name": "images", "shape": [0, 3, 64, 64], "datatype": "FP32", "data": []}]), 400, "batch of 0"),
})  # fmt: skip

# A compressed body: a 500 when it did not inflate, and inflated past --max-body-mb when it did.
_MULTIPART = {"Content-Type": "multipart/form-data; boundary=XyZ"}
# A part that is itself multipart/mixed (RFC 2388's way to send several files; RFC 7578 drops it)
_NESTED = (
    b'--XyZ\r\nContent-Disposition: form-data; name="files"\r\n'
    b"Content-Type: multipart/mixed; boundary=in\r\n\r\n"
    b'--in\r\nContent-Disposition: file; filename="a.jpg"\r\n\r\nabc\r\n--in--\r\n'
    b"\r\n--XyZ--\r\n"
)
BAD["nested multipart"] = (
    "/v1/score",
    _NESTED,
    _MULTIPART,
    400,
    "nested multipart parts are not read",
)
BAD.update(
    {
        f"{what} on {where}": (
            path,
            body,
            {**headers, "Content-Encoding": coding},
            415,
            f"Content-Encoding {coding} is not accepted",
        )
        for what, coding, body in (
            ("bad gzip", "gzip", b"not gzip"),
            ("bad deflate", "deflate", b"no"),
            ("bad br", "br", b"not br"),
            ("gzip of 1 MB", "gzip", gzip.compress(b"\0" * 1_000_000)),
        )
        for where, path, headers in (
            ("score", "/v1/score", {}),
            ("multipart", "/v1/score", _MULTIPART),
            ("infer", "/v2/models/synthdetect/infer", {}),
        )
        # KServe infer takes gzip and deflate (tritonclient's request compression, as Triton)
        if where != "infer" or coding == "br"
    }
)
_INFER = "/v2/models/synthdetect/infer"
BAD.update({
    "bad gzip on infer": (_INFER, b"not gzip", {"Content-Encoding": "gzip"}, 400,
                          "malformed gzip body"),
    "bad deflate on infer": (_INFER, b"no", {"Content-Encoding": "deflate"}, 400,
                             "malformed deflate body"),
    # a gzip bomb: inflated in steps and stopped at the body limit
    "gzip past the body limit on infer": (
        _INFER, gzip.compress(b"\0" * (HttpConfig().max_body_bytes + 1)),
        {"Content-Encoding": "gzip"}, 413, "inflates past"),
})  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_4xx_json_and_the_server_keeps_serving(server, case):
    path, body, headers, code, reason = BAD[case]
    status, resp_headers, out = request(server.url, path, body, headers, method="POST")
    assert status == code, out
    assert resp_headers["Content-Type"].startswith("application/json")
    assert reason in json.loads(out)["error"]
    assert request(server.url, "/v1/score", jpeg(8))[0] == 200


def _raw(server, payload: bytes, half_close: bool = True) -> bytes:
    import socket

    host, port = server.url.split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        s.settimeout(20)
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
def test_body_shorter_than_its_content_length(make_server):
    live = make_server(HttpConfig(body_timeout_s=1.0, access_log=False))
    reply = _raw(
        live,
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nonly-this",
        half_close=False,
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply[:200]
    assert "not received" in json.loads(body)["error"]
    assert request(live.url, "/v1/score", jpeg(9))[0] == 200


def test_unparseable_content_length(server):
    # Rejected by the HTTP parser itself, before any handler: a plain 400, connection closed.
    reply = _raw(
        server,
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nhello",
        half_close=False,
    )
    assert reply.split(b" ")[1] == b"400"
    assert request(server.url, "/v1/score", jpeg(9))[0] == 200


def test_huge_body_is_413(make_server):
    live = make_server(HttpConfig(max_body_bytes=10_000, access_log=False))
    status, _, body = request(live.url, "/v1/score", b"\xff" * 20_000)
    assert status == 413 and "exceeds" in json.loads(body)["error"]


def test_api_keys_and_rate_limit(make_server):
    live = make_server(
        HttpConfig(api_keys=("s3cret", "other"), rate_limit=2, rate_burst=2, access_log=False)
    )
    assert request(live.url, "/v2/health/live")[0] == 200  # probes stay open
    status, _, body = request(live.url, "/v2")
    assert status == 401 and json.loads(body)["error"] == "missing or invalid API key"
    assert request(live.url, "/v2", headers={"Authorization": "Bearer s3cre"})[0] == 401
    ok = {"Authorization": "Bearer s3cret"}
    codes = [request(live.url, "/v2", headers=ok)[0] for _ in range(5)]
    assert codes[:2] == [200, 200] and 429 in codes
    assert request(live.url, "/v2", headers={"X-API-Key": "other"})[0] == 200  # its own bucket
    assert request(live.url, "/v2", headers={"Authorization": "bearer other"})[0] == 200  # any case
    for bad in (b"X-API-Key: \xff\xfe", b"Authorization: Bearer \xc3"):  # not UTF-8: a bad key
        reply = _raw(
            live,
            b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + bad + b"\r\n\r\n",
            half_close=False,
        )
        assert reply.split(b" ")[1] == b"401", reply[:200]


def test_overload_answers_503_fast_and_recovers(make_server):
    live = make_server(
        batcher=BatcherConfig(max_batch_size=1, max_queue_delay_us=0, max_queue_tiles=2), workers=64
    )
    images = [jpeg(200 + i, 64) for i in range(8)]  # one tile each (the smallest judged)
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda i: request(live.url, "/v1/score", images[i % 8]), range(96)))
    codes = [r[0] for r in results]
    assert 503 in codes and 200 in codes
    assert all("overloaded" in json.loads(r[2])["error"] for r in results if r[0] == 503)
    assert request(live.url, "/v1/score", images[0])[0] == 200


@pytest.mark.parametrize("processes", [1, 2])
def test_load_generator_counts_every_request(server, processes):
    """The benchmarks' load generator, in one process or spread over two, sends exactly its
    request budget and counts each answer."""
    from benchmarks.loadgen import run_load, tiles_payload

    payload = tiles_payload("synthdetect_tiles", 2, server.service.input_size, variants=2)
    res = run_load(
        f"http://{server.url}", payload, 4, requests=40, seconds=60, warmup=2, processes=processes
    )
    assert res.requests == 40 and res.errors == 0 and res.status_codes == {"200": 40}
    assert res.items_per_s > 0 and 0 < res.p50_ms <= res.p99_ms
    with pytest.raises(ConnectionError, match=r"nothing answers at http://127\.0\.0\.1:9"):
        run_load(
            "http://127.0.0.1:9", payload, 2, requests=4, seconds=10, warmup=0, processes=processes
        )


def test_malformed_http_is_a_400_and_one_log_line(server, caplog):
    """aiohttp rejects a malformed message before any handler runs: the client gets a 400
    with the parser's reason, the log one line instead of a traceback."""
    import logging
    import socket

    host, port = server.url.split(":")
    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)  # the server logs from its own thread
    assert reply.startswith(b"HTTP/1.0 400") and b"Content-Length" in reply
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.exc_info is None for r in records)
    assert records[0].getMessage().startswith("malformed HTTP request (400): Invalid character")


# --- known-image memory -----------------------------------------------------------------------


def test_memory_db_makes_confirmed_images_decide(make_server, tmp_path):
    from detector.image import decode
    from detector.memory import MemoryStore, hash_pixels

    db = tmp_path / "memory.sqlite"
    photo = jpeg(11, 160)
    with MemoryStore(db) as store:
        img = decode(photo)
        store.add(hash_pixels(img.pixels, img.data), "camera", "erin", note="staff photo")
    live = make_server(memory_db=db)
    assert "known_image" in live.service.default_methods
    status, _, body = request(live.url, "/v1/score", photo)
    verdict = json.loads(body)["verdict"]
    assert status == 200 and verdict["label"] == "camera"
    assert verdict["decided_by"] == "known_image" and "by erin" in verdict["summary"]
    # a record written after the server started (another process, the CLI) is found at once
    other = jpeg(12, 160)
    with MemoryStore(db) as store:
        img = decode(other)
        store.add(hash_pixels(img.pixels, img.data), "generated", "frank")
    _, _, body = request(live.url, "/v1/score", other)
    verdict = json.loads(body)["verdict"]
    assert verdict["label"] == "generated" and verdict["decided_by"] == "known_image"
    _, _, body = request(live.url, "/v1/score", jpeg(13, 160))
    assert json.loads(body)["verdict"]["decided_by"] != "known_image"


def test_score_heatmap(server):
    import base64
    import io

    from PIL import Image

    status, _, body = request(server.url, "/v1/score?heatmap=true", jpeg(21, 200))
    rec = json.loads(body)
    assert status == 200 and rec["verdict"]["label"] in ("generated", "camera", "uncertain")
    tiles = rec["heatmap"]["tiles"]
    assert len(tiles) == 4 * 4 and all(0 <= t["probability"] <= 1 for t in tiles)  # 64 px tiles
    png = Image.open(io.BytesIO(base64.b64decode(rec["heatmap"]["overlay_png_base64"])))
    assert png.size == (216, 200)
    _, _, body = request(server.url, "/v1/score", jpeg(21, 200))
    assert "heatmap" not in json.loads(body)
    status, _, body = request(server.url, "/v1/score?heatmap=maybe", jpeg(21, 200))
    assert status == 400 and "heatmap must be true or false" in json.loads(body)["error"]
    status, _, body = request(server.url, "/v1/score?heatmap=true&methods=c2pa", jpeg(21, 200))
    assert status == 400 and "heatmap=true needs the model method" in json.loads(body)["error"]
    status, _, body = request(server.url, "/v1/score?methods=model,model,c2pa", jpeg(21, 200))
    methods = [e["method"] for e in json.loads(body)["verdict"]["evidence"]]
    assert status == 200 and methods.count("model") == 1  # a repeated name runs once


def _lost_gpu(tiles):
    raise RuntimeError("CUDA error: device lost")


@contextlib.contextmanager
def _engine(live, run):
    """The live server's batcher runs ``run`` instead of its engine for the block."""
    working = live.service.batcher._run
    live.service.batcher._run = run
    try:
        yield
    finally:
        live.service.batcher._run = working


def test_failing_engine_gives_degraded_verdicts_not_500(make_server):
    live = make_server()
    with _engine(live, _lost_gpu):
        status, _, body = request(live.url, "/v1/score", jpeg(31, 128))
    verdict = json.loads(body)["verdict"]
    assert status == 200 and verdict["degraded"] is True
    assert verdict["degraded_reasons"] == ["model: RuntimeError: CUDA error: device lost"]
    assert verdict["methods"]["model"]["abstained"] and "exif_hints" in verdict["methods"]
    _, _, metrics = request(live.url, "/metrics")
    assert (
        'synthdetect_degraded_verdicts_total{error="RuntimeError",method="model"} 1.0'
        in metrics.decode()
    )
    status, _, body = request(live.url, "/v1/score", jpeg(31, 128))  # the engine is back
    assert status == 200 and json.loads(body)["verdict"]["degraded"] is False


def test_a_process_is_not_ready_until_every_server_process_is_up(server):
    """serve --processes starts its processes one by one: the first answered ready alone, so
    a load balancer sent it the whole traffic while the others loaded."""
    peers = {"up": False}
    server.service.peers_up = lambda: peers["up"]
    try:
        status, _, body = request(server.url, "/v2/health/ready")
        assert status == 503 and "not every server process is up" in json.loads(body)["error"]
        assert request(server.url, "/v2/health/live")[0] == 200  # alive all along
        peers["up"] = True
        assert request(server.url, "/v2/health/ready")[0] == 200
    finally:
        server.service.peers_up = None


def test_readiness_follows_model_health_and_deadline_degrades(make_server):
    live = make_server()
    with _engine(live, _lost_gpu):
        for i in range(live.service.UNHEALTHY_AFTER):
            assert request(live.url, "/v2/health/ready")[0] == 200
            assert request(live.url, "/v1/score", jpeg(40 + i, 128))[0] == 200  # degraded
        for path in ("/v2/health/ready", "/v2/models/synthdetect/ready"):
            status, _, body = request(live.url, path)
            assert status == 503 and "model unhealthy" in json.loads(body)["error"]
            assert "device lost" in json.loads(body)["error"]
    assert request(live.url, "/v2/health/ready")[0] == 200  # the probe answered: recovered
    assert request(live.url, "/v2/models/synthdetect_tiles/ready")[0] == 200

    slow, sluggish = _slow_server(make_server, 0.5)
    with _engine(slow, sluggish):
        status, _, body = request(slow.url, "/v1/score", jpeg(50, 128))
        time.sleep(0.6)  # let the engine finish the batch it was stuck on
    verdict = json.loads(body)["verdict"]
    assert status == 200 and verdict["degraded"] is True
    assert verdict["degraded_reasons"] == [
        "model: EngineTimeout: the model did not answer within 50 ms"
    ]
    status, _, body = request(slow.url, "/v1/score", jpeg(50, 128))
    assert status == 200 and json.loads(body)["verdict"]["degraded"] is False


def test_a_hung_model_reads_not_ready_with_its_reason(make_server):
    """The readiness probe has its own short wait inside the work timeout: a model that stops
    answering makes the check say why promptly, instead of the check itself timing out."""
    live = make_server(work_timeout_s=2.0)
    with _engine(live, _lost_gpu):
        for i in range(live.service.UNHEALTHY_AFTER):
            request(live.url, "/v1/score", jpeg(60 + i, 128))

    def hung(tiles):
        time.sleep(3)
        raise RuntimeError("never answered")

    with _engine(live, hung):
        started = time.monotonic()
        status, _, body = request(live.url, "/v2/health/ready")
        assert time.monotonic() - started < 2.0  # the probe's 1 s, not the work timeout
        assert status == 503
        assert "no answer to a probe within 1 s" in json.loads(body)["error"]
        time.sleep(3)  # let the hung batch end before the server closes


def test_a_model_hung_under_a_deadline_is_probed_and_reads_not_ready(make_server):
    """Deadline misses are not failures, but a run of them with no answer between sends the
    readiness check to probe the model: a hung one is not ready (a slow one answers, above)."""
    live = make_server(
        batcher=BatcherConfig(max_batch_size=16, max_queue_delay_us=0, deadline_s=0.05),
        work_timeout_s=2.0,
    )

    def hung(tiles):
        time.sleep(3)
        raise RuntimeError("never answered")

    with _engine(live, hung):
        for i in range(live.service.UNHEALTHY_AFTER):
            status, _, body = request(live.url, "/v1/score", jpeg(70 + i, 128))
            assert json.loads(body)["verdict"]["degraded_reasons"][0].startswith(
                "model: EngineTimeout"
            )
        status, _, body = request(live.url, "/v2/health/ready")
        assert status == 503 and "no answer to a probe within 1 s" in json.loads(body)["error"]
        time.sleep(3)  # let the hung batch end before the server closes
    assert live.service.model_failures >= 1 and live.service.deadline_misses >= 3


def _slow_server(make_server, seconds: float):
    """A server with a 50 ms model deadline, and an engine taking ``seconds`` per batch to put
    in with ``_engine``."""
    live = make_server(
        batcher=BatcherConfig(max_batch_size=16, max_queue_delay_us=0, deadline_s=0.05)
    )
    fast = live.service.batcher._run

    def sluggish(tiles):
        time.sleep(seconds)
        return fast(tiles)

    return live, sluggish


def test_deadlines_passing_do_not_make_the_server_unready(make_server):
    """--deadline-ms is each request's budget: a slow model answering past it degrades those
    verdicts, but is not a failing model, and the readiness probe is not held to it."""
    live, sluggish = _slow_server(make_server, 0.3)
    with _engine(live, sluggish):
        for i in range(live.service.UNHEALTHY_AFTER + 1):
            status, _, body = request(live.url, "/v1/score", jpeg(55 + i, 128))
            reasons = json.loads(body)["verdict"]["degraded_reasons"]
            assert status == 200 and reasons[0].startswith("model: EngineTimeout")
        for path in ("/v2/health/ready", "/v2/models/synthdetect/ready"):
            assert request(live.url, path)[0] == 200, path
    assert live.service.model_failures == 0


def _chunked_multipart(parts: list[bytes], boundary: bytes = b"XyZ") -> bytes:
    body = b"".join(
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"f"
        + str(i).encode() + b".jpg\"\r\nContent-Type: image/jpeg\r\n\r\n" + p + b"\r\n"
        for i, p in enumerate(parts)
    ) + b"--" + boundary + b"--\r\n"  # fmt: skip
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.mark.slow
def test_multipart_bodies_are_bounded_while_streaming(make_server):
    live = make_server(HttpConfig(max_body_bytes=300_000, body_timeout_s=2.0, access_log=False))
    head = (
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
    )
    # chunked, so no Content-Length to check up front: 3 parts of 150 KB
    reply = _raw(live, head + _chunked_multipart([b"\xff" * 150_000] * 3), half_close=False)
    status_line, _, body = reply.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), reply[:200]
    assert "exceeds 300000 bytes" in json.loads(body)["error"]
    # more files than a request may carry: refused with 400
    many = live.service.config.batcher.max_batch_size * 4 + 1
    reply = _raw(live, head + _chunked_multipart([b"x"] * many), half_close=False)
    status_line, _, body = reply.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 400") and "too many files" in json.loads(body)["error"]
    # a multipart upload that stalls gets 408 once the body timeout has passed
    part = b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\nabc'
    stalled = head + b"%x\r\n%s\r\n" % (len(part), part)  # then nothing more
    reply = _raw(live, stalled, half_close=False)
    status_line, _, body = reply.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), reply[:200]
    assert request(live.url, "/v1/score", jpeg(9))[0] == 200  # and it keeps serving


def test_cors_preflight_lets_a_browser_call_with_a_key(make_server):
    live = make_server(
        HttpConfig(access_log=False, api_keys=("k",), cors_origins=("https://mod.example",))
    )
    pre = {"Origin": "https://mod.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    status, headers, _ = request(live.url, "/v1/score", headers=pre, method="OPTIONS")
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://mod.example"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert headers["Vary"] == "Origin"
    status, headers, body = request(
        live.url, "/v1/score", headers={**pre, "Origin": "https://evil.example"}, method="OPTIONS"
    )
    assert status == 403 and "not allowed" in json.loads(body)["error"]
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = request(
        live.url, "/v1/score", jpeg(9), {"Origin": "https://mod.example", "X-API-Key": "k"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://mod.example"
    assert "X-Request-Id" in headers["Access-Control-Expose-Headers"]
    # an unknown path is still unknown (the preflight route made it exist: 405 for GET)
    assert request(live.url, "/v1/nope", headers={"X-API-Key": "k"})[0] == 404
    assert request(live.url, "/v1/nope", headers=pre, method="OPTIONS")[0] == 404
    for path in ("/v2/models/synthdetect/infer", "/review", "/v2/health/ready"):
        assert request(live.url, path, headers=pre, method="OPTIONS")[0] == 204, path
    # without --cors-origin there is no preflight route
    assert request(make_server().url, "/v1/score", headers=pre, method="OPTIONS")[0] == 405


def test_pixels_in_flight_stay_within_the_budget(make_server):
    live = make_server(max_pixels_in_flight=1_000_000)
    big = P.encode(P.synthetic_scene(5, 700, 700), "PNG")  # 0.49 MP each: two fit at once
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: request(live.url, "/v1/score", big)[0], range(6)))
    assert codes == [200] * 6
    assert 490_000 <= live.service.pixels.peak <= 1_000_000 and live.service.pixels.used == 0


def test_work_past_the_timeout_answers_503_and_the_server_goes_on(make_server):
    def slow(tiles):
        time.sleep(1.5)
        return np.zeros((len(tiles), 1), np.float32)

    live = make_server(work_timeout_s=0.3)
    tiles = {"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [0.0] * 12288}
    with _engine(live, slow):
        status, headers, body = request(live.url, "/v1/score", jpeg(33, 128))
        # the tensor model too (it skips the worker threads, not the timeout)
        t_status, _, t_body = request(live.url, *_infer_json("synthdetect_tiles", [tiles])[:2])
    assert status == 503 and "did not finish within 0.3 s" in json.loads(body)["error"]
    assert headers["Retry-After"] == "5"
    assert t_status == 503 and "did not finish within 0.3 s" in json.loads(t_body)["error"]
    time.sleep(1.5)  # the abandoned work finishes on its thread
    status, _, body = request(live.url, "/v1/score", jpeg(33, 128))
    assert status == 200 and json.loads(body)["verdict"]["degraded"] is False
    _, _, metrics = request(live.url, "/metrics")
    assert 'synthdetect_errors_total{reason="work_timeout"} 2.0' in metrics.decode()
    assert 'reason="overloaded"' not in metrics.decode()  # counted once, under its reason


def test_gpu_decode_path_gives_the_cpu_paths_verdicts(server, make_server):
    """--gpu-decode on the CPU (torchvision's decoder: the path's fallback and reference):
    methods=model verdicts equal the usual path's; PNGs and bad files take the usual path."""
    fast = make_server(gpu_decode=True)
    assert fast.service.gpu_decode and not server.service.gpu_decode
    for blob in (jpeg(61, 200), jpeg(62, 300), P.encode(P.synthetic_scene(63, 200, 200), "PNG")):
        a = json.loads(request(server.url, "/v1/score?methods=model", blob)[2])["verdict"]
        b = json.loads(request(fast.url, "/v1/score?methods=model", blob)[2])["verdict"]
        assert a["label"] == b["label"] and a["image"]["sha256"] == b["image"]["sha256"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        assert (a["image"]["width"], a["image"]["height"]) == (
            b["image"]["width"],
            b["image"]["height"],
        )
    status, _, body = request(fast.url, "/v1/score?methods=model", b"\xff\xd8 not really")
    assert status == 422 and "error" in json.loads(body)
    # every default method: the usual path (the GPU path is for the model alone)
    _, _, body = request(fast.url, "/v1/score", jpeg(61, 200))
    assert {"model", "exif_hints", "c2pa"} <= set(json.loads(body)["verdict"]["methods"])


def test_a_client_that_disconnects_mid_upload_is_a_400_not_a_500(make_server):
    """A multipart upload whose client goes away: logged and counted as the client's fault
    (400), never an internal error, and its in-flight slot is freed."""
    import socket

    live = make_server(HttpConfig(access_log=False, body_timeout_s=30.0), max_inflight=2)
    part = b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\nabc'
    for _ in range(3):  # more than max_inflight: each slot must come back
        s = socket.create_connection(("127.0.0.1", live.port))
        s.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
            + b"%x\r\n%s\r\n"
            % (len(part), part)
        )
        time.sleep(0.3)
        s.close()
    deadline = time.monotonic() + 10
    while live.service.inflight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.service.inflight == 0
    _, _, metrics = request(live.url, "/metrics")
    text = metrics.decode()
    assert 'synthdetect_requests_total{code="400",endpoint="/v1/score"} 3.0' in text
    assert 'code="500"' not in text
    assert request(live.url, "/v1/score", jpeg(9))[0] == 200


def test_an_unknown_output_is_refused_before_the_model_runs(make_server):
    live = make_server()
    calls = []

    def counted(tiles):
        calls.append(len(tiles))
        return np.zeros((len(tiles), 1), np.float32)

    def stats() -> dict:
        (entry,) = json.loads(request(live.url, "/v2/models/synthdetect/stats")[2])["model_stats"]
        return entry

    path, body, headers = _infer_json(
        "synthdetect", [_bytes_input([tiny_png().decode("latin-1")])], outputs=[{"name": "nope"}]
    )
    with _engine(live, counted):
        status, _, out = request(live.url, path, body, headers)
    assert status == 400 and "unknown outputs ['nope']" in json.loads(out)["error"]
    assert calls == []  # nothing scored
    entry = stats()
    assert entry["inference_stats"]["fail"]["count"] == 1  # counted as Triton counts it
    assert entry["inference_stats"]["success"]["count"] == 0 and entry["inference_count"] == 0


def test_a_method_not_allowed_names_the_allowed_ones(server):
    status, headers, body = request(server.url, "/v1/score", b"x", method="PUT")
    assert status == 405 and json.loads(body)["error"] == "Method Not Allowed"
    assert headers["Allow"] == "POST"  # RFC 9110 15.5.6: a 405 MUST carry Allow


def test_work_abandoned_under_overload_is_skipped_and_keeps_its_slot(make_server):
    """A request past the work timeout freed its slot while its work stayed queued: under
    sustained load the queue grew without bound (2.2 GB), the engine ran for clients long
    gone, and the server answered 503 for a minute after the load stopped."""
    calls: list[float] = []

    def slow(tiles):
        calls.append(time.monotonic())
        time.sleep(0.1)
        return np.zeros((len(tiles), 1), np.float32)

    live = make_server(
        workers=2, work_timeout_s=0.25, max_inflight=4,
        batcher=BatcherConfig(max_batch_size=1, max_queue_delay_us=0),
    )  # fmt: skip
    image = jpeg(61, 64)
    stop = time.monotonic() + 2.0

    def client(_):
        codes = []
        while time.monotonic() < stop:
            codes.append(request(live.url, "/v1/score?methods=model", image)[0])
            time.sleep(0.02)
        return codes

    with _engine(live, slow), concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = [c for cs in pool.map(client, range(12)) for c in cs]
        ended = time.monotonic()
        time.sleep(1.0)
    assert set(codes) <= {200, 503} and codes.count(503) > 10
    # no more work than the two threads had started before the load ended (a batch each)
    assert all(t < ended + 0.25 for t in calls), [round(t - ended, 2) for t in calls][-3:]
    assert live.service.inflight == 0 and live.service.pool._work_queue.qsize() == 0
    assert request(live.url, "/v1/score?methods=model", image)[0] == 200


def test_a_slow_upload_holds_no_scoring_slot(make_server):
    """The slot was taken before the body was read: max_inflight clients sending a byte at a
    time shut every other client out (503) until the body timeout."""
    import socket

    live = make_server(max_inflight=2)
    host, port = live.url.split(":")
    slow = []
    for _ in range(3):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        slow.append(s)
    try:
        time.sleep(0.3)
        status, _, body = request(live.url, "/v1/score", jpeg(62, 96))
        assert status == 200, body
    finally:
        for s in slow:
            s.close()


def test_the_batcher_does_not_wait_for_work_still_queued_for_a_thread(make_server):
    """``active`` counted requests waiting for a worker thread: they cannot join the batch
    the busy threads wait on, so the batcher waited out its whole delay on every batch."""
    live = make_server(
        workers=2, batcher=BatcherConfig(max_batch_size=64, max_queue_delay_us=2_000_000)
    )
    images = [jpeg(70 + i, 64) for i in range(6)]
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda b: request(live.url, "/v1/score?methods=model", b)[0], images))
    assert codes == [200] * 6
    assert time.monotonic() - start < 3.0  # 3 rounds of a 2 s wait before


def test_cancelled_work_still_queued_is_skipped_and_siblings_are_cancelled(make_server):
    """A request cancelled while its work waits for a thread (a gRPC deadline, shutdown, or
    a sibling file of a multipart request refused: gather_or_cancel) leaves that work
    skipped; before, one refused file answered 503 while the other files' work ran on."""
    import asyncio
    import threading

    from serving.service import Unavailable, gather_or_cancel

    live = make_server(workers=1)
    gate = threading.Event()
    ran: list[str] = []

    def blocker():
        gate.wait(5)
        ran.append("blocker")

    async def refused():
        await asyncio.sleep(0.05)
        raise Unavailable("server overloaded: queue full")

    async def scenario():
        first = asyncio.ensure_future(live.service.run(blocker))
        await asyncio.sleep(0.05)  # the one thread is taken
        with pytest.raises(Unavailable):
            await gather_or_cancel(live.service.run(ran.append, "sibling"), refused())
        gate.set()
        await first

    asyncio.run_coroutine_threadsafe(scenario(), live.loop).result(10)
    time.sleep(0.2)
    assert ran == ["blocker"]  # the sibling's queued work was skipped
    assert live.service.inflight == 0 and live.service.pool._work_queue.qsize() == 0


def test_a_large_tensor_request_is_refused_before_it_is_parsed(make_server):
    """A JSON tensor over 256 KiB is parsed on a worker thread; under overload it was parsed
    in full (seconds of work) before the 503."""
    import serving.protocol

    live = make_server(max_inflight=1)
    parsed: list[int] = []
    real_parse = serving.kserve_http.parse_request

    def counting(body, header_len, max_batch=None):
        parsed.append(len(body))
        return real_parse(body, header_len, max_batch)

    serving.kserve_http.parse_request = counting
    tiles = {"name": "images", "shape": [6, 3, 64, 64], "datatype": "FP32", "data": [0.5] * 73728}
    path, payload = _infer_json("synthdetect_tiles", [tiles])[:2]
    try:
        assert len(payload) > 256 * 1024
        live.service.inflight = 1  # the one slot taken
        status, _, out = request(live.url, path, payload)
        assert status == 503 and "overloaded" in json.loads(out)["error"] and not parsed
        live.service.inflight = 0
        status, _, out = request(live.url, path, payload)
        assert status == 200 and parsed
    finally:
        serving.kserve_http.parse_request = real_parse
        live.service.inflight = 0
    assert serving.protocol.parse_request is real_parse


def test_the_readiness_probe_does_not_wait_behind_queued_work(make_server):
    """With the model unhealthy, readiness probes it: the probe went through the worker pool
    and waited behind every queued decode (4-9 s under load); it now goes to the batcher."""
    live = make_server(workers=1, work_timeout_s=20.0)
    with _engine(live, _lost_gpu):
        for i in range(live.service.UNHEALTHY_AFTER):
            request(live.url, "/v1/score", jpeg(80 + i, 128))
    assert not live.service.model_healthy
    release, taken = threading.Event(), threading.Event()

    def occupy():
        taken.set()
        release.wait(30)

    busy = asyncio.run_coroutine_threadsafe(live.service.run(occupy), live.loop)
    assert taken.wait(10)  # the only worker is held until the check has answered
    try:
        status, _, body = request(live.url, "/v2/health/ready")
        assert status == 200, body
        assert not release.is_set() and live.service.model_healthy
    finally:
        release.set()
    busy.result(10)


def test_a_model_deadline_inside_the_work_is_not_the_work_timeout(make_server):
    """The heatmap's model call past --deadline-ms was reported as the 60 s work timeout
    (EngineTimeout is a TimeoutError): it is a model deadline miss, said as one."""
    live, sluggish = _slow_server(make_server, 0.3)
    with _engine(live, sluggish):
        status, _, body = request(live.url, "/v1/score?heatmap=true", jpeg(90, 200))
    assert status == 503
    error = json.loads(body)["error"]
    assert error.startswith("model deadline exceeded: the model did not answer within 50 ms")
    assert live.service.deadline_misses >= 1
    time.sleep(0.5)  # the sluggish batch ends before the server closes


def test_the_queue_gauge_follows_the_batcher_without_http_traffic(make_server):
    """synthdetect_queue_tiles was set only at the end of an HTTP request: gRPC traffic never
    moved it, and an idle server showed the tiles of its last busy moment."""
    live = make_server(batcher=BatcherConfig(max_batch_size=4, max_queue_delay_us=0))
    gate = threading.Event()
    fast = live.service.batcher._run

    def held(tiles):
        gate.wait(10)
        return fast(tiles)

    with _engine(live, held):
        side = live.service.bundle.preprocess.input_size
        tiles = np.zeros((4, 3, side, side), np.float32)
        futures = [live.service.batcher.submit(tiles) for _ in range(3)]
        gauge = live.service.metrics.queue._value
        deadline = time.monotonic() + 10
        while gauge.get() != 8 and time.monotonic() < deadline:  # one batch runs, two wait
            time.sleep(0.01)
        assert gauge.get() == 8
        gate.set()
        for fut in futures:
            fut.result(10)
    assert live.service.metrics.queue._value.get() == 0


def test_heatmaps_and_review_hashes_decode_within_the_pixel_budget(make_server, tmp_path):
    """The heatmap (and the review queue's hashes) decoded the image a second time outside
    the pixel budget: concurrent heatmaps of large images added up with nothing to stop them."""
    live = make_server(max_pixels_in_flight=1_000_000, review_db=tmp_path / "reviews.db")
    big = P.encode(P.synthetic_scene(6, 700, 700), "PNG")  # 0.49 MP: two fit at once
    held = []
    hold = live.service.pixels.hold

    @contextlib.contextmanager
    def spy(pixels):
        held.append(pixels)
        with hold(pixels):
            yield

    live.service.pixels.hold = spy
    status, _, body = request(live.url, "/v1/score?heatmap=true&review=true", big)
    assert status == 200 and "heatmap" in json.loads(body) and json.loads(body)["review_id"]
    assert held == [490_000] * 3  # scored, hashed for the review queue, mapped
    assert live.service.pixels.used == 0


def test_request_ids_and_the_server_header_say_nothing_an_attacker_chose(server):
    """An 8,000-byte X-Request-Id was echoed and logged whole, on requests without a key too;
    every response named the Python and aiohttp versions."""
    status, headers, _ = request(server.url, "/v2/health/live", headers={"X-Request-Id": "ab-12.c"})
    assert status == 200 and headers["X-Request-Id"] == "ab-12.c"
    assert headers["Server"] == "synthdetect"
    for bad in ("x" * 8000, 'a"}, {"status": 200', "a b"):
        _, headers, _ = request(server.url, "/v2/health/live", headers={"X-Request-Id": bad})
        assert headers["X-Request-Id"] != bad and len(headers["X-Request-Id"]) == 16


def test_a_malformed_header_is_logged_without_its_value(server, caplog):
    """The parser's reason quoted the bad header line: an API key went into the log."""
    import logging
    import socket

    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        host, port = server.url.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-API-Key: secret-key-1\x00\r\n\r\n")
            assert sock.recv(65536).split(b"\r\n")[0].endswith(b" 400 Bad Request")
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert lines and not any("secret-key-1" in line for line in lines)


def test_a_multipart_body_of_many_small_fields_is_refused_early(server):
    """100,000 one-byte fields took 20 s of CPU before 'no files'."""
    boundary = b"B0undary"
    part = b'--B0undary\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'
    body = part * 5000 + b"--B0undary--\r\n"
    status, _, answer = request(
        server.url, "/v1/score", body,
        {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()},
    )  # fmt: skip
    assert status == 400 and "too many parts in one request" in json.loads(answer)["error"]
