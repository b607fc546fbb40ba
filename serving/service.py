"""The scoring service behind the HTTP server: models, batcher, worker pool, metrics.

No HTTP here: handlers in ``serving.app`` translate requests into calls on a ``Service`` and
its results back into responses. The model method's engine is replaced by the dynamic batcher,
so a request's tiles are batched with other requests' tiles on their way to the engine, for
``/v1/score``, for the BYTES model and for the tensor model alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from detector.bundled import DEFAULT_MODEL
from detector.engine import ModelBundle, load_bundle
from detector.fusion import Verdict
from detector.image import DecodeLimits, ImageError, image_size
from detector.memory import MemoryStore
from detector.methods import default_method_names
from detector.model_io import BYTES_MODEL, TENSOR_MODEL, ModelDescription, bytes_model, tensor_model
from detector.pipeline import Detector
from serving.batcher import BatcherConfig, BatchingEngine, EngineTimeout, QueueFull
from serving.processes import METRICS_DIR_ENV
from serving.review import ReviewConfig, ReviewError, ReviewQueue

__all__ = ["Service", "ServiceConfig", "Unavailable", "WorkTimeout", "gather_or_cancel"]

log = logging.getLogger("synthdetect.server")


class Unavailable(Exception):
    """The service cannot take this work now (overloaded, shutting down): retry later. HTTP
    answers 503 with Retry-After, gRPC UNAVAILABLE."""

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class WorkTimeout(Unavailable):
    """The work did not finish within ``work_timeout_s`` (gRPC: DEADLINE_EXCEEDED)."""


@dataclass(frozen=True)
class ServiceConfig:
    model: Path | None = None  # default: the bundled model
    device: str = "cpu"  # cpu, cuda or tensorrt (ONNX Runtime's TensorRT provider)
    precision: str = "fp32"  # torch engine only
    cuda_graphs: bool = False  # torch engine on CUDA only
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    workers: int = 32  # threads that decode, run the per-image methods and wait for batches
    max_inflight: int = 256  # requests being served at once; more get 503
    work_timeout_s: float = 60.0  # a request's decoding and scoring past this: WorkTimeout
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    methods: tuple[str, ...] | None = None  # default for /v1/score: every available method
    spinning: bool = True  # ONNX Runtime's busy-waiting threads: lower latency (measured)
    threads: int | None = None  # ONNX Runtime intra-op threads (default: every usable core)
    max_tiles: int | None = None  # tiles per image for /v1/score (default: the model's own)
    # Decoded pixels of the images being scored at once, at most (a 10 KB PNG can declare 80
    # MP, ~1 GB while it is scored): past it, images wait for room; one larger image runs alone.
    max_pixels_in_flight: int = 160_000_000
    # /v1/score?methods=model: JPEGs decoded and tiled by torchvision (nvJPEG on the GPU);
    # None: on with --device cuda/tensorrt, off on the CPU (where it is the parity reference).
    gpu_decode: bool | None = None
    memory_db: Path | None = None  # known-image memory: confirmed images decide the verdict
    review_db: Path | None = None  # review queue (and the memory, unless memory_db is given)
    review: ReviewConfig = field(default_factory=ReviewConfig)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_inflight < 1:
            raise ValueError("workers and max_inflight must be >= 1")


class PixelBudget:
    """Decoded pixels in flight across requests, bounded: ``hold(n)`` waits until ``n`` more
    fit (an image larger than the whole budget waits until nothing else is in flight), and
    gives up after ``timeout`` seconds with ``QueueFull`` (the server answers 503)."""

    def __init__(self, capacity: int, timeout: float = 30.0) -> None:
        self.capacity, self.timeout = capacity, timeout
        self.used = self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with self._cond:
            fits = lambda: self.used == 0 or self.used + pixels <= self.capacity  # noqa: E731
            if not self._cond.wait_for(fits, self.timeout):
                raise QueueFull(
                    f"{pixels / 1e6:.0f} MP waited {self.timeout:.0f} s for room among the "
                    f"{self.used / 1e6:.0f} MP being scored"
                )
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "synthdetect_requests", "HTTP requests", ["endpoint", "code"], registry=self.registry
        )
        self.degraded = Counter(
            "synthdetect_degraded_verdicts",
            "Verdicts given without a method that failed, by method and error",
            ["method", "error"],
            registry=self.registry,
        )
        self.errors = Counter(
            "synthdetect_errors", "Failed requests by reason", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "synthdetect_request_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch = Histogram(
            "synthdetect_batch_tiles",
            "Tiles per engine call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        # Gauges are summed over live processes under ``serve --processes``.
        self.queue = Gauge(
            "synthdetect_queue_tiles",
            "Tiles waiting for the engine",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            "synthdetect_inflight_requests",
            "Requests being served",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    content_type = CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:
        """Prometheus text: this process's metrics, or, when prometheus_client runs in its
        multiprocess mode (``serve --processes``), every server process's."""
        folder = os.environ.get(METRICS_DIR_ENV)
        if not folder:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, folder)
        return generate_latest(registry)


