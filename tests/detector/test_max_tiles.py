"""``--max-tiles``: fewer tiles per image than the model's own (speed against coverage), set in
one place (``ModelBundle.with_max_tiles``, which ``load_bundle`` applies) and taken by the
model method, ``score``/``scan``, the server and the latency benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from detector.bundled import DEFAULT_MODEL
from detector.engine import load_bundle
from detector.image import decode
from detector.methods.model import ModelMethod

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def large_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "large.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(path)
    return path


def test_the_override_changes_only_the_tile_count():
    own = load_bundle(DEFAULT_MODEL)
    fewer = load_bundle(DEFAULT_MODEL, max_tiles=4)
    assert own.preprocess.max_tiles == 16  # the bundled model's own
    assert fewer.preprocess == replace(own.preprocess, max_tiles=4)
    assert fewer.calibration == own.calibration
    with pytest.raises(ValueError, match="max_tiles must be >= 1, got 0"):
        load_bundle(DEFAULT_MODEL, max_tiles=0)


def test_the_model_method_cuts_at_most_that_many_tiles(large_png):
    image = decode(large_png.read_bytes())
    own, fewer = ModelMethod(), ModelMethod(max_tiles=4)
    assert len(own.tiles([image])[0]) == 16  # a 1024 px image gets the model's 16
    assert len(fewer.tiles([image])[0]) == 4
    shared = ModelMethod(bundle=own.bundle, max_tiles=1)  # a host's loaded model, overridden
    assert len(shared.tiles([image])[0]) == 1 and own.bundle.preprocess.max_tiles == 16
    result = fewer.score([image])[0]
    assert result.probability is not None and "over 4 tiles" in result.evidence[0].message


def test_score_and_the_server_take_the_option(large_png):
    out = subprocess.run(
        [sys.executable, "-m", "detector.cli", "score", "--methods", "model", "--max-tiles", "4",
         "--json", str(large_png)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (verdict,) = json.loads(out.stdout)
    assert "over 4 tiles" in verdict["verdict"]["summary"]
    from serving.service import Service, ServiceConfig

    service = Service(ServiceConfig(max_tiles=2))
    try:
        assert service.bundle.preprocess.max_tiles == 2
    finally:
        service.close()
