"""The bundled ONNX model on ONNX Runtime's CUDA provider (the ``[gpu]`` extra): what
``synthdetect serve --device cuda`` runs when given the default model folder."""

from __future__ import annotations

import numpy as np
import pytest

from detector.bundled import DEFAULT_MODEL
from detector.engine import load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def test_bundled_onnx_on_cuda_matches_cpu():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here is the CPU wheel: install the [gpu] extra (onnxruntime-gpu)")
    gpu, cpu = load_bundle(DEFAULT_MODEL, device="cuda"), load_bundle(DEFAULT_MODEL)
    assert gpu.engine.device == "cuda" and "CUDAExecutionProvider" in gpu.engine.name
    size = gpu.preprocess.input_size
    for batch in (1, 7, 32):
        tiles = np.random.default_rng(batch).normal(size=(batch, 3, size, size))
        tiles = tiles.astype(np.float32)
        a, b = gpu.engine.run(tiles), cpu.engine.run(tiles)
        assert a.shape == b.shape == (batch,)
        assert np.abs(a - b).max() <= 2e-3 * max(1.0, np.abs(b).max())
