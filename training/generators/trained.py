"""Generators the project trains itself on CPU: four autoencoders and a small GAN.

The autoencoders share one encoder (downsampling by 4 into 8 latent channels, the shape of a
latent-diffusion VAE at a quarter of its depth) and differ only in how the decoder upsamples:
transposed convolution, nearest-neighbour + convolution (as latent-diffusion VAEs do), bilinear
+ convolution, and pixel shuffle. Each leaves its own fingerprint in the reconstruction of a real
crop, while the content stays the real crop's: the "aligned" fakes of the corpus.

The GAN is a small DCGAN drawing 64x64 images after training on 64x64 real crops.

Training is seeded and single-process; weights are cached under
``<cache>/generators/<name>-<version>-<data key>.pt`` and rebuilt when missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from training.generators.base import Generator, PrepareContext, register_generator

__all__ = ["ConvAutoencoder", "SmallDCGAN"]

_PATCH = 64
_BATCH = 16


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def _to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    arr = (x.clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).numpy()
    return [np.ascontiguousarray(a) for a in arr]


def _random_patches(crops: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(crops), n)
    h, w = crops.shape[1:3]
    ys = rng.integers(0, h - size + 1, n)
    xs = rng.integers(0, w - size + 1, n)
    return np.stack(
        [crops[i, y : y + size, x : x + size] for i, y, x in zip(idx, ys, xs, strict=True)]
    )


def _cached_train(
    gen: Generator,
    ctx: PrepareContext,
    model: nn.Module,
    train: Callable[[nn.Module, PrepareContext], None],
) -> None:
    """Load cached weights for this exact data and seed, or train and cache them."""
    path = Path(ctx.cache) / "generators" / f"{gen.name}-{gen.version}-{ctx.data_key()}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        ctx.log(f"  {gen.name}: cached weights {path.name}")
    else:
        ctx.log(f"  {gen.name}: training {ctx.steps} steps on {len(ctx.train_crops)} train crops")
        # Seed, then start from the seed's initial weights: the module was built (and drew its
        # initial weights from the process's unseeded generator) before the seed was known.
        torch.manual_seed(ctx.seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        with _deterministic():
            train(model, ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    model.eval()


class _deterministic:
    """Deterministic torch kernels for the duration of a block (restores the previous mode)."""

    def __enter__(self) -> None:
        self.prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self.prev)


# --- autoencoders ---------------------------------------------------------------------------


def _upsample(kind: str, cin: int, cout: int) -> nn.Module:
    if kind == "transposed":
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    if kind == "nearest":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1)
        )
    if kind == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(cin, cout, 3, padding=1),
        )
    if kind == "pixelshuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    raise ValueError(f"unknown upsampling {kind!r}")


class ConvAutoencoder(nn.Module):
    """3 -> 8 latent channels at 1/4 resolution -> 3, with a choice of upsampling."""

    def __init__(self, upsampling: str, width: int = 48, latent: int = 8) -> None:
        super().__init__()
        act = nn.SiLU
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), act(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), act(),
            nn.Conv2d(width, width * 2, 4, stride=2, padding=1), act(),
            nn.Conv2d(width * 2, latent, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, width * 2, 3, padding=1), act(),
            _upsample(upsampling, width * 2, width), act(),
            _upsample(upsampling, width, width), act(),
            nn.Conv2d(width, 3, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))


def _train_autoencoder(model: nn.Module, ctx: PrepareContext) -> None:
    rng = np.random.default_rng(ctx.seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, ctx.steps))
    model.train()
    for _ in range(ctx.steps):
        x = _to_tensor(_random_patches(ctx.train_crops, _BATCH, _PATCH, rng))
        loss = (model(x) - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


class _AutoencoderGenerator(Generator):
    family = "autoencoder"
    version = "2"  # 2: initial weights from the seed (1 drew them unseeded)
    aligned = True
    pool = "crops256"
    trains = True
    upsampling: ClassVar[str]

    def __init__(self) -> None:
        self.model = ConvAutoencoder(self.upsampling)

    def prepare(self, ctx: PrepareContext) -> None:
        _cached_train(self, ctx, self.model, _train_autoencoder)

    @torch.inference_mode()
    def transform(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i in range(0, len(crops), 8):
            out += _to_uint8(self.model(_to_tensor(np.stack(crops[i : i + 8]))))
        return out


for _kind in ("transposed", "nearest", "bilinear", "pixelshuffle"):
    register_generator(f"ae_{_kind}")(
        type(f"Autoencoder_{_kind}", (_AutoencoderGenerator,), {"upsampling": _kind})
    )


# --- a small GAN ----------------------------------------------------------------------------

_NZ = 64


class SmallDCGAN(nn.Module):
    """DCGAN generator, 64x64 output, a quarter of the tutorial's width."""

    def __init__(self, ngf: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(_NZ, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
        ]
        for cin, cout in ((8, 4), (4, 2), (2, 1)):
            layers += [
                nn.ConvTranspose2d(ngf * cin, ngf * cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * cout),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


def _discriminator(ndf: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 4, 1, 8, 1, 0),
    )  # fmt: skip


def _train_gan(gen: nn.Module, ctx: PrepareContext) -> None:
    rng = np.random.default_rng(ctx.seed)
    disc = _discriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    gen.train()
    for _ in range(ctx.steps):
        real = _to_tensor(_random_patches(ctx.train_crops, 32, 64, rng)) * 2 - 1
        fake = gen(torch.randn(len(real), _NZ, 1, 1))
        d_loss = bce(disc(real).flatten(), torch.ones(len(real))) + bce(
            disc(fake.detach()).flatten(), torch.zeros(len(real))
        )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = bce(disc(fake).flatten(), torch.ones(len(real)))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()


@register_generator("dcgan_texture")
class DcganTexture(Generator):
    """A small DCGAN trained on 64x64 real crops of the train split: GAN textures."""

    family = "gan"
    version = "2"  # 2: initial weights from the seed (1 drew them unseeded)
    aligned = False
    pool = "crops64"
    trains = True

    def __init__(self) -> None:
        self.model = SmallDCGAN()

    def prepare(self, ctx: PrepareContext) -> None:
        _cached_train(self, ctx, self.model, _train_gan)

    @torch.inference_mode()
    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        z = torch.from_numpy(rng.standard_normal((n, _NZ, 1, 1)).astype(np.float32))
        return _to_uint8((self.model(z) + 1) / 2)
