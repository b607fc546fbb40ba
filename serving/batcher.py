"""Dynamic batching: tiles from many requests, one engine call.

Requests (each a stack of tiles) wait in a bounded queue. One engine thread per device takes
the oldest request, then keeps taking requests until the batch would exceed ``max_batch_size``
tiles or ``max_queue_delay_us`` has passed since the oldest arrived, runs the engine once, and
hands each request its slice of the logits. A full queue rejects at once (``QueueFull``), so
overload costs a fast 503 instead of unbounded memory and latency.

Requests submitted from an event loop (``submit_async``) are answered with one callback per
loop per batch, not one per request: each cross-thread callback wakes the loop through its
self-pipe, and a profile of the tiles model at 16 clients put 5% of the server's samples there.

``take_batch`` is the decision, a plain function with its own tests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from detector.pipeline import Overloaded

log = logging.getLogger(__name__)

__all__ = ["BatcherConfig", "BatchingEngine", "EngineTimeout", "QueueFull", "take_batch"]


class EngineTimeout(TimeoutError):
    """The engine did not answer a request within the deadline."""


class QueueFull(Overloaded):
    """The request queue is at capacity; the caller should answer 503 and retry later."""


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 32  # tiles per engine call
    max_queue_delay_us: int = 2000
    max_queue_tiles: int = 4096  # bound on tiles waiting; beyond it requests are refused
    # A request's longest wait for its logits (queue + engine); past it the caller gets
    # EngineTimeout and its tiles leave the queue if they have not started. None: no limit.
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline must be > 0, got {self.deadline_s}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.max_queue_tiles < self.max_batch_size:
            raise ValueError("max_queue_tiles must be at least max_batch_size")


def take_batch(sizes: Sequence[int], max_batch_size: int) -> int:
    """How many queued requests (oldest first) form the next batch.

    Requests are never split between batches, except that the oldest is always taken even
    when it alone exceeds the batch size (the engine then runs it in chunks).
    """
    if not sizes:
        return 0
    total, count = sizes[0], 1
    for size in sizes[1:]:
        if total + size > max_batch_size:
            break
        total += size
        count += 1
    return count


@dataclass(eq=False)  # by identity: a generated __eq__ would compare the tiles' arrays
class _Request:
    tiles: np.ndarray
    future: Future | asyncio.Future
    loop: asyncio.AbstractEventLoop | None = None  # set: ``future`` belongs to this loop
    arrived: float = field(default_factory=time.monotonic)


_Outcome = tuple["Future | asyncio.Future", object, "BaseException | None"]


def _settle(fut: Future | asyncio.Future, result: object = None, exc: BaseException | None = None):
    """Complete a request's future unless its caller gave up on it (deadline, cancelled)."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except (InvalidStateError, asyncio.InvalidStateError):  # cancelled meanwhile
        pass


def _settle_all(outcomes: list[_Outcome]) -> None:
    for fut, result, exc in outcomes:
        _settle(fut, result, exc)


