"""Known-image lookups beside torch in one process (torch is loaded here: integration)."""

from __future__ import annotations

import pytest

from tests.detector.test_memory import _hashes, _jpeg, _scene

pytestmark = pytest.mark.integration


def test_lookups_leave_torch_threads_alone(tmp_path):
    from detector.memory import MemoryStore

    # faiss and torch share libgomp: a lookup runs faiss on one thread and restores the count
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    store = MemoryStore(tmp_path / "m.sqlite")
    store.add(_hashes(_jpeg(_scene(1))), "generated", "alice")
    assert store.find(_hashes(_jpeg(_scene(1), 70)))
    assert torch.get_num_threads() == before
