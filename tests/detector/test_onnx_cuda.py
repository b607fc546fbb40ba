"""The bundled ONNX model on ONNX Runtime's CUDA provider (the ``[gpu]`` extra): what
``synthdetect serve --device cuda`` runs when given the default model folder."""

from __future__ import annotations

import numpy as np
import pytest

from detector.bundled import DEFAULT_MODEL
from detector.engine import GPU_RUNTIME_HOWTO, load_bundle

pytestmark = pytest.mark.integration


def test_padding_to_a_bucket_leaves_the_logits_unchanged():
    """On CUDA a batch is zero-padded up to a power of two (one cuDNN plan per bucket); the
    padding path, run here on the CPU provider, must return exactly the unpadded logits."""
    engine = load_bundle(DEFAULT_MODEL).engine
    size = load_bundle(DEFAULT_MODEL).preprocess.input_size
    tiles = np.random.default_rng(5).normal(size=(5, 3, size, size)).astype(np.float32)
    plain = engine.run(tiles)
    engine.device = "cuda"  # take the GPU code path on the CPU session
    padded = engine.run(tiles)
    assert padded.shape == (5,)
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_bundled_onnx_on_cuda_matches_cpu():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime here is the CPU wheel: {GPU_RUNTIME_HOWTO}")
    gpu, cpu = load_bundle(DEFAULT_MODEL, device="cuda"), load_bundle(DEFAULT_MODEL)
    assert gpu.engine.device == "cuda" and "CUDAExecutionProvider" in gpu.engine.name
    size = gpu.preprocess.input_size
    for batch in (1, 7, 32):
        tiles = np.random.default_rng(batch).normal(size=(batch, 3, size, size))
        tiles = tiles.astype(np.float32)
        a, b = gpu.engine.run(tiles), cpu.engine.run(tiles)
        assert a.shape == b.shape == (batch,)
        # cuDNN convolutions use TF32 on Ampere and later (ONNX Runtime's default): measured
        # on an H100, logits differ from the CPU's by up to 0.26% (0.0095 at |logit| 3.7)
        assert np.abs(a - b).max() <= 5e-3 * max(1.0, np.abs(b).max())


def test_a_gpu_provider_that_does_not_start_is_an_error_not_a_silent_cpu_run(monkeypatch):
    """onnxruntime-gpu lists its CUDA provider even where CUDA or cuDNN is missing; the session
    then quietly runs on the CPU. Asked for a GPU, the engine refuses that. Here the CPU wheel
    is told it has the provider (the one thing faked): ONNX Runtime itself falls back."""
    import onnxruntime as ort

    real = ort.get_available_providers()
    if "CUDAExecutionProvider" in real:
        pytest.skip("this ONNX Runtime has a CUDA provider: the fallback is not reproducible")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real, "CUDAExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    with pytest.raises(ValueError, match="GPU provider did not start"):
        load_bundle(DEFAULT_MODEL, device="cuda")
    assert load_bundle(DEFAULT_MODEL).engine.device == "cpu"  # the CPU is still there
