"""The regression gate passes an unchanged result and fails a deliberately degraded one."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import subprocess
import sys

import pytest

from benchmarks.compare import compare_results, load_result
from benchmarks.loadgen import run_load, score_payload

pytestmark = pytest.mark.unit

BASE = {
    "gate": {
        "accuracy": {"model@none.ap": 0.95, "fused@jpeg:75.ap": 0.90},
        "speed_ratio": {"server_vs_inprocess_tiles_c16": 0.92},
    }
}


def test_identical_and_slightly_noisy_results_pass():
    assert compare_results(BASE, BASE).ok
    noisy = copy.deepcopy(BASE)
    noisy["gate"]["accuracy"]["model@none.ap"] -= 0.01
    noisy["gate"]["speed_ratio"]["server_vs_inprocess_tiles_c16"] *= 0.85
    assert compare_results(BASE, noisy).ok


def test_results_that_measure_different_things_are_refused():
    with pytest.raises(ValueError, match="the baseline gates nothing"):
        compare_results({"gate": {"accuracy": {}}}, BASE)
    declared = {**BASE, "benchmark": "accuracy", "split": "declared"}
    stripped = {**declared, "split": "stripped"}
    with pytest.raises(ValueError, match="the baseline's split is 'declared', the new result's"):
        compare_results(declared, stripped)
    fused_a = {**declared, "fused_methods": ["model"]}
    fused_b = {**declared, "fused_methods": ["model", "artifact"]}
    with pytest.raises(ValueError, match="fused_methods"):
        compare_results(fused_a, fused_b)
    assert compare_results(declared, BASE).ok  # a result that does not say is compared


@pytest.mark.parametrize(
    "kind,name,value",
    [("accuracy", "model@none.ap", 0.90), ("speed_ratio", "server_vs_inprocess_tiles_c16", 0.5)],
)
def test_degraded_result_fails(kind, name, value):
    bad = copy.deepcopy(BASE)
    bad["gate"][kind][name] = value
    gate = compare_results(BASE, bad)
    assert not gate.ok and name in gate.failures[0]


def test_missing_metric_fails():
    bad = copy.deepcopy(BASE)
    del bad["gate"]["accuracy"]["fused@jpeg:75.ap"]
    assert "missing" in compare_results(BASE, bad).failures[0]


def test_a_nan_is_not_a_measurement_on_either_side():
    bad = copy.deepcopy(BASE)
    bad["gate"]["accuracy"]["fused@jpeg:75.ap"] = float("nan")
    assert "nan in the new result (not measured)" in compare_results(BASE, bad).failures[0]
    with pytest.raises(
        ValueError, match=r"the baseline's gate\.accuracy\.fused@jpeg:75\.ap is nan"
    ):
        compare_results(bad, BASE)


@pytest.mark.parametrize(
    "gate,reason",
    [
        (5, "'gate' must be an object, got int"),
        ({"accuracy": 5}, "gate.accuracy must be an object"),
        ({"accuracy": {"ap": "high"}}, "gate.accuracy.ap must be a number, got 'high'"),
        ({"speed_ratio": {"r": True}}, "gate.speed_ratio.r must be a number, got True"),
        # an OverflowError traceback, exit 1, before
        ({"accuracy": {"ap": 10**400}}, "gate.accuracy.ap is an integer too large for a float"),
    ],
)
def test_a_malformed_gate_is_a_clear_error_not_a_regression(tmp_path, gate, reason):
    """Exit 1 means "regressed" to CI: a broken result file must exit 2 with its reason."""
    base, broken = tmp_path / "base.json", tmp_path / "broken.json"
    base.write_text(json.dumps(BASE))
    broken.write_text(json.dumps({"gate": gate}))
    cmd = [sys.executable, "-m", "detector.cli", "bench", "compare", str(base), str(broken)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and reason in run.stderr and "Traceback" not in run.stderr


def test_cli_exit_codes(tmp_path):
    base, bad = tmp_path / "base.json", tmp_path / "bad.json"
    base.write_text(json.dumps(BASE))
    degraded = copy.deepcopy(BASE)
    degraded["gate"]["accuracy"]["model@none.ap"] = 0.5
    bad.write_text(json.dumps(degraded))
    cmd = [sys.executable, "-m", "detector.cli", "bench", "compare"]
    ok = subprocess.run([*cmd, str(base), str(base)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "gate: PASS" in ok.stdout
    fail = subprocess.run([*cmd, str(base), str(bad)], capture_output=True, text=True, timeout=60)
    assert fail.returncode == 1 and "REGRESSION" in fail.stdout
    broken = subprocess.run(
        [*cmd, str(base), str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode == 2 and "cannot read result" in broken.stderr


def test_load_generator_refuses_non_loopback_targets():
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://example.com:8000", score_payload([b"x"]), 1, requests=1, seconds=1)


@pytest.mark.parametrize(
    "kind, old, new, tol",
    [("accuracy", 0.8, 0.7, 0.1), ("speed_ratio", 0.8, 0.6, 0.25)],
)
def test_a_drop_of_exactly_the_tolerance_passes(kind, old, new, tol):
    """0.8 - 0.1 and 0.8 * 0.75 land a hair off 0.7 and 0.6 in floating point: a drop the
    tolerance allows failed the gate."""
    base = {"gate": {kind: {"m": old}}}
    result = {"gate": {kind: {"m": new}}}
    gate = compare_results(base, result, accuracy_tol=tol, speed_tol=tol)
    assert gate.ok, gate.failures
    worse = {"gate": {kind: {"m": new - 1e-4}}}
    assert not compare_results(base, worse, accuracy_tol=tol, speed_tol=tol).ok


def test_a_server_that_never_answers_ends_the_run_as_errors(monkeypatch):
    """A server that accepts and never answers held `bench load` for 50 minutes (a 300 s
    timeout per request, ten warm-up requests one after another)."""
    import socket
    import threading

    import benchmarks.loadgen as loadgen

    monkeypatch.setattr(loadgen, "_MARGIN_S", 1.0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        payload = score_payload([b"\xff\xd8 not an image"], "model")
        result = run_load(f"http://127.0.0.1:{port}", payload, 2, seconds=1.0, warmup=10)
        assert result.errors == result.requests >= 1 and result.status_codes == {"0": result.errors}
    finally:
        stop.set()
        thread.join(5)
        for sock in held:
            sock.close()
        listener.close()


def test_an_http_payload_is_refused_for_a_grpc_url():
    """`bench load --url grpc://...` sent HTTP requests to it: every one 'connection failed'."""
    payload = score_payload([b"x"], "model")
    with pytest.raises(ValueError, match="a HTTP payload needs a http:// URL"):
        run_load("grpc://127.0.0.1:1", payload, 1, seconds=0.1)


def test_a_server_answering_200_with_something_else_is_not_measured():
    """Any 200 counted as a success: a stub answering 'hello' measured 321 items/s."""
    import http.server
    import threading

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ValueError, match="answered 200 with something other than"):
            run_load(url, score_payload([b"x"], "model"), 1, seconds=0.5)
    finally:
        server.shutdown()
        server.server_close()


def test_runs_on_other_data_models_or_machines_are_compared_with_a_note():
    """A result on a hand-picked 24-image set, on another CPU, passed against the baseline
    with no word that they measured different things."""
    base = {**BASE, "data": "runs/corpus-tiny/manifest.csv", "device": {"cpu": "Xeon"}}
    new = {**BASE, "data": "mine.csv", "device": {"cpu": "EPYC"}}
    gate = compare_results(base, new)
    assert gate.ok and len(gate.notes) == 2
    assert "the baseline's data is 'runs/corpus-tiny/manifest.csv'" in gate.render()
    assert "the baseline's device is {'cpu': 'Xeon'}" in gate.render()
    assert compare_results(base, base).notes == []


@pytest.mark.parametrize("empty", [[], 0, ""])
def test_a_gate_kind_that_is_empty_but_not_absent_is_refused(tmp_path, empty):
    """A baseline's gate.accuracy of [], 0 or "" passed as no accuracy metric at all."""
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"gate": {"accuracy": empty, "speed_ratio": {"r": 1.0}}}))
    with pytest.raises(ValueError, match=r"gate\.accuracy must be an object"):
        load_result(path)
    path.write_text(json.dumps({"gate": {"accuracy": None, "speed_ratio": {"r": 1.0}}}))
    assert load_result(path)["gate"]["speed_ratio"] == {"r": 1.0}  # absent: gates no accuracy


