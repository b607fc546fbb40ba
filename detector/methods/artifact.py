"""The artifact method: hand-crafted spectral and residual statistics with a linear model.

The classical baseline the benchmarks compare the trained CNN against. Features (NumPy only,
no torch):

- the azimuthally averaged log power spectrum of the Laplacian residual, Welch-averaged over
  64x64 blocks (up-sampling leaves periodic peaks, diffusion models a high-frequency deficit);
- log mean magnitude of each of the 63 AC coefficients of the 8x8 block DCT (what a camera's
  pipeline and a generator's decoder each do to fine detail);
- residual statistics: energy and kurtosis of the NPR and Laplacian residuals, and the
  correlation of residuals between colour channels (demosaicing correlates them).

A logistic regression over the standardised features is trained by
``synthdetect train-artifact`` and shipped as JSON (``detector/assets/models/artifact.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from detector.bundled import ARTIFACT_MODEL
from detector.calibration import Calibration
from detector.image import DecodedImage
from detector.methods.base import Evidence, Kind, MethodResult, PerImageMethod, Strength, Supports
from detector.methods.registry import register_method
from detector.preprocess import too_small

__all__ = ["FEATURE_NAMES", "ArtifactMethod", "artifact_features", "unjudged"]

_BLOCK = 64
FLAT_STD = 1.0  # grey levels: a central region that varies less has no texture to judge
_MAX_SIDE = 512  # features from the central region, at native resolution
_BINS = 24


def _dct_matrix(n: int = 8) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT8 = _dct_matrix().astype(np.float32)  # the planes are float32: no upcast per block
_yy, _xx = np.mgrid[0:_BLOCK, 0:_BLOCK] - _BLOCK // 2
_RADIUS = np.sqrt(_yy**2 + _xx**2)
_NEG = -np.arange(_BLOCK) % _BLOCK  # row index of the frequency -k
_RING = np.minimum((_RADIUS / (_BLOCK / 2) * _BINS).astype(int), _BINS)  # _BINS = corners

FEATURE_NAMES = (
    [f"spectrum_r{i}" for i in range(_BINS)]
    + [f"dct_{i // 8}{i % 8}" for i in range(1, 64)]
    + [
        "npr_energy", "npr_kurtosis", "lap_energy", "lap_kurtosis",
        "corr_rg", "corr_rb", "corr_gb", "grey_std",
    ]
)  # fmt: skip


def _center(pixels: np.ndarray) -> np.ndarray:
    """The central region (at most ``_MAX_SIDE`` square) as (3, H, W) float32 planes.

    float32 halves the memory traffic of every pass (27 -> 19 ms per 512 px image on 2 cores);
    the features stay within 1.7e-5 of float64 ones, and the shipped linear model's logits
    within 4.2e-6 over the small corpus' test split (441 images)."""
    h, w = pixels.shape[:2]
    th, tw = min(h, _MAX_SIDE), min(w, _MAX_SIDE)
    y, x = (h - th) // 2, (w - tw) // 2
    crop = pixels[y : y + th, x : x + tw].transpose(2, 0, 1)
    img = np.ascontiguousarray(crop, dtype=np.float32)
    ph, pw = max(0, _BLOCK - th), max(0, _BLOCK - tw)
    if ph or pw:  # small images: reflect to one block, as the model's preprocessing does
        img = np.pad(img, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), "reflect")
    return img


