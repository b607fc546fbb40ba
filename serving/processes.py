"""``synthdetect serve --processes N``: N server processes sharing one port.

One Python process serves HTTP, parses requests and decodes images under one interpreter lock;
on a GPU host that path, not the engine, limits throughput (benchmarks/README.md). With
``--processes N`` a supervisor (this module, in the process the user started) spawns N server
processes. Each loads its own engine and batcher and listens on the same port with
SO_REUSEPORT, so the kernel spreads connections over them; a request is batched with the
other requests of its process.

- Start-up: the ports are checked first (SO_REUSEPORT would let the processes join a server
  that already holds them), then process 0 starts, so a configuration error (bad model) is
  reported once; the others start when it is up. ``--port 0`` is refused (one random port
  per process).
- Signals: SIGINT and SIGTERM to the supervisor are forwarded as SIGTERM; each process drains
  its queue and exits (the servers run in their own process group, so a terminal's Ctrl-C
  reaches them only through the supervisor). If the supervisor is killed, the kernel sends
  its processes SIGTERM (``PR_SET_PDEATHSIG``; a process that finds its supervisor gone
  before that is set exits). A process stopped while still starting ends by the signal: a
  requested stop, exit 0.
- Readiness: every process answers not ready ("starting") until all of them are up, so a
  load balancer does not send the whole traffic to the first one alone.
- Failure: if one process dies, the supervisor stops the others and exits non-zero. A server
  running at 1/N capacity without saying so is worse than a restart by the orchestrator.
- Metrics: ``/metrics`` aggregates every process (prometheus_client's multiprocess mode, in a
  temporary folder removed on exit). Triton statistics (``/v2/models/stats``),
  ``--rate-limit``, ``--max-inflight``, ``--max-queue-tiles``, ``--max-connections`` and
  ``--max-megapixels-in-flight`` count per process.
- ONNX Runtime on the CPU gets ``cores // N`` intra-op threads per process.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import wait

__all__ = ["METRICS_DIR_ENV", "supervise"]

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_STOP_TIMEOUT_S = 45.0  # the servers' own drain timeout is 30 s


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such call
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def ports_free(host: str, ports: list[int | None]) -> str | None:
    """The first of ``ports`` (None, 0: none) that another socket holds on ``host``, as
    ``host:port``, else None. Bound without SO_REUSEPORT, which a listener with it refuses."""
    for port in ports:
        if not port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
            try:
                probe.bind((host, port))
            except OSError:
                return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None


def _child(
    serve_one: Callable[..., int],
    args: argparse.Namespace,
    index: int,
    total: int,
    events: list[mp.synchronize.Event],
    parent: int,
) -> None:
    os.setpgid(0, 0)
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above: nobody to serve
        sys.exit(0)
    sys.exit(
        serve_one(
            args,
            index=index,
            total=total,
            on_started=events[index].set,
            all_started=lambda: all(e.is_set() for e in events),
        )
    )


def supervise(serve_one: Callable[..., int], args: argparse.Namespace, processes: int) -> int:
    """Run ``serve_one(args, index=i, total=processes, on_started=...)`` in ``processes``
    spawned processes until a signal or a failure; returns the exit code."""
    ctx = mp.get_context("spawn")  # no fork: CUDA and ONNX Runtime threads do not survive it
    metrics_dir = tempfile.mkdtemp(prefix="synthdetect-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # read by the children at import
    events = [ctx.Event() for _ in range(processes)]
    procs = [
        ctx.Process(
            target=_child,
            args=(serve_one, args, i, processes, events, os.getpid()),
            name=f"synthdetect-serve-{i}",
        )
        for i in range(processes)
    ]
    stop = {"signal": 0}

    def on_signal(signum: int, frame: object) -> None:
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        procs[0].start()
        started_rest = announced = False
        while not stop["signal"]:
            dead = [p for p in procs if p.pid is not None and p.exitcode is not None]
            if dead:
                p = dead[0]
                code = p.exitcode if p.exitcode and p.exitcode > 0 else 1
                print(
                    f"synthdetect: server process {p.name} (pid {p.pid}) exited with code"
                    f" {p.exitcode}; stopping the others",
                    file=sys.stderr,
                )
                break
            if not started_rest and events[0].is_set():
                for p in procs[1:]:
                    p.start()
                started_rest = True
            if started_rest and not announced and all(e.is_set() for e in events):
                pids = ", ".join(str(p.pid) for p in procs)
                print(
                    f"synthdetect: {processes} server processes up (pids {pids})", file=sys.stderr
                )
                announced = True
            wait([p.sentinel for p in procs if p.pid is not None], timeout=0.2)
    finally:
        stopped = _stop(procs)
        signal.signal(signal.SIGINT, previous[signal.SIGINT])
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop(METRICS_DIR_ENV, None)
    # a process stopped while still starting (before it could drain) ends by the SIGTERM
    # sent to it: a requested stop, not a failure
    failed = [
        p
        for p in procs
        if p.pid is not None
        and p.exitcode not in (0, None)
        and not (p in stopped and p.exitcode == -signal.SIGTERM)
    ]
    if code == 0 and failed:  # a process failed to drain cleanly: said, not only exit 1
        print(
            "synthdetect: "
            + ", ".join(f"{p.name} (pid {p.pid}) exited with code {p.exitcode}" for p in failed),
            file=sys.stderr,
        )
        code = 1
    return code


def _stop(procs: list[mp.Process]) -> list[mp.Process]:
    """SIGTERM to every process still running, then join them; -> the ones signalled."""
    running = [p for p in procs if p.pid is not None and p.exitcode is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    for p in running:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in running:
        if p.exitcode is None:
            print(f"synthdetect: {p.name} did not drain in time; killing it", file=sys.stderr)
            p.kill()
            p.join()
    return running
