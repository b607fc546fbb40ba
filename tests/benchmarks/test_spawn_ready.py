"""Benchmarks start loading a server only once all of it is up."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from benchmarks.serving import spawn_ready

pytestmark = pytest.mark.unit

# A server that answers ready at once but says it is fully up only ~3 s later, as
# `serve --processes N` does while its other processes load their engines.
SERVER = """
import http.server, sys, threading, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
threading.Timer(3.0, lambda: print("synthdetect: 2 server processes up", file=sys.stderr,
                                   flush=True)).start()
srv.serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("wait_for", [None, "server processes up"])
def test_spawn_ready_waits_for_the_line_when_asked(wait_for):
    port = _free_port()
    start = time.monotonic()
    proc = spawn_ready([sys.executable, "-c", SERVER, str(port)], port, timeout=30,
                       wait_for=wait_for)  # fmt: skip
    elapsed = time.monotonic() - start
    proc.kill()
    proc.wait(10)
    if wait_for:
        assert elapsed >= 3.0
    else:
        assert elapsed < 3.0


def test_several_processes_reads_both_spellings_and_never_raises():
    from benchmarks.serving import _several_processes

    assert _several_processes(["--processes", "8"]) and _several_processes(["--processes=2"])
    assert not _several_processes(["--processes", "1"]) and not _several_processes([])
    assert _several_processes(["--processes"])  # left to the server's own usage error


def test_a_port_another_server_holds_is_refused_not_measured():
    """`bench serving` used a fixed port: a stub already there answered ready and was
    measured (every target 'met')."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is taken by another process"):
            spawn_ready([sys.executable, "-c", "pass"], port)


@pytest.mark.parametrize("line", ["--host=0.0.0.0", "--port=5", "--port 5", "--host 0.0.0.0"])
def test_bench_load_serve_refuses_a_host_or_port_in_any_form(line):
    """`--serve "--host=0.0.0.0"` slipped past the check: the server listened on every
    interface (the load benchmark promises loopback only)."""
    from benchmarks.load import _start_serve

    with pytest.raises(ValueError, match="leave out --port/--host"):
        _start_serve(line)


def test_batch_sizes_are_capped():
    import argparse

    from detector.argtypes import MAX_BATCH, batch_sizes

    assert batch_sizes("1,8,4096") == [1, 8, 4096]
    with pytest.raises(argparse.ArgumentTypeError, match=f"at most {MAX_BATCH} per batch"):
        batch_sizes("1,100000")
