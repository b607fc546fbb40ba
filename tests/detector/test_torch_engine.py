"""The torch engine: precisions, CUDA graphs (on a GPU) and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from detector.engine import load_bundle

pytestmark = pytest.mark.integration


def _tiles(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 64, 64)).astype(np.float32)


def test_reduced_precision_on_cpu_stays_close_to_fp32(untrained_checkpoint):
    fp32 = load_bundle(untrained_checkpoint)
    bf16 = load_bundle(untrained_checkpoint, precision="bf16")
    assert bf16.engine.name == "torch:cpu:bf16"
    tiles = _tiles(5, 1)
    a, b = fp32.engine.run(tiles), bf16.engine.run(tiles)
    assert not np.allclose(a, b, atol=1e-7), "bf16 ran in fp32"
    assert np.abs(a - b).max() <= 0.05 * max(1.0, np.abs(a).max())


def test_torch_settings_are_refused_for_onnx_and_bad_values(exported_model, untrained_checkpoint):
    with pytest.raises(ValueError, match="checkpoint"):
        load_bundle(exported_model, precision="fp16")
    with pytest.raises(ValueError, match="checkpoint"):
        load_bundle(exported_model, cuda_graphs=True)
    with pytest.raises(ValueError, match="precision"):
        load_bundle(untrained_checkpoint, precision="int4")
    with pytest.raises(ValueError, match="cpu or cuda"):
        load_bundle(untrained_checkpoint, device="tensorrt")


def test_an_fp32_engine_in_tf32_says_so():
    """torch runs "fp32" convolutions on a GPU in TF32 by default (cuDNN): results named the
    rows fp32 as if they were float32 arithmetic."""
    import torch

    from detector.engine import TorchEngine, torch_engine_name

    assert torch_engine_name("cuda", "fp32", True, tf32=True) == "torch:cuda:fp32+tf32+graphs"
    assert torch_engine_name("cuda", "fp16", False, tf32=False) == "torch:cuda:fp16"
    assert TorchEngine(torch.nn.Conv2d(3, 1, 1), "cpu", "fp32").name == "torch:cpu:fp32"


def test_empty_batch_gives_no_logits(untrained_checkpoint):
    assert load_bundle(untrained_checkpoint).engine.run(_tiles(0, 0)).shape == (0,)


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tol", [("fp32", 2e-3), ("fp16", 3e-2), ("bf16", 8e-2)])
def test_cuda_engine_matches_cpu_eager_and_graphs_match_eager(untrained_checkpoint, precision, tol):
    cpu = load_bundle(untrained_checkpoint)
    eager = load_bundle(untrained_checkpoint, "cuda", precision=precision)
    graphs = load_bundle(untrained_checkpoint, "cuda", precision=precision, cuda_graphs=True)
    import torch

    tf32 = "+tf32" if precision == "fp32" and torch.backends.cudnn.allow_tf32 else ""
    assert eager.engine.name == f"torch:cuda:{precision}{tf32}"
    assert graphs.engine.name == f"torch:cuda:{precision}{tf32}+graphs"
    # Sizes that hit a bucket exactly and ones that are padded; fresh inputs each call so a
    # replay that returned a stale output buffer would fail.
    for seed, n in enumerate((1, 3, 8, 5, 3, 16)):
        tiles = _tiles(n, 100 + seed)
        ref = cpu.engine.run(tiles)
        scale = max(1.0, float(np.abs(ref).max()))
        e, g = eager.engine.run(tiles), graphs.engine.run(tiles)
        assert e.shape == g.shape == (n,)
        assert np.isfinite(g).all()
        assert np.abs(e - ref).max() <= tol * scale, (precision, n)
        assert np.abs(g - e).max() <= 1e-3 * scale, (precision, n)
    assert sorted(s[0] for s in graphs.engine._graphs) == [1, 4, 8, 16]


def test_warmup_runs_every_power_of_two_bucket_up_to_the_batch_limit(untrained_checkpoint):
    engine = load_bundle(untrained_checkpoint).engine
    seen = []
    run = engine.run
    engine.run = lambda tiles: seen.append(tiles.shape) or run(tiles)
    engine.warmup(64, 24)
    assert [s[0] for s in seen] == [1, 2, 4, 8, 16, 24]
    assert all(s[1:] == (3, 64, 64) for s in seen)


@pytest.mark.gpu
def test_warmup_captures_every_bucket_before_traffic(untrained_checkpoint):
    engine = load_bundle(untrained_checkpoint, "cuda", precision="fp16", cuda_graphs=True).engine
    engine.warmup(64, 24)
    assert sorted(s[0] for s in engine._graphs) == [1, 2, 4, 8, 16, 32]


def test_a_checkpoint_asked_onto_a_missing_gpu_is_refused(untrained_checkpoint):
    """As the ONNX engine refuses it: no quiet fall back to the CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device"):
        load_bundle(untrained_checkpoint, "cuda")
