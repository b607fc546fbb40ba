from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serving.batcher import BatcherConfig, BatchingEngine, EngineTimeout, QueueFull, take_batch

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "sizes,limit,expected",
    [
        ([], 8, 0),
        ([3], 8, 1),
        ([3, 4, 2], 8, 2),
        ([3, 5], 8, 2),
        ([9, 1], 8, 1),
        ([1] * 20, 8, 8),
        ([8, 1], 8, 1),
    ],
)
def test_take_batch(sizes, limit, expected):
    assert take_batch(sizes, limit) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_queue_delay_us": -1},
        {"max_batch_size": 8, "max_queue_tiles": 4},
    ],
)
def test_bad_settings_fail_at_construction(kwargs):
    with pytest.raises(ValueError):
        BatcherConfig(**kwargs)


class _Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay = delay

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        self.calls.append(len(tiles))
        time.sleep(self.delay)
        return tiles.reshape(len(tiles), -1).sum(axis=1).astype(np.float32)


def test_concurrent_requests_are_batched_and_routed_back():
    rec = _Recorder(delay=0.01)
    engine = BatchingEngine(rec, BatcherConfig(max_batch_size=16, max_queue_delay_us=20_000))
    inputs = [np.full((1 + i % 3, 2), float(i), np.float32) for i in range(30)]
    outputs: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        outputs[i] = engine.run(inputs[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    for i, x in enumerate(inputs):
        np.testing.assert_array_equal(outputs[i], x.sum(axis=1))
    assert max(rec.calls) > 3, "requests were batched together"
    assert max(rec.calls) <= 16


def test_oversized_request_runs_in_chunks():
    rec = _Recorder()
    engine = BatchingEngine(
        rec, BatcherConfig(max_batch_size=4, max_queue_delay_us=0, max_queue_tiles=64)
    )
    out = engine.run(np.ones((10, 3), np.float32))
    engine.close()
    assert out.tolist() == [3.0] * 10 and rec.calls == [4, 4, 2]


def test_full_queue_refuses_at_once():
    gate = threading.Event()

    def slow(tiles):
        gate.wait(5)
        return np.zeros(len(tiles), np.float32)

    engine = BatchingEngine(
        slow, BatcherConfig(max_batch_size=2, max_queue_delay_us=0, max_queue_tiles=4)
    )
    first = engine.submit(np.zeros((2, 1), np.float32))  # taken by the engine thread, blocked
    time.sleep(0.05)
    engine.submit(np.zeros((4, 1), np.float32))  # fills the queue
    start = time.perf_counter()
    with pytest.raises(QueueFull):
        engine.submit(np.zeros((1, 1), np.float32))
    # not blocked until the engine frees a slot (5 s); 1 s of slack for a loaded CI machine
    assert time.perf_counter() - start < 1.0
    gate.set()
    assert first.result(5).shape == (2,)
    engine.close()


def test_engine_errors_reach_every_request_of_the_batch():
    def broken(tiles):
        raise RuntimeError("engine exploded")

    engine = BatchingEngine(broken, BatcherConfig(max_batch_size=8, max_queue_delay_us=0))
    with pytest.raises(RuntimeError, match="exploded"):
        engine.run(np.zeros((2, 1), np.float32))
    engine.close()


def test_close_drains_queued_work():
    rec = _Recorder(delay=0.02)
    engine = BatchingEngine(rec, BatcherConfig(max_batch_size=1, max_queue_delay_us=0))
    futures = [engine.submit(np.ones((1, 1), np.float32)) for _ in range(5)]
    engine.close(drain=True)
    assert all(f.result(1).tolist() == [1.0] for f in futures)
    with pytest.raises(QueueFull):
        engine.submit(np.ones((1, 1), np.float32))


def test_deadline_gives_up_and_takes_queued_tiles_back():
    gate = threading.Event()

    def engine(tiles):
        gate.wait(5)
        return tiles.reshape(len(tiles), -1)[:, 0]

    eng = BatchingEngine(
        engine,
        BatcherConfig(max_batch_size=4, max_queue_delay_us=0, max_queue_tiles=8, deadline_s=0.05),
    )
    with pytest.raises(EngineTimeout, match="within 50 ms"):
        eng.run(np.ones((4, 1)))  # taken by the engine, which hangs past the deadline
    with pytest.raises(EngineTimeout):
        eng.run(np.ones((3, 1)))  # waits in the queue behind it past its deadline
    assert eng.queued_tiles == 0  # it left the queue
    gate.set()  # the engine finishes the abandoned batch without tripping over it
    np.testing.assert_array_equal(eng.run(np.arange(2.0).reshape(2, 1)), [0.0, 1.0])
    eng.close()
    with pytest.raises(ValueError, match="deadline"):
        BatcherConfig(deadline_s=0)


def test_async_requests_are_answered_with_one_loop_callback_per_batch():
    """From an event loop: each request gets its own slice, one batch wakes the loop once,
    a request its caller gave up on does not keep the others from their answers."""
    import asyncio

    rec = _Recorder(delay=0.05)
    engine = BatchingEngine(rec, BatcherConfig(max_batch_size=64, max_queue_delay_us=50_000))

    async def main() -> tuple[list, int]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counted(*args, **kwargs):
            nonlocal wakeups
            wakeups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        inputs = [np.full((1 + i % 3, 2), float(i), np.float32) for i in range(12)]
        futures = [engine.submit_async(x) for x in inputs]
        futures[5].cancel()  # its caller's deadline passed
        done = await asyncio.gather(*futures, return_exceptions=True)
        return list(zip(inputs, done, strict=True)), wakeups

    pairs, wakeups = asyncio.run(main())
    engine.close()
    assert rec.calls == [sum(1 + i % 3 for i in range(12))]  # one batch
    assert wakeups == 1
    for i, (x, out) in enumerate(pairs):
        if i == 5:
            assert isinstance(out, asyncio.CancelledError)
        else:
            np.testing.assert_array_equal(out, x.sum(axis=1))


def test_async_requests_learn_engine_errors_and_a_stop():
    import asyncio

    def broken(tiles: np.ndarray) -> np.ndarray:
        raise RuntimeError("engine exploded")

    engine = BatchingEngine(broken, BatcherConfig(max_batch_size=8, max_queue_delay_us=1000))

    async def failing() -> None:
        with pytest.raises(RuntimeError, match="engine exploded"):
            await asyncio.gather(*(engine.submit_async(np.ones((2, 2), np.float32))
                                   for _ in range(3)))  # fmt: skip

    asyncio.run(failing())
    engine.close()

    gate = threading.Event()
    slow = BatchingEngine(lambda t: (gate.wait(5), t.sum(axis=1))[1],
                          BatcherConfig(max_batch_size=2, max_queue_delay_us=0))  # fmt: skip

    async def stopped() -> list:
        running = slow.submit_async(np.ones((2, 2), np.float32))  # takes the engine
        await asyncio.sleep(0.05)
        queued = [slow.submit_async(np.ones((2, 2), np.float32)) for _ in range(3)]
        threading.Thread(target=slow.close, kwargs={"drain": False}).start()
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(running, *queued, return_exceptions=True)

    first, *rest = asyncio.run(stopped())
    np.testing.assert_array_equal(first, [2, 2])
    assert all(isinstance(r, QueueFull) and "server stopped" in str(r) for r in rest)


def test_a_request_withdrawn_while_its_batch_waits_does_not_stop_the_engine():
    """The only queued request withdrawn during the queue delay (a tensor request past its
    work timeout, while others that might join still run): the engine thread took an empty
    batch, failed on it and died, and every later request waited for ever."""
    rec = _Recorder()
    engine = BatchingEngine(
        rec,
        BatcherConfig(max_batch_size=16, max_queue_delay_us=500_000),
        upstream=lambda: 5,  # others may still join: the batch waits out its delay
    )
    try:
        gone = engine.submit(np.ones((1, 2), np.float32))
        time.sleep(0.1)
        engine.withdraw(gone)
        time.sleep(0.6)  # past the delay the withdrawn request would have waited
        assert engine._thread.is_alive()
        out = engine.run(np.full((2, 2), 3.0, np.float32), deadline=5.0)
        np.testing.assert_allclose(out, [6.0, 6.0])
        assert rec.calls == [2]  # the withdrawn tile never ran
    finally:
        engine.close()


def test_a_request_behind_others_can_be_withdrawn():
    """Withdrawing a request that is not first in the queue compared it with those ahead of
    it, tiles and all (a dataclass's generated __eq__): ValueError, the request never left
    the queue and its tiles still ran."""
    rec = _Recorder()
    engine = BatchingEngine(
        rec, BatcherConfig(max_batch_size=64, max_queue_delay_us=2_000_000), upstream=lambda: 9
    )
    try:
        ahead = [engine.submit(np.ones((n, 2), np.float32)) for n in (1, 2, 3)]
        gone = engine.submit(np.ones((4, 2), np.float32))
        engine.withdraw(gone)
        assert gone.cancelled() and engine.queued_tiles == 6
        for fut in ahead:
            fut.result(timeout=5)
        assert rec.calls == [6]  # the withdrawn request's 4 tiles never ran
    finally:
        engine.close()
