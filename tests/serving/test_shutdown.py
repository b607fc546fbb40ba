"""`synthdetect serve` as a process: it starts, serves, and drains in-flight work on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.serving.conftest import free_port
from tests.serving.test_server import jpeg, request

pytestmark = pytest.mark.integration


def test_serve_process_drains_on_sigterm(exported_model):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "serve", "--model", str(exported_model), "--port", str(port),
         "--max-batch-size", "1", "--max-queue-delay-us", "0", "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(
                "server did not become ready: " + proc.stderr.read()
                if proc.poll() is not None
                else "timeout"
            )
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
