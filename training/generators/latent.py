"""A modern latent decoder as a generator: the TAEF2 tiny autoencoder of the FLUX.2 latent space.

TAEF2 (``madebyollin/taesd``, MIT) is a distilled encoder/decoder pair for the 32-channel,
8x-downsampled latent space of FLUX.2: the kind of decoder that turns every latent-diffusion
output into pixels. Encoding a real crop and decoding it again gives a fake whose content is the
real crop's and whose every pixel was drawn by a learned latent decoder: an aligned pair that
differs only in the decoder's fingerprint (the "aligned dataset" idea).

The network is written here from the layout of its state dicts (79 fp16 tensors each):

- encoder: 3x3 conv to 64 channels, a residual block, then three stages of a stride-2 3x3 conv
  and three residual blocks, and a 3x3 conv to 32 latent channels;
- decoder: a soft clamp (``3 tanh(z/3)``), a 3x3 conv to 64 channels, three stages of three
  residual blocks then nearest 2x upsampling and a 3x3 conv, one more block and a 3x3 conv to RGB;
- a residual block is three 3x3 convs with ReLUs between them, added to its input and ReLU'd;
  the blocks at the latent resolution (the encoder's last stage, the decoder's first) first add
  a pooled branch: 1x1 conv to 256 channels, GroupNorm(4), ReLU, 1x1 conv back.

The weights are pinned like the corpus sources (repository, commit, path, git blob id) and are
read from a git mirror or a clone (``training.pinned``) into the cache, checked at every load.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from training.generators.base import Generator, PrepareContext, register_generator
from training.pinned import PinnedError, PinnedFile, Store, git_blob_id

__all__ = ["TAEF2_WEIGHTS", "Taef2", "TinyAutoencoder", "load_pinned_weights"]

TAEF2_WEIGHTS = {
    "encoder": PinnedFile(
        "madebyollin/taesd",
        "5cccb12dc72074a4be35680c3b108548a7c69978",
        "taef2_encoder.pth",
        "8d738aba02f7ba9d156712489322dc5c43d5db1c",
    ),
    "decoder": PinnedFile(
        "madebyollin/taesd",
        "5cccb12dc72074a4be35680c3b108548a7c69978",
        "taef2_decoder.pth",
        "f4da1ec48cb805b5ee8deb22cfad03f48fe52f64",
    ),
}
_WIDTH, _POOLED = 64, 256


class _Residual(nn.Module):
    """relu(convs(x') + x'), with x' = x + pooled(x) where the block carries a pooled branch."""

    def __init__(self, width: int, pooled: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(width, width, 3, padding=1))
        self.conv = nn.Sequential(*layers)
        self.pool = (
            nn.Sequential(
                nn.Conv2d(width, _POOLED, 1, bias=False),
                nn.GroupNorm(4, _POOLED),
                nn.ReLU(),
                nn.Conv2d(_POOLED, width, 1, bias=False),
            )
            if pooled
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


class _SoftClamp(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(z / 3.0)


def _conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


def _encoder(latent: int) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, _WIDTH), _Residual(_WIDTH, False)]
    for stage in range(3):
        layers.append(_conv(_WIDTH, _WIDTH, stride=2, bias=False))
        layers += [_Residual(_WIDTH, pooled=stage == 2) for _ in range(3)]
    layers.append(_conv(_WIDTH, latent))
    return nn.Sequential(*layers)


def _decoder(latent: int) -> nn.Sequential:
    layers: list[nn.Module] = [_SoftClamp(), _conv(latent, _WIDTH), nn.ReLU()]
    for stage in range(3):
        layers += [_Residual(_WIDTH, pooled=stage == 0) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(_WIDTH, _WIDTH, bias=False)]
    layers += [_Residual(_WIDTH, False), _conv(_WIDTH, 3)]
    return nn.Sequential(*layers)


class TinyAutoencoder(nn.Module):
    """RGB in [0, 1] -> 32-channel latent at 1/8 -> RGB, clamped to [0, 1]."""

    scale = 8

    def __init__(self, latent: int = 32) -> None:
        super().__init__()
        self.encoder = _encoder(latent)
        self.decoder = _decoder(latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).clamp(0, 1)


def load_pinned_weights(pin: PinnedFile, cache: Path, store: Store | None) -> dict:
    """The state dict of a pinned weights file: from the cache, else read through ``store``
    (a mirror or a clone) and cached; its git blob id is checked every time."""
    path = (
        Path(cache)
        / "weights"
        / pin.repo.replace("/", "+")
        / f"{pin.blob_sha}-{Path(pin.path).name}"
    )
    if not path.exists():
        if store is None:
            raise PinnedError(
                f"{pin.where} is not in the cache ({path.parent}); pass --mirror DIR with a "
                f"mirror of {pin.repo}, or build once on a machine that can clone it"
            )
        problems = store.verify([pin])
        if problems:
            raise PinnedError(problems[0])
        ((_, data),) = list(store.read([pin]))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    data = path.read_bytes()
    if git_blob_id(data) != pin.blob_sha:
        raise PinnedError(
            f"{path} is damaged (blob {git_blob_id(data)} != {pin.blob_sha}); delete it"
        )
    import io

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


@register_generator("taef2")
class Taef2(Generator):
    """Round trip of a real crop through the TAEF2 encoder and decoder (aligned)."""

    family = "latent-decoder"
    version = "taef2-5cccb12"
    aligned = True
    pool = "crops256"
    weights: ClassVar[dict[str, PinnedFile]] = TAEF2_WEIGHTS

    def prepare(self, ctx: PrepareContext) -> None:
        net = TinyAutoencoder()
        for part in ("encoder", "decoder"):
            state = load_pinned_weights(self.weights[part], ctx.cache, ctx.store)
            getattr(net, part).load_state_dict({k: v.float() for k, v in state.items()})
        self._net = net.eval()

    def transform(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        s = TinyAutoencoder.scale
        for crop in crops:
            h, w = crop.shape[:2]
            ph, pw = -h % s, -w % s  # the latent grid needs sides divisible by 8
            x = (
                torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1)[None].float()
                / 255
            )
            if ph or pw:
                x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
            with torch.inference_mode():
                y = self._net(x)[0, :, :h, :w]
            out.append(np.ascontiguousarray((y * 255).round().byte().permute(1, 2, 0).numpy()))
        return out
