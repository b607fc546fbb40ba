"""Artifact and frequency features as pure tensor functions, computed inside ``forward``.

They run on the model's device and are exported into the ONNX graph with the model, so there is
no second implementation to drift from the first. Every function takes and returns
(B, C, H, W) float tensors and uses only ops that ONNX opset 17 expresses directly (slicing,
interpolation, convolution, matrix products), not ``torch.fft``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["block_log_spectrum", "dft_matrices", "highpass", "laplace_kernel", "npr_residual"]


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """x minus its nearest down-up-sampled self (NPR, CVPR 2024).

    Up-sampling layers of generators leave correlations between neighbouring pixels that this
    residual exposes; it is zero wherever 2x2 blocks are constant.
    """
    down = x[:, :, ::2, ::2]
    return x - F.interpolate(down, scale_factor=2.0, mode="nearest")


def laplace_kernel(channels: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A depthwise 3x3 Laplacian, (channels, 1, 3, 3): keep it as a module buffer so that
    exporters see a constant of known shape."""
    k = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]], dtype=dtype)
    return k.expand(channels, 1, 3, 3).clone()


def highpass(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Laplacian per channel: removes image content, keeps noise and periodic traces."""
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


def dft_matrices(n: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the n-point DFT matrix, rows ordered as after fftshift."""
    k = torch.arange(n, dtype=torch.float64)
    k = torch.roll(k, n // 2)  # frequency order -n/2 .. n/2-1 (fftshift)
    angle = -2 * math.pi * torch.outer(k, torch.arange(n, dtype=torch.float64)) / n
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def block_log_spectrum(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Log power spectrum averaged over non-overlapping n x n blocks (Welch's periodogram).

    (B, C, H, W) with H, W multiples of n -> (B, C, n, n), DC at the centre. Periodic
    up-sampling artifacts add up across blocks into peaks at fixed frequencies.
    """
    b, c, h, w = x.shape
    n = cos.shape[0]
    blocks = x.reshape(b, c, h // n, n, w // n, n).permute(0, 1, 2, 4, 3, 5)
    # X = M x M^T with M = cos + i sin (M is symmetric in its unshifted form; rows shifted here)
    rc = torch.matmul(blocks, cos.t())
    rs = torch.matmul(blocks, sin.t())
    re = torch.matmul(cos, rc) - torch.matmul(sin, rs)
    im = torch.matmul(sin, rc) + torch.matmul(cos, rs)
    power = (re * re + im * im).mean(dim=(2, 3))
    return torch.log1p(power)