@dataclass
class ModelStats:
    """Triton-style per-model statistics (counts and nanoseconds)."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    inferences: int = 0  # items (images or tiles)
    executions: int = 0
    last: int = 0


async def gather_or_cancel(*aws):
    """``asyncio.gather``, but when one fails the others are cancelled (and awaited) before the
    error propagates: their queued work is abandoned with them instead of running on for a
    request already answered (``asyncio.TaskGroup`` needs Python 3.11)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _Ticket:
    """A request's admission (``Service.admit(at_work=True)``): held once its work starts."""

    held = False


class _Job:
    abandoned = False  # its caller timed out or was cancelled: skip it if not started


_TICKET: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar(
    "synthdetect_admission", default=None
)
_SKIPPED = object()  # what skipped work returns


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        path = Path(config.model) if config.model else DEFAULT_MODEL
        bundle = load_bundle(
            path,
            device=config.device,
            spinning=config.spinning,
            precision=config.precision,
            cuda_graphs=config.cuda_graphs,
            threads=config.threads,
            max_tiles=config.max_tiles,
        )
        bundle.engine.warmup(bundle.preprocess.input_size, config.batcher.max_batch_size)
        self.active = 0  # scoring tasks that can submit now: the batcher's view (``_running``)
        self._active_lock = threading.Lock()  # worker threads and the event loop count
        self.inflight = 0  # requests admitted (``admit``) and abandoned work still running
        self.closing = False  # queued work is skipped (``close``)
        self.batcher = BatchingEngine(
            bundle.engine.run,
            config.batcher,
            bundle.engine.name,
            self.metrics.batch.observe,
            lambda: self.active,
            self.metrics.queue.set,
        )
        self.batcher.device = bundle.engine.device
        self.bundle: ModelBundle = replace(bundle, engine=self.batcher)
        self.engine_name = bundle.engine.name
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="score")
        self.pixels = PixelBudget(config.max_pixels_in_flight)
        # One memory store per process, shared by every method set (SQLite WAL and the
        # catch-up before each lookup keep processes in step).
        memory_path = config.memory_db or config.review_db
        self.memory = MemoryStore(memory_path) if memory_path else None
        # The review queue writes reviewers' decisions to that memory (by default the same
        # SQLite file holds both).
        self.reviews = (
            ReviewQueue(config.review_db, self.memory, config.review)
            if config.review_db and self.memory
            else None
        )
        always = {"model"} | ({"known_image"} if self.memory else set())
        names = list(config.methods) if config.methods else default_method_names(also=always)
        self.default_methods = names
        self._detectors: dict[tuple[tuple[str, ...], bool], Detector] = {}
        self.detector = self.make_detector(names)
        self.stats = {BYTES_MODEL: ModelStats(), TENSOR_MODEL: ModelStats()}
        self.models: dict[str, ModelDescription] = {
            BYTES_MODEL: bytes_model(),
            TENSOR_MODEL: tensor_model(self.bundle.tensor_io()),
        }
        self.model_failures = 0
        self.model_failure_reason = ""
        self.deadline_misses = 0  # requests in a row whose --deadline-ms passed
        self.ready = True
        # serve --processes: whether every server process is up (they start one by one); a
        # process answers not ready until then, so a load balancer does not send the whole
        # traffic to the first process alone
        self.peers_up: Callable[[], bool] | None = None

    def model_config(self, name: str) -> dict:
        """Triton's configuration of a served model, with this server's batching settings."""
        b = self.config.batcher
        return self.models[name].config(
            b.max_batch_size, b.max_queue_delay_us, self.batcher.device == "cuda"
        )

    # --- the async face every protocol uses -----------------------------------------------

    @contextlib.contextmanager
    def admit(self, at_work: bool = False):
        """One request in flight, at most ``max_inflight`` at once (``Unavailable`` past it).

        ``at_work``: the slot is taken when the request's scoring starts (``run``,
        ``score_tiles``), not on entry: an HTTP body may still be arriving, and 256 uploads
        sending a byte at a time held every slot while scoring sat idle."""
        if not at_work:
            self._take_slot()
            try:
                yield
            finally:
                self._give_slot()
            return
        ticket = _Ticket()
        token = _TICKET.set(ticket)
        try:
            yield
        finally:
            _TICKET.reset(token)
            if ticket.held:
                self._give_slot()

    def _take_slot(self, even_if_full: bool = False) -> None:
        if not even_if_full and self.inflight >= self.config.max_inflight:
            raise Unavailable("server overloaded, retry later")
        self._count_slots(+1)

    def _give_slot(self) -> None:
        self._count_slots(-1)

    def _count_slots(self, change: int) -> None:
        self.inflight += change
        self.metrics.inflight.set(self.inflight)

    def _admitted(self) -> None:
        """Where a request's work starts: its slot, once (``admit(at_work=True)``)."""
        ticket = _TICKET.get()
        if ticket is not None and not ticket.held:
            self._take_slot()
            ticket.held = True

    @contextlib.contextmanager
    def _running(self):
        """``active``: scoring tasks that can submit to the batcher now (on a worker thread,
        or tiles from the event loop), not those still waiting for a thread (the batcher
        waited out its whole delay for them, though they could not join)."""
        with self._active_lock:
            self.active += 1
        try:
            yield
        finally:
            with self._active_lock:
                self.active -= 1

    async def run(self, fn, *args):
        """``fn(*args)`` on a worker thread: work that decodes images or blocks. Past the work
        timeout the caller gets ``WorkTimeout`` at once. Work abandoned so (or by a cancelled
        request) before a thread took it is skipped; work a thread already runs finishes its
        step (a decoder cannot be interrupted), its result dropped, and keeps a slot of
        ``max_inflight`` until then: the queue of work stays bounded under overload."""
        self._admitted()
        loop = asyncio.get_running_loop()
        job = _Job()

        def work():
            if job.abandoned or self.closing:
                return _SKIPPED
            with self._running():
                return fn(*args)

        try:
            future = loop.run_in_executor(self.pool, work)
        except RuntimeError as exc:  # the pool is shut down
            raise Unavailable(f"server is shutting down ({exc})") from None
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # abandoned: no log
        try:
            result = await self._errors(
                asyncio.wait_for(asyncio.shield(future), self.config.work_timeout_s)
            )
        except EngineTimeout as exc:  # the model's own deadline, inside the work: not ours
            self._deadline_missed((f"model: {exc}",))
            raise Unavailable(f"model deadline exceeded: {exc}") from None
        except TimeoutError:
            self._abandon(job, future)
            raise self._timed_out() from None
        except asyncio.CancelledError:
            self._abandon(job, future)
            raise
        if result is _SKIPPED:
            raise Unavailable("server is shutting down")
        return result

    def _abandon(self, job: _Job, future: asyncio.Future) -> None:
        job.abandoned = True
        if not future.done():  # a thread may be running it: its slot is kept until it ends
            self._take_slot(even_if_full=True)
            future.add_done_callback(lambda f: self._give_slot())

    def _timed_out(self) -> WorkTimeout:
        return WorkTimeout(
            f"scoring did not finish within {self.config.work_timeout_s:g} s; retry later", 5
        )

    async def score(
        self, blobs: list[bytes], detector: Detector | None = None
    ) -> list[Verdict | ImageError]:
        return await self.run(self.score_blobs, blobs, detector)

    async def score_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """Tiles go from the event loop straight into the batcher (``submit`` never blocks)
        and the batch's future is awaited: no worker-thread hop for tensor requests. Past the
        work timeout the caller gets ``WorkTimeout`` and the request leaves the queue (a
        batch already running it settles nothing)."""
        self._admitted()

        async def submitted() -> np.ndarray:
            future = self.batcher.submit_async(tiles)
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.config.work_timeout_s)
            except (TimeoutError, asyncio.CancelledError) as exc:
                self.batcher.withdraw(future)
                if isinstance(exc, TimeoutError):
                    raise self._timed_out() from None
                raise

        with self._running():  # counted while it may join a batch
            return await self._errors(submitted())

    async def _errors(self, work):
        try:
            return await work
        except QueueFull as exc:
            raise Unavailable(f"server overloaded: {exc}") from None
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise Unavailable("server is shutting down") from None
            raise

    def make_detector(self, names: list[str], include_prompt: bool = False) -> Detector:
        """A detector over these methods, sharing the batched model (cached per method set)."""
        key = (tuple(names), include_prompt)
        if key not in self._detectors:
            if len(self._detectors) > 64:  # bounded: method sets come from query strings
                self._detectors.clear()
            extra = {"memory_db": self.memory} if self.memory else {}
            self._detectors[key] = Detector(
                names,
                limits=self.config.limits,
                include_prompt=include_prompt,
                bundle=self.bundle,
                **extra,
            )
        return self._detectors[key]

    @property
    def input_size(self) -> int:
        return self.bundle.preprocess.input_size

    def heatmap(self, blob: bytes, overlay: bool = True) -> dict:
        """Per-tile probabilities over the whole image and the overlay PNG (base64), through
        the shared batcher (called from a worker thread)."""
        from detector.heatmap import overlay_png, tile_heatmap
        from detector.image import decode
        from detector.preprocess import too_small

        with self._holding([blob]):  # decoded again: its pixels count against the budget
            image = decode(blob, self.config.limits)
            if too_small(image.pixels):
                return {"error": "too small for the model"}
            heat = tile_heatmap(self.bundle, image.pixels)
            return heat.to_dict(overlay_png(image.pixels, heat) if overlay else None)

    # --- review queue (worker threads; ``self.reviews`` is set) ----------------------------

    def _hashes(self, blob: bytes):
        from detector.image import decode
        from detector.memory import hash_pixels

        with self._holding([blob]):
            return hash_pixels(decode(blob, self.config.limits).pixels, blob, windows=True)

    def queue_review(
        self, blob: bytes, verdict: Verdict, reason: str, actor: str, filename: str | None
    ) -> int | None:
        """Queue a scored image for a reviewer; returns the review id, or None when the queue
        cannot take it (logged: the caller still gets its verdict)."""
        assert self.reviews is not None
        try:
            return self.reviews.submit(
                blob, self._hashes(blob), verdict.to_dict(), reason, actor, filename
            )
        except (ReviewError, OSError, sqlite3.Error, QueueFull) as exc:
            log.error("review queue: could not queue an image: %s", exc)
            return None

    def report(
        self,
        reporter: str,
        reason: str,
        actor: str,
        blob: bytes | None = None,
        sha256: str | None = None,
        filename: str | None = None,
    ) -> tuple[int, Verdict | ImageError | None]:
        """A user's report: an image (scored here) or the sha256 of one already kept."""
        assert self.reviews is not None
        if blob is None:
            return self.reviews.report(reporter, reason, actor, sha256=sha256), None
        (res,) = self.score_blobs([blob])
        if isinstance(res, ImageError):
            return 0, res
        scored = (blob, self._hashes(blob), res.to_dict())
        return self.reviews.report(reporter, reason, actor, scored=scored, filename=filename), res

    def _holding(self, blobs: list[bytes]):
        """The pixel budget's hold for decoding ``blobs``: what their headers declare, within
        the limits decode enforces (every decode of request bytes goes through it)."""
        limits = self.config.limits
        pixels = 0
        for blob in blobs:
            w, h = image_size(blob) or (0, 0)
            if max(w, h) <= limits.max_side:  # else decode refuses it before decompressing
                pixels += min(w * h, limits.max_pixels)
        return self.pixels.hold(pixels)

    def score_blobs(
        self, blobs: list[bytes], detector: Detector | None = None
    ) -> list[Verdict | ImageError]:
        """Decode and score (called from a worker thread; blocks on the pixel budget and the
        batcher)."""
        detector = detector or self.detector
        with self._holding(blobs):
            if self.gpu_decode and detector.method_names == ["model"]:
                out = self._score_model_only(blobs, detector)
            else:
                out = detector.score_bytes(blobs)
        for v in out:
            if not isinstance(v, Verdict):
                continue
            for r in v.results:
                if "failure" in r.details:
                    self.metrics.degraded.labels(r.method, r.details["failure"]).inc()
                if r.method != "model":
                    continue
                if r.details.get("failure") == EngineTimeout.__name__:
                    self._deadline_missed(v.degraded)
                else:
                    self._model_health("failure" not in r.details, v.degraded)
        return out

    @property
    def gpu_decode(self) -> bool:
        if self.config.gpu_decode is not None:
            return self.config.gpu_decode
        return self._torch_sees_cuda  # on by default where torch can decode on the GPU

    @functools.cached_property
    def _torch_sees_cuda(self) -> bool:
        """``--device cuda`` may be ONNX Runtime's GPU build beside a CPU-only torch: then
        the GPU decoder (torchvision) is off by default, not a failing path."""
        if self.config.device not in ("cuda", "tensorrt"):
            return False
        try:
            import torch

            return bool(torch.cuda.is_available())
        except Exception:  # no torch, or a broken CUDA install: decode on the CPU
            return False

    def _score_model_only(
        self, blobs: list[bytes], detector: Detector
    ) -> list[Verdict | ImageError]:
        """The model alone on JPEGs decoded and tiled by ``detector.gpu_decode``; whatever it
        does not take (or a failing engine) goes through the detector as usual."""
        from detector.gpu_decode import GpuTiles, gpu_tiles
        from detector.pipeline import fuse_results

        device = "cuda" if self.config.device in ("cuda", "tensorrt") else "cpu"
        prepared = gpu_tiles(blobs, self.bundle.preprocess, self.config.limits, device)
        out: list[Verdict | ImageError | None] = [
            p if isinstance(p, ImageError) else None for p in prepared
        ]
        fast = [i for i, p in enumerate(prepared) if isinstance(p, GpuTiles)]
        if fast:
            model = detector.methods[0]
            try:
                results = model.score_tiles([prepared[i].tiles for i in fast])  # type: ignore[attr-defined,union-attr]
            except Exception:  # the usual path gives a degraded verdict with the reason
                results = None
            if results is not None:
                for i, res in zip(fast, results, strict=True):
                    verdict = fuse_results([res], detector.bands)
                    out[i] = replace(
                        verdict,
                        image=prepared[i].info,  # type: ignore[union-attr]
                        timings_ms={"model": res.seconds * 1000},
                    )
        rest = [i for i, v in enumerate(out) if v is None]
        if rest:
            for i, v in zip(rest, detector.score_bytes([blobs[i] for i in rest]), strict=True):
                out[i] = v
        return out  # type: ignore[return-value]

    # Readiness: after UNHEALTHY_AFTER model failures in a row the server says it is not ready
    # (load balancers route around it; verdicts still come from the other methods) until the
    # model answers again: a scored request, or the probe the readiness check itself runs.
    # A request's deadline (--deadline-ms) passing is the client's budget spent, not a failure:
    # misses count apart (``_deadline_missed``), and the probe has its own wait.
    UNHEALTHY_AFTER = 3
    PROBE_TIMEOUT_S = 5.0

    def _model_health(self, ok: bool, reasons: tuple[str, ...] = ()) -> None:
        if ok:
            self.model_failures, self.model_failure_reason = 0, ""
            self.deadline_misses = 0
        else:
            self.model_failures += 1
            self.model_failure_reason = _model_reason(reasons)

    def _deadline_missed(self, reasons: tuple[str, ...]) -> None:
        """A request's deadline passed: not a failure, but as many in a row as make a model
        unhealthy, with no answer between, send readiness to probe it (a slow model answers
        the probe and is ready again; a hung one does not)."""
        self.deadline_misses += 1
        self.model_failure_reason = self.model_failure_reason or _model_reason(reasons)

    @property
    def model_healthy(self) -> bool:
        return (
            self.model_failures < self.UNHEALTHY_AFTER
            and self.deadline_misses < self.UNHEALTHY_AFTER
        )

    async def probe_model(self) -> bool:
        """One tile through the batcher: does the model answer now? Submitted from the event
        loop, not through the worker pool, so that a readiness check never waits behind the
        queue of decoding work (it waited seconds under load)."""
        size = self.bundle.preprocess.input_size
        # Not the requests' deadline, and well inside the work timeout, so that a hung model
        # reads "not ready, because" rather than a timed-out check.
        wait = min(self.PROBE_TIMEOUT_S, self.config.work_timeout_s / 2)
        try:
            fut = self.batcher.submit_async(np.zeros((1, 3, size, size), np.float32))
            try:
                await asyncio.wait_for(asyncio.shield(fut), wait)
            except TimeoutError:
                self.batcher.withdraw(fut)  # the tile leaves the queue
                self._model_health(False, (f"model: no answer to a probe within {wait:g} s",))
                return False
        except Exception as exc:
            self._model_health(False, (f"model: {type(exc).__name__}: {exc}",))
            return False
        self._model_health(True)
        return True

    async def readiness(self) -> str | None:
        """Why the server is not ready, or None when it is: the one answer of every readiness
        check (the server's and each model's, over HTTP and gRPC)."""
        if not self.ready:
            return "shutting down"
        if self.peers_up is not None and not self.peers_up():
            return "starting: not every server process is up yet"
        if self.model_healthy or await self.probe_model():
            return None
        return f"model unhealthy: {self.model_failure_reason or 'the model keeps failing'}"

    def record(self, model: str, ok: bool, started: float, items: int) -> None:
        st = self.stats[model]
        ns = int((time.perf_counter() - started) * 1e9)
        if ok:
            st.success += 1
            st.success_ns += ns
            st.inferences += items
            st.executions += 1
        else:
            st.fail += 1
            st.fail_ns += ns
        st.last = int(time.time() * 1000)

    def stopping(self) -> None:
        """The server was told to stop: readiness answers "shutting down" from now on, while
        the work in flight drains (``close`` follows)."""
        self.ready = False

    def close(self) -> None:
        """Drain: work a thread runs finishes, work still queued is skipped (its requests
        were answered or cut off by the server's shutdown), queued batches finish."""
        self.ready = False
        self.closing = True
        self.pool.shutdown(wait=True)
        self.batcher.close(drain=True)
        if self.reviews is not None:
            self.reviews.close()
        if self.memory is not None:
            self.memory.close()


def _model_reason(reasons: tuple[str, ...]) -> str:
    """The model's line among a verdict's degraded reasons ("" when it has none)."""
    return next((r for r in reasons if r.startswith("model:")), "")