def test_a_failed_metric_prints_differently_from_its_floor():
    """0.87996 against a floor of 0.88 printed `new 0.8800 floor 0.8800` beside REGRESSION."""
    base = {"gate": {"accuracy": {"m@none.ap": 0.9}}}
    near = {"gate": {"accuracy": {"m@none.ap": 0.87996}}}
    gate = compare_results(base, near, accuracy_tol=0.02)
    (line,) = gate.failures
    new, floor = re.search(r"new\s+(\S+)\s+floor\s+(\S+)", line).groups()
    assert (new, floor) == ("0.87996", "0.88000")
    # a drop of exactly the tolerance (a floor a hair off in floating point) prints as before
    exact = compare_results({"gate": {"accuracy": {"m": 0.8}}}, {"gate": {"accuracy": {"m": 0.7}}},
                            accuracy_tol=0.1)  # fmt: skip
    assert exact.ok and "new   0.7000  floor   0.7000" in exact.checked[0]


def test_peers_runs_with_other_server_settings_are_refused_or_noted():
    """A CUDA fp16 run passed against a CPU fp32 baseline, and an 8-process server against a
    1-process one, without a word."""
    peers = {**BASE, "benchmark": "peers", "engine_args": ["--device", "cpu", "--precision", "fp32"],
             "server_processes": 1, "client_processes": 1}  # fmt: skip
    cuda = {**peers, "engine_args": ["--device", "cuda", "--precision", "fp16"]}
    with pytest.raises(ValueError, match="the baseline's engine_args is"):
        compare_results(peers, cuda)
    with pytest.raises(
        ValueError, match="the baseline's server_processes is 1, the new result's 8"
    ):
        compare_results(peers, {**peers, "server_processes": 8})
    gate = compare_results(peers, {**peers, "client_processes": 4})
    assert gate.ok and gate.notes == [
        "the baseline's client_processes is 1, the new result's 4: the gate compares them all "
        "the same"
    ]
    assert compare_results(peers, BASE).ok  # an older result that does not record them


