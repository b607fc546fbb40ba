"""`synthdetect serve` as a process: it starts, serves, and drains in-flight work on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.serving.conftest import free_port
from tests.serving.test_server import jpeg, request

pytestmark = pytest.mark.integration


def test_serve_process_drains_on_sigterm(exported_model):
    port = free_port()
    proc = _serve(exported_model, port, "--max-batch-size", "1", "--max-queue-delay-us", "0")
    url = f"127.0.0.1:{port}"
    try:
        _wait_until(proc, lambda: _ready(url))
        images = [jpeg(300 + i, 384) for i in range(24)]  # 9 tiles each, one tile per engine call
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(request, url, "/v1/score", img) for img in images]
            time.sleep(0.3)  # requests are in flight
            proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=120) for f in futures]
        assert [r[0] for r in results] == [200] * 24, [r[2][:100] for r in results if r[0] != 200]
        assert all("verdict" in json.loads(r[2]) for r in results)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "synthdetect serving" in err and "try: curl" in err
    assert "Traceback" not in err


def _serve(model, port: int, *extra: str, grpc_port: int | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "serve", "--grpc-port", str(grpc_port or free_port()),
         "--model", str(model), "--port", str(port), "--no-access-log", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1).status == 200
    except OSError:
        return False


def _wait_until(proc: subprocess.Popen, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if check():
            return
        time.sleep(0.2)
    pytest.fail("timeout")


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    # the field after the parenthesised name: state, then the parent's pid
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry))
    return out


def _metric(url: str, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=10).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(got.split(","))) == want:
                total += float(line.rsplit(" ", 1)[1])
    return total


def _servers(proc: subprocess.Popen, count: int) -> set[int]:
    """The supervisor's server processes, once ``count`` of them listen (not multiprocessing's
    resource tracker, which is a child too)."""
    found: set[int] = set()

    def listening() -> bool:
        found.clear()
        for pid in _children(proc.pid):
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"spawn_main" in fh.read() and _listens(pid):
                    found.add(pid)
        return len(found) == count

    _wait_until(proc, listening)
    return set(found)


def _listens(pid: int) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


def test_serve_processes_share_the_port_and_metrics(exported_model):
    """``--processes 2``: two server processes answer on one port, /metrics counts both, and
    SIGTERM to the supervisor drains and stops them all."""
    import tritonclient.grpc as grpcclient

    port, grpc_port = free_port(), free_port()
    url = f"127.0.0.1:{port}"
    proc = _serve(exported_model, port, "--processes", "2", grpc_port=grpc_port)
    try:
        servers = _servers(proc, 2)

        _wait_until(proc, lambda: _ready(url))
        before = _metric(url, "synthdetect_requests_total", endpoint="/v1/score", code="200")
        # a new connection per request: the kernel spreads them over both processes, so a
        # /metrics answer from one process that counted only its own requests would be short
        images = [jpeg(400 + i, 160) for i in range(24)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda b: request(url, "/v1/score", b), images))
        assert [r[0] for r in results] == [200] * 24
        after = _metric(url, "synthdetect_requests_total", endpoint="/v1/score", code="200")
        assert after - before == 24

        # gRPC on one port too (SO_REUSEPORT), each call on a new channel
        def grpc_infer(blob: bytes) -> str:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            inp = grpcclient.InferInput("image", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[blob]], dtype=np.object_))
            label = client.infer("synthdetect", [inp]).as_numpy("label")[0, 0].decode()
            client.close()
            return label

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            labels = list(pool.map(grpc_infer, images[:12]))
        assert all(label in ("generated", "camera", "uncertain") for label in labels)
        grpc_calls = _metric(
            url, "synthdetect_requests_total", endpoint="grpc:ModelInfer", code="OK"
        )
        assert grpc_calls == 12
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        time.sleep(0.5)
        assert not any(_alive(pid) for pid in servers)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "2 server processes up" in err and "Traceback" not in err


def test_serve_processes_stop_when_one_dies(exported_model):
    port = free_port()
    proc = _serve(exported_model, port, "--processes", "2")
    try:
        servers = _servers(proc, 2)
        os.kill(min(servers), signal.SIGKILL)
        assert proc.wait(timeout=90) != 0
        time.sleep(0.5)
        assert not any(_alive(pid) for pid in servers)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "exited with code -9; stopping the others" in proc.stderr.read()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_serve_rejects_bad_process_count_and_model(exported_model, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    for extra, message in (
        (["--processes", "0"], "argument --processes: must be positive: 0"),
        (["--processes", "2", "--model", str(bad)], "ONNX Runtime cannot load"),
        # the warm-up ran one batch this large: a 41 GiB allocation and a traceback
        (["--max-batch-size", "100000"], "at most 4096 tiles per batch, got 100000"),
        (["--max-body-mb", "1e-9"], "--max-body-mb 1e-09 is under 1 KiB"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "detector.cli", "serve", "--grpc-port", str(free_port()), "--port", str(free_port()), *extra],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert message in out.stderr and "Traceback" not in out.stderr


def test_serve_processes_refuse_a_port_another_server_holds_and_port_0(exported_model):
    """With SO_REUSEPORT a second --processes server joined a port the first held and took
    part of its traffic; --port 0 put each process on a random port of its own."""
    import socket

    with socket.socket() as taken:  # a server with SO_REUSEPORT, as ours are
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        held = taken.getsockname()[1]
        for ports, message in (
            (["--port", str(held), "--grpc-port", str(free_port())],
             f"cannot listen on 127.0.0.1:{held} (the port is in use)"),
            (["--port", str(free_port()), "--grpc-port", str(held)],
             f"cannot listen on 127.0.0.1:{held} (the port is in use)"),
            (["--port", "0", "--grpc-port", "0"], "--port 0 picks a port per process"),
        ):  # fmt: skip
            out = subprocess.run(
                [sys.executable, "-m", "detector.cli", "serve", "--model", str(exported_model),
                 "--processes", "2", *ports],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 2 and message in out.stderr, out.stderr


def test_a_stop_while_the_processes_load_is_clean(exported_model):
    """SIGTERM while a process was still loading: it died of the signal (-15) and the
    supervisor exited 1 without a word; a routine stop read as a failure."""
    proc = _serve(exported_model, free_port(), "--processes", "2")
    deadline = time.monotonic() + 60
    while not (children := _children(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # process 0 is importing and loading its model
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0, proc.stderr.read()
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in children)


def test_serve_refuses_a_taken_grpc_port_and_an_empty_key_file(exported_model, tmp_path):
    """A gRPC port another process holds: one line naming it, exit 2 (grpc raises, not 0, in
    the installed version). A key file with no keys would turn authentication off: refused."""
    import socket

    empty = tmp_path / "keys.txt"
    empty.write_text("\n  \n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        for extra, message in (
            (["--grpc-port", str(grpc_port)],
             f"synthdetect: cannot listen on grpc://127.0.0.1:{grpc_port} (the port is in use"),
            (["--grpc-port", str(free_port()), "--api-key-file", str(empty)],
             f"synthdetect: {empty} holds no keys (one key per line)"),
        ):  # fmt: skip
            out = subprocess.run(
                [sys.executable, "-m", "detector.cli", "serve", "--model", str(exported_model),
                 "--port", str(free_port()), *extra],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 2, out.stderr
            assert message in out.stderr and "Traceback" not in out.stderr


def test_serve_refuses_weak_keys_and_a_key_with_two_roles(tmp_path):
    """Failed key checks are not throttled, so a guessable key is refused before any model
    loads (naming where it was given), as is a key both a scorer's and a reviewer's (it got
    the scorer's role only). A strong key passes the check (and a missing model is next)."""
    strong = "k" * 16
    keys, reviewers = tmp_path / "keys.txt", tmp_path / "reviewers.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHDETECT_")}
    cases = (
        ({"keys": f"{strong}\nsecret\n"}, {}, f"the key in {keys} line 2 is shorter than 16"),
        ({"keys": f"{strong} {strong}\n"}, {}, f"the key in {keys} line 1 has a space in it"),
        ({}, {"SYNTHDETECT_REVIEWER_KEYS": f"{strong}x,short"},
         "the key in $SYNTHDETECT_REVIEWER_KEYS is shorter than 16"),
        ({"keys": strong, "reviewers": strong}, {}, "a key is both a scorer's and a reviewer's"),
        ({"keys": strong, "reviewers": strong + "r"}, {}, "no model at"),
    )  # fmt: skip
    for files, extra_env, message in cases:
        args = []
        for name, path in (("keys", keys), ("reviewers", reviewers)):
            path.unlink(missing_ok=True)
            if name in files:
                path.write_text(files[name])
                args += [f"--{'api' if name == 'keys' else 'reviewer'}-key-file", str(path)]
        out = subprocess.run(
            [sys.executable, "-m", "detector.cli", "serve", "--model", str(tmp_path / "absent"),
             "--port", str(free_port()), *args],
            capture_output=True, text=True, timeout=120, env={**env, **extra_env},
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_connection_cap_and_idle_timeout(exported_model):
    """Past --max-connections a new connection gets 503 and is closed at once; a connection
    that sends no request is closed after --idle-timeout-s, freeing its slot."""
    import socket

    port = free_port()
    proc = _serve(exported_model, port, "--max-connections", "4", "--idle-timeout-s", "2")
    url = f"127.0.0.1:{port}"
    idle = []
    try:
        _wait_until(proc, lambda: _ready(url))
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        time.sleep(0.3)
        status, headers, body = request(url, "/v2/health/live")
        assert status == 503 and "too many open connections" in json.loads(body)["error"]
        assert headers["Retry-After"] == "1"
        for s in idle:  # the idle timeout closes them: the server sends nothing, then EOF
            s.settimeout(10)
            assert s.recv(100) == b""
        assert request(url, "/v1/score", jpeg(3))[0] == 200
    finally:
        for s in idle:
            s.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "connection cap (4) reached: refused 1 connections" in err
    assert "Traceback" not in err  # one per refused connection, before (aiohttp's handler task)


def test_serve_max_tiles_cuts_each_image_into_at_most_that_many_tiles(exported_model):
    """``serve --max-tiles 2``: /v1/score's model result covers two tiles of a large image."""
    port = free_port()
    proc = _serve(exported_model, port, "--max-tiles", "2")
    url = f"127.0.0.1:{port}"
    try:
        _wait_until(proc, lambda: _ready(url))
        status, _, body = request(url, "/v1/score?methods=model", jpeg(11, 512))
        assert status == 200, body[:200]
        assert json.loads(body)["verdict"]["methods"]["model"]["details"]["tiles"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_printed_curl_works_verbatim_from_anywhere(exported_model, tmp_path, host):
    """The line printed `http://::1:PORT` (curl: bad URL), `:0` for --port 0 (the port the
    system picked was never shown), and a sample path relative to the checkout (from anywhere
    else curl sent an empty body)."""
    import shutil
    import socket

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    if host == "::1":
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "serve", "--grpc-port", "0", "--host", host,
         "--port", "0", "--model", str(exported_model), "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        line = ""
        deadline = time.monotonic() + 120
        while not line.startswith("try: ") and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the server stopped"
        command = line.removeprefix("try: ").strip()
        assert ":0/" not in command and ("[::1]" in command) == (host == "::1")
        out = subprocess.run(
            ["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert json.loads(out.stdout)["verdict"]["label"] in ("generated", "camera", "uncertain")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_http_alone_serves_without_the_grpc_stack(exported_model, tmp_path):
    """--grpc-port 0 serves HTTP only: it must not need tritonclient's generated protos (a
    lean image, such as a lent GPU machine's, lacks them), which serve imported regardless."""
    blocker = tmp_path / "block" / "tritonclient"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError('tritonclient blocked for this test')\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "serve", "--grpc-port", "0", "--port", "0",
         "--model", str(exported_model), "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(x.startswith("try: ") for x in lines):
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
        assert any("synthdetect serving" in x for x in lines) and "grpc://" not in "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


_DRAINING_SERVER = """
import asyncio
from aiohttp import web
from serving.runner import run_server

ready = [True]


async def readiness(request):
    return web.Response(status=200 if ready[0] else 503)


class Draining:  # a side server (gRPC's place) whose in-flight calls take 3 s to drain
    async def start(self):
        pass

    async def stop(self, grace):
        print("draining", flush=True)
        await asyncio.sleep(3)


def stopping():
    ready[0] = False
    print("stopping", flush=True)


app = web.Application()
app.router.add_get("/ready", readiness)
run_server(app, "127.0.0.1", 0, on_listening=lambda port: print(port, flush=True),
           on_stopping=stopping, side_servers=(Draining,))
"""


def test_a_stopping_server_is_unready_and_takes_no_connections_while_grpc_drains():
    """SIGTERM with gRPC calls in flight: HTTP kept answering ready and taking new work for
    the whole gRPC grace period. Now readiness fails first and the listening socket closes
    before the side servers drain."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRAINING_SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        port = int(proc.stdout.readline())
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "stopping"
        assert proc.stdout.readline().strip() == "draining"
        with pytest.raises(OSError):  # refused: nothing listens while the drain runs
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2)
        assert proc.poll() is None  # still draining
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in proc.stderr.read()


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_a_server_open_to_the_network_without_keys_says_so(exported_model, host):
    """Bound beyond loopback with no keys, every client is a reviewer: said on start."""
    port = free_port()
    proc = _serve(exported_model, port, "--host", host, grpc_port=0)
    try:
        _wait_until(proc, lambda: _ready(f"127.0.0.1:{port}"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    warned = "WARNING: 0.0.0.0 is reachable from other machines and no API keys are set" in err
    assert warned == (host == "0.0.0.0")
