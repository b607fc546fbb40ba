"""``bench load --payload tiles`` sends tiles of the served model's own size: it reads the
size from the tiles model's KServe metadata instead of assuming one."""

from __future__ import annotations

import pytest

from benchmarks.load import served_tile_size
from benchmarks.loadgen import run_load, tiles_payload

pytestmark = pytest.mark.integration


def test_the_tile_size_is_the_served_models_and_its_tiles_are_accepted(server):
    size = served_tile_size(f"http://{server.url}")
    assert size == server.service.input_size
    payload = tiles_payload("synthdetect_tiles", 2, size, variants=1)
    res = run_load(f"http://{server.url}", payload, 1, requests=4, seconds=30, warmup=0)
    assert res.status_codes == {"200": 4}
    wrong = tiles_payload("synthdetect_tiles", 2, size + 16, variants=1)  # what a guess risks
    res = run_load(f"http://{server.url}", wrong, 1, requests=2, seconds=30, warmup=0)
    assert res.status_codes == {"400": 2}


def test_no_server_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot read the tile size from .*give --input-size"):
        served_tile_size("http://127.0.0.1:9")