def _answer(answers: list[tuple[_Request, object, BaseException | None]]) -> None:
    """Settle each (request, result, error): thread futures at once, loop futures in one
    callback per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for req, result, exc in answers:
        if req.loop is None:
            _settle(req.future, result, exc)
        else:
            by_loop.setdefault(req.loop, []).append((req.future, result, exc))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: no one is left to answer
            loop.call_soon_threadsafe(_settle_all, items)


class BatchingEngine:
    """Thread-safe front of an engine: ``run(tiles)`` blocks until its batch has run.

    ``observe`` is called with each batch's tile count (for metrics).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        config: BatcherConfig,
        name: str = "engine",
        observe: Callable[[int], None] | None = None,
        upstream: Callable[[], int] | None = None,
        queued: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        # ``queued(n)``: told the tiles waiting at every change (a metrics gauge, say)
        self._report_queued = queued or (lambda n: None)
        # ``upstream()``: requests in the host that may still submit tiles (decoding, say).
        # When none can, waiting out the queue delay only adds latency, so the batch runs.
        self._upstream = upstream
        self.config = config
        self.name = name
        self.device = "cpu"
        self._observe = observe or (lambda n: None)
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_tiles = 0
        self._running = 0  # requests in the batch the engine is running
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_tiles(self) -> int:
        return self._queued_tiles

    def _set_queued(self, n: int) -> None:  # under ``_cond``
        self._queued_tiles = n
        try:
            self._report_queued(n)
        except Exception:  # a metrics hiccup must not stop the engine thread
            log.exception("batcher %s: could not report the queue length", self.name)

    def submit(self, tiles: np.ndarray) -> Future:
        """Queue ``tiles``; the future (for any thread) holds their logits."""
        return self._enqueue(_Request(tiles, Future()))

    def submit_async(self, tiles: np.ndarray) -> asyncio.Future:
        """``submit`` from inside a running event loop: the future belongs to that loop, and
        a batch answers all its requests from one loop with one callback."""
        loop = asyncio.get_running_loop()
        return self._enqueue(_Request(tiles, loop.create_future(), loop))

    def _enqueue(self, req: _Request):
        n = len(req.tiles)
        if n == 0:
            req.future.set_result(np.zeros(0, np.float32))
            return req.future
        with self._cond:
            if self._closed:
                raise QueueFull("server is shutting down")
            # A request larger than the whole bound is still served when nothing waits.
            if self._queued_tiles and self._queued_tiles + n > self.config.max_queue_tiles:
                raise QueueFull(f"queue full ({self._queued_tiles} tiles waiting)")
            self._queue.append(req)
            self._set_queued(self._queued_tiles + n)
            self._cond.notify()
        return req.future

    def run(self, tiles: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Engine interface: block until this request's logits are ready (at most the
        deadline, the configured one unless given: then ``EngineTimeout``, and the request
        leaves the queue if still in it)."""
        fut = self.submit(tiles)
        deadline = self.config.deadline_s if deadline is None else deadline
        try:
            return fut.result(timeout=deadline)
        except FutureTimeout:
            self.withdraw(fut)
            raise EngineTimeout(
                f"the model did not answer within {deadline * 1000:.0f} ms"  # type: ignore[operator]
            ) from None

    def withdraw(self, fut: Future | asyncio.Future) -> None:
        """The caller gave up on this request: out of the queue if still in it (its tiles
        are not run), and its future cancelled (a batch running it settles nothing)."""
        with self._cond:
            for i, req in enumerate(self._queue):
                if req.future is fut:
                    del self._queue[i]
                    self._set_queued(self._queued_tiles - len(req.tiles))
                    break
            fut.cancel()

    def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting work; by default finish what is queued first."""
        with self._cond:
            self._closed = True
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
                self._set_queued(0)
                _answer([(r, None, QueueFull("server stopped")) for r in dropped])
            self._cond.notify_all()
        self._thread.join(timeout)

    # --- the engine thread ----------------------------------------------------------------

    def _next_batch(self) -> list[_Request] | None:
        delay = self.config.max_queue_delay_us / 1e6
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                if (batch := self._wait_for_batch(delay)) is not None:
                    return batch
                # every waiting request was withdrawn meanwhile: wait for the next one

    def _wait_for_batch(self, delay: float) -> list[_Request] | None:
        """Under ``_cond``, with a request queued: wait until a batch is due, take it (None
        if the queue emptied meanwhile: requests withdrawn while the batch waited)."""
        deadline = self._queue[0].arrived + delay
        while True:
            if not self._queue:
                return None
            sizes = [len(r.tiles) for r in self._queue]
            count = take_batch(sizes, self.config.max_batch_size)
            full = count < len(sizes) or sum(sizes[:count]) >= self.config.max_batch_size
            remaining = deadline - time.monotonic()
            nobody_else = (
                self._upstream is not None and self._upstream() <= len(self._queue) + self._running
            )
            if full or remaining <= 0 or self._closed or nobody_else:
                break
            self._cond.wait(min(remaining, 0.0005) if self._upstream is not None else remaining)
        batch = [self._queue.popleft() for _ in range(count)]
        self._set_queued(self._queued_tiles - sum(len(r.tiles) for r in batch))
        self._running = len(batch)
        return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            tiles = np.concatenate([r.tiles for r in batch]) if len(batch) > 1 else batch[0].tiles
            try:
                step = self.config.max_batch_size
                logits = np.concatenate(
                    [self._run(tiles[i : i + step]) for i in range(0, len(tiles), step)]
                )
                self._observe(len(tiles))
            except Exception as exc:  # the engine failed: every request of the batch learns why
                _answer([(r, None, exc) for r in batch])
                with self._cond:
                    self._running = 0
                continue
            ends = np.cumsum([len(r.tiles) for r in batch])
            _answer(
                [(r, logits[e - len(r.tiles) : e], None) for r, e in zip(batch, ends, strict=True)]
            )
            with self._cond:
                self._running = 0
