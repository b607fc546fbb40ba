"""The pixel budget: decoded pixels in flight across requests stay bounded."""

from __future__ import annotations

import threading
import time

import pytest

from serving.batcher import QueueFull
from serving.service import PixelBudget

pytestmark = pytest.mark.unit


def test_holds_wait_for_room_and_a_huge_image_runs_alone():
    budget = PixelBudget(100, timeout=10)
    order: list[str] = []
    first = budget.hold(60)
    first.__enter__()

    def second():
        with budget.hold(60):  # does not fit beside the first
            order.append(f"second with {budget.used}")

    t = threading.Thread(target=second)
    t.start()
    t.join(0.2)
    assert t.is_alive() and order == []
    first.__exit__(None, None, None)
    t.join(5)
    assert order == ["second with 60"] and budget.used == 0
    with budget.hold(500):  # larger than the budget: alone
        assert budget.used == 500
    assert budget.peak == 500 and budget.used == 0


def test_gives_up_after_its_timeout_and_releases_on_error():
    budget = PixelBudget(10, timeout=0.1)
    with budget.hold(8):
        start = time.monotonic()
        with pytest.raises(QueueFull, match="waited"), budget.hold(5):
            pass
        assert time.monotonic() - start < 5
    with pytest.raises(RuntimeError), budget.hold(8):
        raise RuntimeError("scoring failed")
    assert budget.used == 0
