"""Typed training configuration: YAML file + ``key=value`` overrides, saved into every run.

synthdetect train --config configs/default.yaml epochs=5 model=mobilenetv3_small augment.p_jpeg=0.5
"""

from __future__ import annotations

import contextlib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from training.degrade import AugmentPolicy

__all__ = ["TrainConfig", "load_config"]

CONFIG_VERSION = 1


@dataclass
class TrainConfig:
    version: int = CONFIG_VERSION
    data: str = ""  # manifest or dataset layout (see training.datasets)
    out: str = "runs/default"
    model: str = "efficientnet_lite0"
    branches: list[str] = field(default_factory=lambda: ["rgb", "residual", "spectrum"])
    input_size: int = 128
    # The tile's logit from the features (detector.models.HEADS): "linear"; "hypersphere"
    # (reals pulled to a centre, the logit rising with the distance from it; head_dim: the
    # projection's size); or "positive" (non-negative weights: only evidence of fakeness counts).
    head: str = "linear"
    head_dim: int = 64
    max_tiles: int = 9
    pretrained: str | None = "auto"
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs, tests)
    batch_size: int = 32  # tiles per optimizer step
    # Random tiles drawn from each training image. 1: each tile is scored against the image's
    # label on its own. k > 1: the image is scored as at inference, by the mean of its k tile
    # logits, and the loss is taken on that mean (multiple-instance learning: a tile with no
    # trace to show is not pushed once its image is decided). A batch then holds
    # batch_size / k images and an epoch as many tiles as with 1, so the compute is the same.
    tiles_per_image: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    # The pretrained backbone's learning rate as a share of lr (the head and the spectrum
    # branch, which start from random weights, keep lr): gentler on the ImageNet features.
    backbone_lr_scale: float = 1.0
    # Steps at the start that train only the head and the spectrum branch, the backbone frozen
    # (linear probing, then fine-tuning: LP-FT); the backbone then warms up over warmup_steps
    # and follows the cosine to the end. Its batch-norm statistics still follow the data.
    freeze_backbone_steps: int = 0
    # Score, keep and calibrate an exponential moving average of the weights (and batch-norm
    # statistics) instead of the last step's; 0: off. 0.998 weighs about the last 500 steps.
    # Weights averaged along the run sit in flatter minima, which transfer better to domains
    # not trained on (SWAD, Cha et al. 2021); the average warms up as (1 + t) / (10 + t).
    ema_decay: float = 0.0
    grad_clip: float = 1.0
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: str = "auto"  # auto (on CUDA) | on | off
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    augment: AugmentPolicy = field(default_factory=lambda: AugmentPolicy(p_blur=0.2, p_jpeg=0.4))
    balance: bool = True  # balanced sampling: half reals, half fakes spread over generators
    balance_power: float = 0.0  # generator g drawn in proportion to n_g**power (0: equally)
    pool_weights: dict[str, float] = field(default_factory=dict)  # share of each pool; {}: by size
    patience: int = 3  # epochs without a better validation AP before stopping
    # The checkpoint kept (best.pt, then calibrated and exported): "best", the epoch with the
    # best validation AP; "last", the last epoch trained, whatever its validation AP.
    keep: str = "best"
    exclude_families: list[str] = field(default_factory=list)  # leave-one-out training
    # source ids (a wild source group) left out too: the real photos a held-out family's
    # images were made from, so that the family's content does not train as real
    exclude_sources: list[str] = field(default_factory=list)
    target_fpr: float = 0.01  # for the decision threshold chosen on validation
    # Calibrate on the validation images as they are and re-encoded these ways too (e.g.
    # [jpeg:90]): the threshold then holds for photos that reach it re-compressed.
    calibration_views: list[str] = field(default_factory=list)
    # The frozen-feature probe (training/probe.py): fitted without the training reals' top
    # principal directions of feature space, those in which photos differ most by content.
    probe_drop_pcs: int = 0
    eval_batch_images: int = 16
    val_max_images: int | None = None  # per-epoch validation on a seeded subset (None: all);
    # the final calibration always uses the whole validation split
    eval_test: bool = True  # score the test split when training ends (eval_test.json)
    resume: bool = True  # continue from <out>/checkpoints/last.pt when it exists

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _typed(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the type ``hint`` names, or a ValueError naming the setting.

    YAML 1.1 reads ``on``/``off``/``yes``/``no`` as booleans; a text setting given one gets
    ``"on"`` or ``"off"`` (``amp=off``, ``channels_last=on``), an optional one ``false`` as
    none (``pretrained=false``).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in args if a is not type(None)]
        if value is None or (value is False and inner is str):  # pretrained=false: none
            return None
        return _typed(value, inner, name)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r}")
        items = args[:1] * len(value) if origin is list or args[-1] is Ellipsis else args
        if len(items) != len(value):
            raise ValueError(f"{name} must have {len(items)} values, got {value!r}")
        return origin(_typed(v, h, name) for v, h in zip(value, items, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(
                f"{name} must be a mapping, e.g. {{wild: 0.7, crops256: 0.3}}, got {value!r}"
            )
        key_hint, value_hint = args
        return {
            _typed(k, key_hint, name): _typed(v, value_hint, f"{name}.{k}")
            for k, v in value.items()
        }
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot in the mantissa) as text
            with contextlib.suppress(ValueError):
                number = float(value)
                if math.isfinite(number):
                    return number
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .inf and .nan: a run would fail an epoch later
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if not isinstance(value, str | int | float):
            raise ValueError(f"{name} must be text, got {value!r}")
        return str(value)
    return value  # nested settings (augment) are checked by their own _coerce


def _coerce(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown settings {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- ``key=value`` overrides (values parsed as YAML scalars)."""
    data: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a training config is a mapping of settings")
        data.update(loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            raise ValueError(
                f"override {item!r}: its value is not valid YAML ({problem})"
            ) from None
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {part} is not a group of settings")
        target[parts[-1]] = value
    if data.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        raise ValueError(
            f"config version {data['version']} is not supported (expected {CONFIG_VERSION})"
        )
    if "augment" in data:
        if not isinstance(data["augment"], dict):
            raise ValueError(f"config.augment must be a group of settings, got {data['augment']!r}")
        data["augment"] = _coerce(AugmentPolicy, data["augment"], "config.augment")
    config = _coerce(TrainConfig, data, "config")
    _validate(config)
    return config


def _validate(c: TrainConfig) -> None:
    if c.epochs < 1 or c.batch_size < 1 or c.lr <= 0:
        raise ValueError("epochs, batch_size and lr must be positive")
    if c.tiles_per_image < 1 or c.batch_size % c.tiles_per_image:
        raise ValueError(
            f"tiles_per_image must be positive and divide batch_size ({c.batch_size}), "
            f"got {c.tiles_per_image}"
        )
    if c.keep not in ("best", "last"):
        raise ValueError(f"keep must be best or last (the checkpoint kept), got {c.keep!r}")
    from detector.models import HEADS  # torch: imported here, where training needs it anyway

    if c.head not in HEADS or c.head_dim < 1:
        raise ValueError(
            f"head must be one of {HEADS} and head_dim positive, got {c.head!r}, {c.head_dim}"
        )
    if c.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {c.device!r}")
    if c.eval_batch_images < 1:
        raise ValueError(f"eval_batch_images must be positive, got {c.eval_batch_images}")
    if c.amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"amp must be auto, bf16, fp16 or off, got {c.amp!r}")
    if c.channels_last not in ("auto", "on", "off"):
        raise ValueError(f"channels_last must be auto, on or off, got {c.channels_last!r}")
    if c.val_max_images is not None and c.val_max_images < 10:
        raise ValueError(f"val_max_images must be at least 10, got {c.val_max_images}")
    if not 0 < c.backbone_lr_scale <= 10:
        raise ValueError(
            f"backbone_lr_scale must be in (0, 10], got {c.backbone_lr_scale} "
            "(to hold the backbone still for a while, use freeze_backbone_steps)"
        )
    if not 0 <= c.ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {c.ema_decay}")
    if c.weight_decay < 0 or c.grad_clip <= 0:  # a negative clip turns every gradient round
        raise ValueError(
            f"weight_decay must not be negative and grad_clip must be positive, got "
            f"{c.weight_decay}, {c.grad_clip}"
        )
    if c.patience < 1 or c.seed < 0 or c.workers < 0:
        raise ValueError(
            f"patience must be positive and seed and workers not negative, got {c.patience}, "
            f"{c.seed}, {c.workers}"
        )
    if c.max_steps is not None and c.max_steps < 1:
        raise ValueError(f"max_steps must be positive (or null: no limit), got {c.max_steps}")
    if c.freeze_backbone_steps < 0 or c.warmup_steps < 0:
        raise ValueError("freeze_backbone_steps and warmup_steps must not be negative")
    if c.probe_drop_pcs < 0:
        raise ValueError(f"probe_drop_pcs must not be negative, got {c.probe_drop_pcs}")
    if not 0 <= c.balance_power <= 1:
        raise ValueError(f"balance_power must be in [0, 1], got {c.balance_power}")
    if any(w < 0 for w in c.pool_weights.values()):
        raise ValueError(f"pool_weights must not be negative: {c.pool_weights}")
    from training.degrade import parse_chain

    for view in c.calibration_views:
        parse_chain(view)  # a ValueError names a bad one
    if c.augment.p_shuffle > 0 and c.input_size % c.augment.shuffle_patch:
        raise ValueError(
            f"augment.shuffle_patch ({c.augment.shuffle_patch}) must divide input_size "
            f"({c.input_size})"
        )
    if not 0 < c.target_fpr < 0.5:
        raise ValueError("target_fpr must be in (0, 0.5)")
