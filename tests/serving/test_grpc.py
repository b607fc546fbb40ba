"""KServe v2 over gRPC through tritonclient.grpc: the HTTP server's tests, on Triton's service."""

from __future__ import annotations

import concurrent.futures
import json
import struct

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.app import HttpConfig
from tests.serving.test_server import _engine, _lost_gpu, jpeg, request, tiny_png
from tests.test_readme import _blocks, _section
from training import metadata_writers as P

pytestmark = pytest.mark.integration


def _bytes_input(images: list[bytes]) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("image", [len(images), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
    return inp


def _tiles_input(tiles: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("images", list(tiles.shape), "FP32")
    inp.set_data_from_numpy(tiles)
    return inp


def test_health_metadata_config_and_statistics(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "synthdetect" and "binary_tensor_data" in meta["extensions"]
    for model in ("synthdetect", "synthdetect_tiles"):
        assert client.is_model_ready(model)
        md = client.get_model_metadata(model, as_json=True)
        _, _, http_md = request(server.url, f"/v2/models/{model}")
        assert md["name"] == model and md["versions"] == ["1"]
        assert [i["name"] for i in md["inputs"]] == [
            i["name"] for i in json.loads(http_md)["inputs"]
        ]
    cfg = client.get_model_config("synthdetect_tiles", as_json=True)["config"]
    assert cfg["max_batch_size"] == 16 and cfg["input"][0]["dims"] == ["3", "64", "64"]
    assert "dynamic_batching" in cfg
    client.infer("synthdetect_tiles", [_tiles_input(np.zeros((2, 3, 64, 64), np.float32))])
    stats = client.get_inference_statistics("synthdetect_tiles", as_json=True)["model_stats"][0]
    assert stats["name"] == "synthdetect_tiles" and int(stats["inference_count"]) >= 2
    both = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in both} == {"synthdetect", "synthdetect_tiles"}


def test_tensor_and_bytes_models_answer_as_over_http(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tiles = np.random.default_rng(3).normal(size=(5, 3, 64, 64)).astype(np.float32)
    logits = client.infer("synthdetect_tiles", [_tiles_input(tiles)]).as_numpy("logits")
    expected = server.service.bundle.engine._run(tiles)
    np.testing.assert_allclose(logits.ravel(), expected, atol=1e-5)
    images = [jpeg(1), P.encode(P.synthetic_scene(2, 80, 80), "PNG",
                                png_text={"parameters": P.a1111_parameters()})]  # fmt: skip
    result = client.infer(
        "synthdetect",
        [_bytes_input(images)],
        outputs=[grpcclient.InferRequestedOutput("probability"),
                 grpcclient.InferRequestedOutput("label")],
    )  # fmt: skip
    probs = result.as_numpy("probability").ravel()
    labels = [x.decode() for x in result.as_numpy("label").ravel()]
    assert labels[1] == "generated" and probs[1] == pytest.approx(0.99)
    _, _, body = request(server.url, "/v1/score", images[0])
    assert json.loads(body)["verdict"]["probability"] == pytest.approx(float(probs[0]), abs=1e-6)
    # only the output asked for comes back
    only = client.infer("synthdetect", [_bytes_input(images[:1])],
                        outputs=[grpcclient.InferRequestedOutput("label")])  # fmt: skip
    assert only.as_numpy("probability") is None and only.as_numpy("label") is not None


def test_an_abstained_probability_is_nan(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    result = client.infer("synthdetect", [_bytes_input([tiny_png(), jpeg(3)])])
    probs = result.as_numpy("probability").ravel()
    assert np.isnan(probs[0]) and 0 <= probs[1] <= 1
    assert result.as_numpy("label")[0, 0] == b"uncertain"


def test_readiness_is_one_answer_for_the_server_and_its_models(make_server):
    live = make_server()
    client = grpcclient.InferenceServerClient(live.grpc_url)
    with _engine(live, _lost_gpu):
        for i in range(live.service.UNHEALTHY_AFTER):
            request(live.url, "/v1/score", jpeg(40 + i, 128))  # degraded: the model failed
        assert not client.is_server_ready()
        assert not client.is_model_ready("synthdetect")
        assert not client.is_model_ready("synthdetect_tiles")
    assert client.is_model_ready("synthdetect") and client.is_server_ready()


def test_a_body_limit_past_grpcs_32_bits_is_capped():
    """serve --max-body-mb 2048 (or more) did not start: gRPC's message sizes are 32-bit, so
    its limit is the body limit capped at 2**31 - 1 bytes."""
    import asyncio

    from serving.grpc_server import GrpcServer

    async def make(limit: int) -> int:
        server = GrpcServer(None, None, "127.0.0.1", 0, limit)  # type: ignore[arg-type]
        await server.stop(0)
        return server.max_message_bytes

    assert asyncio.run(make(2048 * 2**20)) == 2**31 - 1
    assert asyncio.run(make(10**12)) == 2**31 - 1
    assert asyncio.run(make(64 * 2**20)) == 64 * 2**20


def test_200_concurrent_requests_are_routed_to_their_callers(server):
    images = [jpeg(200 + i, 64 + 8 * (i % 5)) for i in range(40)]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    alone = [
        float(client.infer("synthdetect", [_bytes_input([img])]).as_numpy("probability")[0, 0])
        for img in images
    ]

    def one(i: int) -> float:
        c = grpcclient.InferenceServerClient(server.grpc_url)
        return float(
            c.infer("synthdetect", [_bytes_input([images[i % 40]])]).as_numpy("probability")[0, 0]
        )

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        got = list(pool.map(one, range(200)))
    for i, p in enumerate(got):
        assert p == pytest.approx(alone[i % 40], abs=1e-5)


def _status(fn) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        fn()
    return err.value.status(), err.value.message()


def test_bad_requests_get_triton_status_codes_and_the_server_keeps_serving(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tiles = np.zeros((1, 3, 64, 64), np.float32)
    cases = [
        (lambda: client.infer("gpt", [_tiles_input(tiles)]), "StatusCode.NOT_FOUND",
         "unknown model"),
        (lambda: client.infer("synthdetect_tiles", [_tiles_input(tiles)], model_version="7"),
         "StatusCode.NOT_FOUND", "no version"),
        (lambda: client.get_model_metadata("gpt"), "StatusCode.NOT_FOUND", "unknown model"),
        (lambda: client.infer("synthdetect_tiles", [_tiles_input(np.zeros((1, 3, 8, 8), np.float32))]),
         "StatusCode.INVALID_ARGUMENT", "must have shape"),
        (lambda: client.infer("synthdetect_tiles", [_tiles_input(np.full((1, 3, 64, 64), np.nan, np.float32))]),
         "StatusCode.INVALID_ARGUMENT", "NaN"),
        (lambda: client.infer("synthdetect_tiles", [_tiles_input(np.zeros((17, 3, 64, 64), np.float32))]),
         "StatusCode.INVALID_ARGUMENT", "exceeds max_batch_size"),
        (lambda: client.infer("synthdetect", [_bytes_input([b"not an image"])]),
         "StatusCode.INVALID_ARGUMENT", "image 0"),
        (lambda: client.infer("synthdetect", [_tiles_input(tiles)]),
         "StatusCode.INVALID_ARGUMENT", "takes one input 'image'"),
        (lambda: client.infer("synthdetect", [_bytes_input([jpeg(1)])],
                              outputs=[grpcclient.InferRequestedOutput("nope")]),
         "StatusCode.INVALID_ARGUMENT", "unknown outputs"),
        # the classification extension is refused, not ignored (floats came back)
        (lambda: client.infer("synthdetect", [_bytes_input([jpeg(1)])],
                              outputs=[grpcclient.InferRequestedOutput("probability", class_count=1)]),
         "StatusCode.INVALID_ARGUMENT", "classification extension is not served"),
    ]  # fmt: skip
    for fn, code, reason in cases:
        status, message = _status(fn)
        assert status == code and reason in message, (status, message)
    assert client.infer("synthdetect", [_bytes_input([jpeg(8)])]).as_numpy("label") is not None
    # as Triton (and the HTTP side): an unknown model or version is not ready, not an error
    assert not client.is_model_ready("synthdetect", "2") and not client.is_model_ready("gpt")


def test_typed_contents_and_malformed_raw_contents(server):
    """tritonclient sends raw contents; other clients send typed ones (fp32_contents...)."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = service_pb2.ModelInferRequest(model_name="synthdetect_tiles", id="typed-1")
        t = req.inputs.add(name="images", datatype="FP32", shape=[1, 3, 64, 64])
        t.contents.fp32_contents.extend([0.0] * (3 * 64 * 64))
        reply = stub.ModelInfer(req)
        assert reply.id == "typed-1" and reply.outputs[0].name == "logits"
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).shape == (1,)
        img = service_pb2.ModelInferRequest(model_name="synthdetect")
        t = img.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
        t.contents.bytes_contents.append(jpeg(2))
        assert len(stub.ModelInfer(img).outputs) == 2
        bad = service_pb2.ModelInferRequest(model_name="synthdetect_tiles")
        bad.inputs.add(name="images", datatype="FP32", shape=[1, 3, 64, 64])
        bad.raw_input_contents.append(b"\x00" * 10)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "10 bytes for shape" in err.value.details()
        both = service_pb2.ModelInferRequest(model_name="synthdetect")
        t = both.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
        t.contents.bytes_contents.append(jpeg(2))
        both.raw_input_contents.append(struct.pack("<I", 3) + b"abc")
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(both)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "both contents and raw_input_contents" in err.value.details()
        flat = service_pb2.ModelInferRequest(model_name="synthdetect")
        flat.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            jpeg(2)
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(flat)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must have shape [N, 1]" in err.value.details()
        huge = service_pb2.ModelInferRequest(model_name="synthdetect_tiles")
        huge.inputs.add(name="images", datatype="FP32", shape=[0, 2**62])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(huge)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        half = service_pb2.ModelInferRequest(model_name="synthdetect_tiles")  # FP16: no typed field
        half.inputs.add(name="images", datatype="FP16", shape=[1, 3, 64, 64])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(half)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 has no typed contents field" in err.value.details()
        for call, message in ((stub.RepositoryIndex, service_pb2.RepositoryIndexRequest()),
                              (stub.TraceSetting, service_pb2.TraceSettingRequest())):  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                call(message)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "is not served here" in err.value.details()


def test_keys_rate_limits_and_message_size(make_server):
    live = make_server(
        HttpConfig(access_log=False, api_keys=("k1", "k2"), rate_limit=0.5, rate_burst=3,
                   max_body_bytes=200_000)
    )  # fmt: skip
    client = grpcclient.InferenceServerClient(live.grpc_url)
    assert client.is_server_live()  # health needs no key, as over HTTP
    status, message = _status(lambda: client.get_model_metadata("synthdetect"))
    assert status == "StatusCode.UNAUTHENTICATED" and "API key" in message
    status, _ = _status(
        lambda: client.get_model_metadata("synthdetect", headers={"authorization": "Bearer no"})
    )
    assert status == "StatusCode.UNAUTHENTICATED"
    ok = client.get_model_metadata("synthdetect", headers={"x-api-key": "k1"}, as_json=True)
    assert ok["name"] == "synthdetect"
    big = np.zeros((16, 3, 64, 64), np.float32)  # 786 KB > the 200 KB message limit
    status, _ = _status(lambda: client.infer("synthdetect_tiles", [_tiles_input(big)],
                                             headers={"authorization": "Bearer k1"}))  # fmt: skip
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    # without a valid key the call is refused from its metadata, before its message is read:
    # the size limit is never reached (it answered RESOURCE_EXHAUSTED for these)
    for headers in ({}, {"x-api-key": "k3"}):
        status, message = _status(
            lambda h=headers: client.infer("synthdetect_tiles", [_tiles_input(big)], headers=h)
        )
        assert status == "StatusCode.UNAUTHENTICATED" and "API key" in message
    codes = []
    for _ in range(6):  # the burst of 3 (one spent above) runs out: the HTTP limit's buckets
        try:
            client.get_model_metadata("synthdetect", headers={"x-api-key": "k1"})
            codes.append("OK")
        except InferenceServerException as exc:
            codes.append(exc.status())
    assert "StatusCode.RESOURCE_EXHAUSTED" in codes
    assert request(live.url, "/v2/models/synthdetect", headers={"X-API-Key": "k1"})[0] == 429
    _, _, metrics = request(live.url, "/metrics", headers={"X-API-Key": "k2"})
    assert 'endpoint="grpc:ModelMetadata"' in metrics.decode()
    assert (
        'requests_total{code="UNAUTHENTICATED",endpoint="grpc:ModelInfer"} 2.0' in metrics.decode()
    )


def test_the_readmes_client_examples_run_against_the_server(server, tmp_path, capsys):
    """The Serve section's Python examples (HTTP and gRPC), run as a user would."""
    import re

    blocks = _blocks(_section("Serve"), "python")
    assert len(blocks) == 2 and "tritonclient.grpc" in blocks[1]
    image = tmp_path / "x.jpg"
    image.write_bytes(jpeg(77, 160))
    for code in blocks:
        code = (code.replace("127.0.0.1:8000", server.url)
                .replace("127.0.0.1:8001", server.grpc_url)
                .replace('"x.jpg"', repr(str(image))))  # fmt: skip
        exec(compile(code, "README.md", "exec"), {})
        printed = capsys.readouterr().out
        assert re.search(r"\[\[0\.\d+\]\]", printed), printed


def _readme_perf_analyzer() -> list[str]:
    import re
    import shlex

    lines = re.findall(r"^perf_analyzer .*$", _section("Serve"), re.M)
    assert len(lines) == 1, "the Serve section shows one perf_analyzer command"
    return shlex.split(lines[0])


def test_the_readmes_perf_analyzer_command_names_what_the_server_serves(server):
    """What the command asks for (protocol, default port, model, its inputs) is what `serve`
    answers; runs everywhere, perf_analyzer or not."""
    from detector.cli import build_parser

    args = _readme_perf_analyzer()
    opts = dict(zip(args[1::2], args[2::2], strict=True))  # every option takes a value
    assert opts["-i"] == "grpc"
    assert opts["-u"] == f"127.0.0.1:{build_parser().parse_args(['serve']).grpc_port}"
    client = grpcclient.InferenceServerClient(server.grpc_url)
    md = client.get_model_metadata(opts["-m"], as_json=True)
    # --input-data zero needs every input's shape from the model: numeric, except the batch
    assert all(d != "-1" for i in md["inputs"] for d in i["shape"][1:]), md["inputs"]


def test_the_readmes_perf_analyzer_command_runs(server):
    import subprocess

    from benchmarks.serving import perf_analyzer_exe

    exe = perf_analyzer_exe()
    if exe is None:
        pytest.skip("perf_analyzer is not installed (benchmarks/setup_perf_analyzer.sh)")
    args = [server.grpc_url if a == "127.0.0.1:8001" else a for a in _readme_perf_analyzer()[1:]]
    # short windows; any throughput counts as stable: this checks the protocol, not the speed
    out = subprocess.run(
        [exe, *args, "--measurement-interval", "1000", "--stability-percentage", "999"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Throughput:" in out.stdout and "infer/sec" in out.stdout
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
        "synthdetect_tiles", as_json=True
    )["model_stats"][0]
    assert int(stats["inference_count"]) > 0


def test_an_unexpected_failure_is_internal_and_counted_so(server, monkeypatch):
    import serving.grpc_server as g

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(g, "resolve_model", broken)  # the one thing made to fail
    client = grpcclient.InferenceServerClient(server.grpc_url)
    status, message = _status(lambda: client.is_model_ready("synthdetect"))
    assert status == "StatusCode.INTERNAL" and "internal server error" in message
    _, _, metrics = request(server.url, "/metrics")
    assert 'requests_total{code="INTERNAL",endpoint="grpc:ModelReady"} 1.0' in metrics.decode()
    monkeypatch.undo()
    assert client.is_model_ready("synthdetect")  # the server goes on


def test_large_typed_contents_are_parsed_off_the_event_loop(server, monkeypatch):
    import asyncio

    from tritonclient.grpc import service_pb2, service_pb2_grpc

    import serving.grpc_server as g

    where, real = [], g.parse_infer_request

    def spy(request, max_batch=None):
        try:
            asyncio.get_running_loop()
            where.append("event loop")
        except RuntimeError:
            where.append("worker thread")
        return real(request, max_batch)

    monkeypatch.setattr(g, "parse_infer_request", spy)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for n in (1, 8):  # 48 KiB inline; 384 KiB (over 256) on a worker thread
            req = service_pb2.ModelInferRequest(model_name="synthdetect_tiles")
            t = req.inputs.add(name="images", datatype="FP32", shape=[n, 3, 64, 64])
            t.contents.fp32_contents.extend([0.0] * (n * 3 * 64 * 64))
            assert len(np.frombuffer(stub.ModelInfer(req).raw_output_contents[0], np.float32)) == n
    assert where == ["event loop", "worker thread"]


def test_idle_grpc_connections_are_closed(service_config):
    """The gRPC port kept idle connections for ever (--idle-timeout-s covered HTTP only): 250
    of them used up the process's file descriptors and HTTP stopped answering."""
    import asyncio
    import socket
    import time

    from serving.grpc_server import GrpcServer
    from serving.guard import Guard
    from serving.service import Service

    service = Service(service_config)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # grpc.aio binds the server to the loop it is made in

    async def make() -> GrpcServer:
        made = GrpcServer(service, Guard((), ()), "127.0.0.1", 0, 1 << 20, idle_timeout_s=1.0)
        await made.start()
        return made

    server = loop.run_until_complete(make())
    try:
        clients = []
        for preface in (b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)):  # + empty SETTINGS
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(preface)
            clients.append(sock)
        deadline = time.monotonic() + 8
        for sock in clients:  # each is closed by the server: recv returns b"" at its end
            while True:
                loop.run_until_complete(asyncio.sleep(0.1))
                sock.settimeout(0.1)
                try:
                    if sock.recv(65536) == b"":
                        break
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    break
                assert time.monotonic() < deadline, "an idle gRPC connection stayed open"
            sock.close()
    finally:
        loop.run_until_complete(server.stop(1))
        loop.close()
        asyncio.set_event_loop(None)
        service.close()


def test_an_oversized_batch_is_refused_before_its_tensor_is_built(server):
    """A 10-million element BYTES tensor was decoded (660 MB, seconds) before the batch
    limit refused it; the shape alone refuses it now, over gRPC and HTTP."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    big = grpcclient.InferInput("image", [1_000_000, 1], "BYTES")
    big.set_data_from_numpy(np.array([[b"x"]] * 1_000_000, dtype=object))
    with pytest.raises(InferenceServerException, match="'image': batch of 1000000 exceeds"):
        client.infer("synthdetect", [big])
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [3_000_000, 1],
                    "data": ["x"] * 3_000_000,
                }
            ]
        }
    ).encode()
    status, _, answer = request(server.url, "/v2/models/synthdetect/infer", body)
    assert status == 400 and "'image': batch of 3000000 exceeds max_batch_size" in answer.decode()
    # the shape is checked first: a tensor that would also be malformed is not even read
    from serving.protocol import ProtocolError, parse_request

    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [10_000_000, 1],
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    ).encode()
    with pytest.raises(ProtocolError, match="batch of 10000000 exceeds max_batch_size 32"):
        parse_request(head + b"\0\0\0\0", len(head), max_batch=32)
