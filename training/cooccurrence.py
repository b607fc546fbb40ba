"""Co-occurrences of quantised pixel residuals: a hand-made feature view for the linear probe.

The spatial rich model of steganalysis (Fridrich and Kodovsky 2012), applied to generated
images by Nataraj et al. (2019) and recast as a network by Cozzolino et al. (2017): high-pass
residuals of the pixels are rounded to a few levels and the joint histogram of several
neighbouring residuals is the feature. Nothing in it depends on what the image shows, only on
how neighbouring pixel values relate, which is what a camera's pipeline and a generator's
decoder each leave behind. ``training.probe.FeatureCache`` takes it in place of a frozen
network (``--input cooc`` of ``scripts/experiments/frozen_probe.py``).

Per 8-bit channel, three 1-D residuals along rows and along columns (first, second and third
order: kernels [-1, 1], [1, -2, 1], [-1, 3, -3, 1], divided by 1, 2 and 3), each rounded and
clipped to [-T, T]; the histogram of ``order`` consecutive values along the residual's own
direction, rows and columns pooled, channels pooled: (2T + 1)^order bins per residual. Beside
them, the joint histogram of the three channels' first-order residuals along rows at the same
pixel ((2T + 1)^3 bins), the colour correlation demosaicing leaves. Each histogram is
normalised to frequencies and square-rooted (the Hellinger map, so a linear model compares
distributions). Tuples along rows are taken from every ``stride``-th row and tuples along
columns from every ``stride``-th column (half the cost at 2; every pixel relation inside a
tuple is still seen). Residuals are rounded half to even (NumPy's ``rint``; the rich model
rounds halves away from zero, which differs only for the second order's odd values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["VERSION", "CooccurrenceFeatures"]

_KERNELS = ((-1, 1), (1, -2, 1), (-1, 3, -3, 1))
_STEPS = (1.0, 2.0, 3.0)
_REACH = 255 * 4  # the largest |residual| of 8-bit pixels: 255 x the positive weights' sum
_MAX_BINS = 1 << 20  # per histogram: (2T + 1)^order and (2T + 1)^3
VERSION = 1  # in the cache tag: a change to what the features are must change it


def _windows(x: np.ndarray, width: int, axis: int) -> list[np.ndarray]:
    """The ``width`` views of ``x`` shifted by 0 .. width-1 along ``axis``, each as long as a
    'valid' sliding window of that width allows."""
    n = x.shape[axis] - width + 1
    index = [slice(None)] * x.ndim
    views = []
    for k in range(width):
        index[axis] = slice(k, k + n)
        views.append(x[tuple(index)])
    return views


def _residual(x: np.ndarray, kernel: Sequence[int], axis: int) -> np.ndarray:
    """'Valid' 1-D correlation of int16 (N, C, H, W) with ``kernel`` along ``axis`` (2 or 3)."""
    views = _windows(x, len(kernel), axis)
    out = np.zeros(views[0].shape, np.int16)
    for c, v in zip(kernel, views, strict=True):
        out += np.int16(c) * v
    return out


class CooccurrenceFeatures:
    """(N, 3, S, S) normalised tiles -> (N, D) co-occurrence features (NumPy, no network).

    ``mean``/``std``: the tiles' normalisation, undone to recover 8-bit values (the
    preprocessing never resizes, so they are the file's own, up to the rounding undone here)."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], truncation: int = 2, order: int = 4,
        stride: int = 2,
    ) -> None:  # fmt: skip
        if truncation < 1 or order < 2 or stride < 1:
            raise ValueError(
                f"need truncation >= 1, order >= 2 and stride >= 1, got {truncation}, {order}, "
                f"{stride}"
            )
        bins = max((2 * truncation + 1) ** order, (2 * truncation + 1) ** 3)
        if bins > _MAX_BINS:
            raise ValueError(
                f"truncation {truncation} and order {order} make {bins} bins a histogram; at "
                f"most {_MAX_BINS}"
            )
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self.t, self.order = truncation, order
        self.levels = 2 * truncation + 1
        self.tag = f"cooc{VERSION}-t{truncation}-o{order}-r{stride}"
        self.width = len(_KERNELS) * self.levels**order + self.levels**3
        self.stride = stride
        values = np.arange(-_REACH, _REACH + 1)  # every residual -> its level in [0, 2T]
        self._luts = {
            step: (np.clip(np.rint(values / step), -self.t, self.t) + self.t).astype(np.int16)
            for step in _STEPS
        }

    def _quantise(self, r: np.ndarray, step: float) -> np.ndarray:
        """int16 residuals -> rounded, clipped and shifted to [0, 2T] (a lookup table)."""
        return self._luts[step][r + _REACH]

    def _histogram(self, codes: np.ndarray, n: int, bins: int) -> np.ndarray:
        """codes (N, ...) in [0, bins) -> (N, bins) frequencies per tile."""
        flat = codes.reshape(n, -1).astype(np.int32)
        flat += (np.arange(n, dtype=np.int32) * bins)[:, None]
        counts = np.bincount(flat.ravel(), minlength=n * bins).reshape(n, bins)
        return counts / np.maximum(counts.sum(1, keepdims=True), 1)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        n = len(tiles)
        x = np.clip(np.rint((tiles * self.std + self.mean) * 255.0), 0, 255).astype(np.int16)
        # tuples along rows from every other row, along columns from every other column: half
        # the cost, every pixel relation inside a tuple still seen
        along = {3: x[:, :, :: self.stride, :], 2: x[:, :, :, :: self.stride]}
        parts = []
        bins = self.levels**self.order
        for kernel, step in zip(_KERNELS, _STEPS, strict=True):
            hist = np.zeros((n, bins))
            for axis, xs in along.items():
                q = self._quantise(_residual(xs, kernel, axis), step)
                views = _windows(q, self.order, axis)
                code = np.zeros(views[0].shape, np.int32)
                for v in views:
                    code = code * self.levels + v
                hist += self._histogram(code, n, bins)
            parts.append(np.sqrt(hist / 2))
        q = self._quantise(_residual(along[3], _KERNELS[0], 3), _STEPS[0])  # (N, 3, H', W-1)
        code = (q[:, 0].astype(np.int32) * self.levels + q[:, 1]) * self.levels + q[:, 2]
        parts.append(np.sqrt(self._histogram(code, n, self.levels**3)))
        return np.concatenate(parts, axis=1).astype(np.float32)