def _laplace(g: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian over the last two axes, edges replicated.

    In place on one output array: the same operations, in the same order, as
    ``4c - up - down - left - right`` on an edge-padded copy, without the copy.
    """
    out = 4 * g
    out[..., 1:, :] -= g[..., :-1, :]
    out[..., 0, :] -= g[..., 0, :]
    out[..., :-1, :] -= g[..., 1:, :]
    out[..., -1, :] -= g[..., -1, :]
    out[..., 1:] -= g[..., :-1]
    out[..., 0] -= g[..., 0]
    out[..., :-1] -= g[..., 1:]
    out[..., -1] -= g[..., -1]
    return out


def _kurtosis(x: np.ndarray) -> float:
    """log1p of the fourth standardised moment of a 1-D array."""
    x2 = x - x.mean()
    np.multiply(x2, x2, out=x2)  # not x**4: a float power runs pow() per element, 20x slower
    var = x2.mean()
    np.multiply(x2, x2, out=x2)
    return float(np.log1p(x2.mean() / (var**2 + 1e-12)))


def _channel_correlation(planes: np.ndarray) -> np.ndarray:
    """Pearson correlation between the rows of (3, N); 0 for a pair with a constant row (1 on
    the diagonal), whatever the third row holds."""
    centred = planes - planes.mean(axis=1, keepdims=True)
    cov = np.empty((3, 3))
    for i in range(3):
        for j in range(i, 3):
            cov[i, j] = cov[j, i] = (centred[i] * centred[j]).mean()
    sd = np.sqrt(np.diag(cov))
    flat = sd <= 1e-9
    corr = cov / np.outer(np.where(flat, 1.0, sd), np.where(flat, 1.0, sd))
    corr[flat, :] = 0.0
    corr[:, flat] = 0.0
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def artifact_features(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> feature vector in ``FEATURE_NAMES`` order.

    Elementwise operations and reductions only, no BLAS call on a whole image: such a product
    wakes OpenBLAS's thread pool, whose threads then spin beside the model's ONNX Runtime
    threads (a version of this function that took the channel covariance as a matrix product
    slowed the model method from 19 to 33 ms per 512 px image on 2 cores). The 8x8 DCT
    products are too small to be threaded.
    """
    img = _center(pixels)
    grey = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    lap_rgb = _laplace(img)
    lap = 0.299 * lap_rgb[0] + 0.587 * lap_rgb[1] + 0.114 * lap_rgb[2]  # linear: = lap(grey)
    h, w = (lap.shape[0] // _BLOCK) * _BLOCK, (lap.shape[1] // _BLOCK) * _BLOCK
    blocks = lap[:h, :w].reshape(h // _BLOCK, _BLOCK, w // _BLOCK, _BLOCK).transpose(0, 2, 1, 3)
    # The blocks are real, so half the spectrum (rfft2) holds all of it: P(k) = P(-k).
    half = np.fft.rfft2(blocks.reshape(-1, _BLOCK, _BLOCK))
    power = (half.real**2 + half.imag**2).mean(0)
    power = np.concatenate([power, power[_NEG, _BLOCK // 2 - 1 : 0 : -1]], axis=1)
    logp = np.log1p(np.fft.fftshift(power))
    ring = np.bincount(_RING.ravel(), weights=logp.ravel(), minlength=_BINS + 1)[:_BINS]
    ring = ring / np.bincount(_RING.ravel(), minlength=_BINS + 1)[:_BINS]
    spectrum = ring - ring.mean()  # shape of the spectrum, not its level
    gh, gw = (grey.shape[0] // 8) * 8, (grey.shape[1] // 8) * 8
    b8 = grey[:gh, :gw].reshape(gh // 8, 8, gw // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    coefs = _DCT8 @ (b8 - 128) @ _DCT8.T  # per block D B D^T (a 3-operand einsum is 10x slower)
    dct = np.log1p(np.abs(coefs).mean(0)).ravel()[1:]
    hh, ww = (img.shape[1] // 2) * 2, (img.shape[2] // 2) * 2
    x = img[:, :hh, :ww]
    # x minus its nearest down-up-sampled self, by broadcasting each 2x2 block's corner
    npr = (x.reshape(3, hh // 2, 2, ww // 2, 2) - x[:, ::2, None, ::2, None]).reshape(-1)
    corr = _channel_correlation(lap_rgb.reshape(3, -1))
    stats = [
        np.log1p(np.abs(npr).mean()),
        _kurtosis(npr),
        np.log1p(np.abs(lap).mean()),
        _kurtosis(lap.ravel()),
        corr[0, 1],
        corr[0, 2],
        corr[1, 2],
        np.log1p(grey.std()),
    ]
    return np.concatenate([spectrum, dct, np.asarray(stats, dtype=np.float64)])


def unjudged(pixels: np.ndarray, features: np.ndarray | None = None) -> str | None:
    """Why the method does not judge an image (too small, or flat: its central region's grey
    levels vary by less than ``FLAT_STD``), else None. ``features``: the image's, if known."""
    if small := too_small(pixels, _BLOCK):
        return small
    features = artifact_features(pixels) if features is None else features
    grey_std = float(np.expm1(features[FEATURE_NAMES.index("grey_std")]))
    if grey_std < FLAT_STD:
        return f"no texture to judge: its grey levels vary by {grey_std:.2f} (below {FLAT_STD})"
    return None


@register_method("artifact")
class ArtifactMethod(PerImageMethod):
    kind = Kind.ARTIFACT
    description = "spectral + DCT + residual statistics with a linear model (classical baseline)"
    options: ClassVar[tuple[str, ...]] = ("artifact_model",)
    # Opt-in (--methods ...,artifact): on the validation sources of the pinned real-world list
    # it is near chance (ROC-AUC 0.56; refitted on that mix's train split, 0.44), and fused
    # with the model at weight 0.5 it lowers the verdict's ROC-AUC from 0.798 to 0.782 and the
    # share of generated images flagged from 4.6% to 0.7%
    # (benchmarks/results/selection/fusion-artifact.json). It still helps on the project's
    # own GAN and autoencoder crops, where the benchmarks compare it.
    in_default = False

    fusion_weight = 0.5  # a linear model on hand-crafted features is weaker than the CNN

    def __init__(self, artifact_model: str | Path | None = None) -> None:
        path = Path(artifact_model or ARTIFACT_MODEL)
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{path}: not JSON from `synthdetect train-artifact` ({exc})"
            ) from None
        if not isinstance(data, dict) or data.get("features") != FEATURE_NAMES:
            raise ValueError(f"{path}: trained on a different feature set; retrain it")
        n = len(FEATURE_NAMES)
        fields = {}
        for name in ("mean", "std", "weights"):
            try:
                value = np.asarray(data.get(name), dtype=np.float64)
            except (TypeError, ValueError):
                value = np.empty(0)
            if value.shape != (n,) or not np.isfinite(value).all():
                raise ValueError(f"{path}: {name!r} must be {n} finite numbers")
            fields[name] = value
        if (fields["std"] <= 0).any():
            raise ValueError(f"{path}: 'std' must be positive")
        bias = data.get("bias")
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not np.isfinite(bias):
            raise ValueError(f"{path}: 'bias' must be a finite number")
        self.mean, self.std, self.weights = fields["mean"], fields["std"], fields["weights"]
        self.bias = float(bias)
        self.calibration = Calibration.from_dict(data.get("calibration"))

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    @property
    def camera_threshold(self) -> float:
        """Half the calibrated threshold, as the model's (fusion's camera band)."""
        return self.threshold / 2

    @classmethod
    def availability(cls, artifact_model: str | None = None, **options: Any) -> str | None:
        if artifact_model is None and not ARTIFACT_MODEL.exists():
            return f"no trained artifact model at {ARTIFACT_MODEL} (synthdetect train-artifact)"
        return None

    def logit(self, pixels: np.ndarray, features: np.ndarray | None = None) -> float:
        features = artifact_features(pixels) if features is None else features
        z = (features - self.mean) / self.std
        return float(z @ self.weights + self.bias)

    def score_one(self, image: DecodedImage) -> MethodResult:
        # Its spectrum is averaged over 64 px blocks: a smaller image would be mostly padding
        # (on the small corpus' 64 px pool downscaled to 48 px, its AP fell to 0.14-0.20).
        if small := too_small(image.pixels, _BLOCK):
            return self.abstain(Evidence("artifact.too_small", small))
        features = artifact_features(image.pixels)
        # a flat image scored 0.28 with moderate 'camera' evidence; one pixel set, 0.55
        if flat := unjudged(image.pixels, features):
            return self.abstain(Evidence("artifact.flat", flat))
        logit = self.logit(image.pixels, features)
        p = float(self.calibration.probability(np.array([logit]))[0])
        thr = self.calibration.threshold
        generated = p >= thr
        ev = Evidence(
            "artifact.generated" if generated else "artifact.camera",
            f"spectral/residual statistics: P(generated) {p:.3f} (threshold {thr:.3f})",
            Strength.WEAK if abs(p - thr) < 0.3 else Strength.MODERATE,
            Supports.GENERATED if generated else Supports.CAMERA,
        )
        return self.result(p, [ev], weight=self.fusion_weight, details={"logit": round(logit, 4)})