def test_the_same_fused_methods_in_another_order_are_compared():
    a = {**BASE, "benchmark": "accuracy", "fused_methods": ["model", "artifact"]}
    b = {**a, "fused_methods": ["artifact", "model"]}
    assert compare_results(a, b).ok
    with pytest.raises(ValueError, match="fused_methods"):
        compare_results(a, {**a, "fused_methods": ["artifact"]})


def test_models_are_compared_by_sha256_and_an_older_baseline_is_noted():
    """The quick profile recorded its model as a bare path: the gate could not tell another
    model from the same one elsewhere."""
    model = {"path": "/a/default", "name": "net", "onnx_sha256": "ab" * 32}
    moved = {**model, "path": "/b/default"}
    other = {**model, "onnx_sha256": "cd" * 32}
    assert compare_results({**BASE, "model": model}, {**BASE, "model": moved}).notes == []
    (note,) = compare_results({**BASE, "model": model}, {**BASE, "model": other}).notes
    assert "another model (sha256 abababababab vs cdcdcdcdcdcd)" in note
    older = {**BASE, "model": "/a/default"}  # quick-baseline.json before it recorded the sha256
    gate = compare_results(older, {**BASE, "model": model})
    assert gate.ok
    assert gate.notes == [
        "the baseline's model '/a/default' has no sha256 (an older result): the gate cannot tell "
        "whether both ran the same model"
    ]
