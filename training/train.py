"""The training loop: a short step, and hooks for evaluation, checkpoints, schedule and logging.

A run folder holds ``config.yaml`` (resolved), ``checkpoints/last.pt`` (resumable),
``checkpoints/best.pt`` (the epoch kept: best validation AP, or the last with ``keep=last``;
calibrated at the end), ``metrics.jsonl`` and
``train.log``. Multi-GPU / multi-node: launch with ``torchrun``; each rank draws its own shard
of one seeded balanced sample per epoch (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Sampler

from detector.buildinfo import git_commit
from detector.calibration import Calibration
from detector.checkpoint import FORMAT, read_checkpoint, write_checkpoint
from detector.image import ImageError
from detector.models import ModelSpec, build_model
from detector.preprocess import PreprocessConfig
from training.calibrate import fit_calibration
from training.config import TrainConfig
from training.data import TrainDataset
from training.datasets import SPLITS, Sample, data_digest, file_key, load_samples, worker_message
from training.degrade import apply_chain, parse_chain
from training.evaluate import evaluate_scores, predict_logits
from training.metrics import average_precision

__all__ = [
    "AMP_DTYPES",
    "BalancedSampler",
    "check_data",
    "need_both_classes",
    "optimization_step",
    "sample_weights",
    "seed_everything",
    "split_samples",
    "train",
    "training_splits",
    "validation_calibration",
]

log = logging.getLogger("synthdetect.train")


def seed_everything(seed: int) -> None:
    """The one seeding function: Python, NumPy and torch (all devices)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class BalancedSampler(Sampler[int]):
    """Draws, with replacement, half reals and half fakes, the fakes spread over generators.

    Within the fakes, generator ``g`` with ``n_g`` training images gets a share proportional to
    ``n_g ** power`` (0: every generator equally, however few its images; 0.5: square root,
    so a generator with one image is not drawn as often as one with a thousand). With
    ``power > 0`` the reals are spread over their source groups the same way. With
    ``pool_weights`` each pool (``crops256``, ``crops64``, ``wild``, ...) gets that share of
    every batch, half real and half fake within the pool; a pool without a weight is not drawn.

    All ranks draw the same seeded sequence for an epoch and keep every ``world``-th index, so
    shards are disjoint and the run is reproducible for a given world size.
    """

    def __init__(
        self,
        samples: list[Sample],
        per_rank: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        balance: bool = True,
        power: float = 0.0,
        pool_weights: dict[str, float] | None = None,
    ) -> None:
        self.per_rank, self.seed, self.rank, self.world = per_rank, seed, rank, world
        self.epoch = 0
        if balance:
            self.weights = torch.tensor(
                sample_weights(samples, power, pool_weights), dtype=torch.float64
            )
        else:
            self.weights = torch.ones(len(samples), dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        idx = torch.multinomial(
            self.weights, self.per_rank * self.world, replacement=True, generator=g
        )
        return iter(idx[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def sample_weights(
    samples: list[Sample], power: float = 0.0, pool_weights: dict[str, float] | None = None
) -> list[float]:
    """Drawing weight of each sample (see ``BalancedSampler``); they sum to 1."""
    if pool_weights:
        present = {s.pool for s in samples}
        unknown = set(pool_weights) - present
        if unknown:
            raise ValueError(f"pool_weights names pools not in the data: {sorted(unknown)}")
        share = {p: float(pool_weights.get(p, 0.0)) for p in present}
        if sum(share.values()) <= 0:
            raise ValueError(f"pool_weights {pool_weights} give no weight to any pool")
    else:
        share = {"": 1.0}
    total = sum(share.values())

    def key(s: Sample) -> tuple[str, int, str]:
        stratum = s.generator if s.label else (s.source_id if power > 0 else "real")
        return (s.pool if pool_weights else "", s.label, stratum)

    counts = Counter(key(s) for s in samples)
    mass: Counter[tuple[str, int]] = Counter()  # sum of n**power over each class's strata
    for (pool, label, _), n in counts.items():
        mass[(pool, label)] += n**power
    classes_in = Counter(pool for pool, _ in mass)  # 2, or 1 where a pool lacks a class
    out = []
    for s in samples:
        pool, label, _ = k = key(s)
        class_share = share[pool] / total / classes_in[pool]
        out.append(class_share * counts[k] ** power / mass[(pool, label)] / counts[k])
    return out


# Settings that decide what a run's weights learn from: a run folder trained with other
# values is not resumed or reused (Trainer._stored_run).
RUN_DEFINING = (
    "model",
    "branches",
    "input_size",
    "pretrained",
    "exclude_families",
    "exclude_sources",
    "pool_weights",
    "balance",
    "balance_power",
    "seed",
    "ema_decay",
    "tiles_per_image",
    "head",
    "head_dim",
    "max_tiles",
    # the optimizer's: a resumed run takes them from its stored optimizer and scheduler, so a
    # new value would be recorded and not used
    "lr",
    "weight_decay",
    "backbone_lr_scale",
)


def _hashed_val(train: list[Sample]) -> list[Sample]:
    """About 10% of ``train``'s units (a source group, else a file) for validation, by a hash
    of the unit: its source id, or its path relative to the data's common folder (the same
    split however ``data=`` is written). A class none of whose units hashes into validation
    gives it its lowest-hashing unit, where it has two or more (a small folder of reals and
    fakes had no validation fakes, and could not be trained on)."""
    import zlib

    resolved = {s.path: Path(s.path).resolve() for s in train}
    parents = [str(p.parent) for p in resolved.values()]
    root = os.path.commonpath(parents) if parents else ""

    def unit(s: Sample) -> str:
        return s.source_id or os.path.relpath(resolved[s.path], root)

    def crc(key: str) -> int:
        return zlib.crc32(key.encode())

    chosen = {unit(s) for s in train if crc(unit(s)) % 10 == 0}
    for label in (0, 1):
        units = {unit(s) for s in train if s.label == label}
        if units and not units & chosen and len(units) >= 2:
            chosen.add(min(units, key=lambda k: (crc(k), k)))
    return [s for s in train if unit(s) in chosen]


def split_samples(
    samples: list[Sample],
    exclude_families: Collection[str],
    exclude_sources: Collection[str] = (),
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(train, val, test) without the excluded families and sources; without a val split, about
    10% of train's source groups or files (``_hashed_val``) become val."""
    unknown = sorted({s.split for s in samples} - {"", *SPLITS})
    if unknown:  # a "validation" split was dropped, and val taken from the training images
        raise ValueError(
            f"the data have splits {unknown}, not one of {list(SPLITS)} (or none): rename "
            "them, or their images are left out of training and validation unnoticed"
        )
    kept = [
        s
        for s in samples
        if s.family not in exclude_families and s.source_id not in exclude_sources
    ]
    train = [s for s in kept if s.split == "train"]
    val = [s for s in kept if s.split == "val"]
    test = [s for s in kept if s.split == "test"]
    if not train:
        train = [s for s in kept if s.split in ("", "train")]
    if not val:
        val = _hashed_val(train)
        held = set(val)
        train = [s for s in train if s not in held]
    if not train or not val:
        raise ValueError("need training and validation images (a train and a val split)")
    need_both_classes(val, "validation")  # calibration and model choice rank val's two classes
    seen = {file_key(s.path) for s in train}  # the file, however its path is written
    leaked = [s for s in val if file_key(s.path) in seen]
    if leaked:
        raise ValueError(
            f"{len(leaked)} validation images are training images too (e.g. {leaked[0].path}): "
            "validation would measure what was learned"
        )
    return train, val, test


def training_splits(
    samples: list[Sample], exclude_families: Collection[str], exclude_sources: Collection[str]
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """``split_samples`` for a model about to be fitted (``train``, ``probe``): the data are
    checked first (``check_data``) and the training split must hold both classes."""
    check_data(samples, exclude_families, exclude_sources)
    train, val, test = split_samples(samples, exclude_families, exclude_sources)
    need_both_classes(train, "training")
    return train, val, test


def check_data(
    samples: Sequence[Sample], exclude_families: Collection[str], exclude_sources: Collection[str]
) -> None:
    """Before training: every image file is there (one found missing mid-epoch stopped the
    run with a worker's traceback), and what the run leaves out is in the data (a mistyped
    family would be trained on while the run says it was held out)."""
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} images of the manifest are not there (e.g. {missing[0]})")
    for what, names, present in (
        ("families", exclude_families, {s.family for s in samples}),
        ("sources", exclude_sources, {s.source_id for s in samples}),
    ):
        unknown = sorted(set(names) - present)
        if unknown:
            raise ValueError(f"exclude_{what} names {what} not in the data: {unknown}")


def need_both_classes(samples: Sequence[Sample], split: str) -> None:
    """Refuse a split without generated or without camera images, naming what it lacks."""
    labels = {s.label for s in samples}
    for label, name in ((1, "generated"), (0, "camera")):
        if label not in labels:
            raise ValueError(f"the {split} split has no {name} images ({len(samples)} images)")


@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(config: TrainConfig) -> _Dist:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but torch sees no CUDA device here (device=auto or cpu)")
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return _Dist(rank, world, torch.device("cuda", local))
    return _Dist(rank, world, torch.device("cpu"))


def _lr_lambda(warmup: int, total: int, start: int = 0):
    """Linear warmup over ``warmup`` steps, then a cosine to zero at ``total``; nothing before
    ``start`` (a frozen backbone's schedule begins when it thaws)."""

    def f(step: int) -> float:
        if step < start:
            return 0.0
        step -= start
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - start - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    """Four groups: backbone or not (the backbone at ``backbone_lr_scale`` of the lr) x
    weight decay or not (none on biases and normalisation weights); the head's groups first,
    so the lr logged per epoch is the head's."""
    groups = {(bb, wd): [] for bb in (False, True) for wd in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = not (p.ndim <= 1 or name.endswith(".bias"))
            groups[(name.startswith("backbone."), decays)].append(p)
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decays else 0.0,
            "lr": config.lr * (config.backbone_lr_scale if backbone else 1.0),
            "backbone": backbone,
        }
        for (backbone, decays), params in groups.items()
    ]


# Mixed-precision settings by name (the config's ``amp`` and the throughput benchmark's).
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "off": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "auto":  # bf16 on CUDA, full precision elsewhere
        return torch.bfloat16 if device.type == "cuda" else None
    return AMP_DTYPES[config.amp]


def optimization_step(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: torch.dtype | None,
    grad_clip: float,
) -> torch.Tensor:
    """Forward, loss, backward, clipping and the update: a training step past data loading
    (the Trainer's and the training-throughput benchmark's). Returns the loss, on device.

    ``x`` holds k consecutive tiles per label (k = len(x) / len(y), 1 by default), and an
    image's logit is the mean of its tiles', as at inference."""
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = net(x).float().view(len(y), -1).mean(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss.detach()


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics, kept in
    a copy of the model that is scored and stored in place of the trained one. Integer
    buffers (batch-norm step counts) are copied. The decay warms up as (1 + t) / (10 + t), so
    the first steps' weights, far from the end, soon weigh little."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # (average, trained) tensor pairs, paired once: loading a state dict copies into
        # these tensors, so the pairs hold for the run (a resume included)
        pairs = list(
            zip(self.model.state_dict().values(), model.state_dict().values(), strict=True)
        )
        self._floats = [(a, t) for a, t in pairs if a.dtype.is_floating_point]
        self._others = [(a, t) for a, t in pairs if not a.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the trained model's weights after optimizer step ``step`` (1, 2, ...) in."""
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        for avg, trained in self._floats:
            avg.lerp_(trained, weight)
        for avg, trained in self._others:
            avg.copy_(trained)


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.d = _init_distributed(config)
        self.run = Path(config.out)
        _check_run_folder(self.run)
        samples = load_samples(config.data)
        # the manifest's sha256 (a folder's manifest too), else the listing of its images
        self.data_sha = data_digest(config.data, samples)
        stored = self._stored_run()
        seed_everything(config.seed)
        self.train_s, self.val_s, self.test_s = training_splits(
            samples, config.exclude_families, config.exclude_sources
        )
        self.spec = ModelSpec(
            config.model,
            tuple(config.branches),
            config.input_size,
            pretrained=config.pretrained,
            head=config.head,
            head_dim=config.head_dim,
        )
        self.prep = PreprocessConfig(input_size=config.input_size, max_tiles=config.max_tiles)
        self.model = build_model(self.spec).to(self.d.device)
        if config.channels_last == "on" or (
            config.channels_last == "auto" and self.d.device.type == "cuda"
        ):
            self.model = self.model.to(memory_format=torch.channels_last)
        # an epoch is as many tiles as there are training images, in batches of batch_size
        # tiles: batch_size / tiles_per_image images a step
        self.steps_per_epoch = math.ceil(len(self.train_s) / self.d.world / config.batch_size)
        images_per_batch = config.batch_size // config.tiles_per_image
        per_rank = self.steps_per_epoch * images_per_batch
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs
        if config.freeze_backbone_steps >= self.total_steps:
            raise ValueError(
                f"freeze_backbone_steps={config.freeze_backbone_steps} leaves the backbone frozen "
                f"for the whole run ({self.total_steps} steps)"
            )
        # the weights scored, stored and calibrated: the average's when there is one
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.scored = self.ema.model if self.ema else self.model
        groups = _param_groups(self.model, config)
        self.opt = torch.optim.AdamW(groups, lr=config.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            [
                _lr_lambda(
                    config.warmup_steps,
                    self.total_steps,
                    config.freeze_backbone_steps if g["backbone"] else 0,
                )
                for g in groups
            ],
        )
        self.step = 0
        self._wrapped_frozen: bool | None = None  # the backbone's state when last wrapped
        self._wrap()
        self.amp = _amp_dtype(config, self.d.device)
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        self.sampler = BalancedSampler(
            self.train_s,
            per_rank,
            config.seed,
            self.d.rank,
            self.d.world,
            config.balance,
            config.balance_power,
            config.pool_weights or None,
        )
        self.dataset = TrainDataset(
            self.train_s, self.prep, config.augment, config.seed, config.tiles_per_image
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=images_per_batch,
            sampler=self.sampler,
            num_workers=config.workers,
            drop_last=True,
            persistent_workers=False,
            pin_memory=self.d.device.type == "cuda",
        )
        self.step, self.epoch, self.best_ap, self.stale = 0, 0, -1.0, 0
        # best.pt and no last.pt (removed, or a soup's folder): nothing to continue from
        self.best_only = stored is not None and "optimizer" not in stored
        if stored is not None and not self.best_only:  # last.pt: continue where it stopped
            self._resume(stored)
        # only now, every check passed: the folder (and, in fit, its config.yaml) is written
        (self.run / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._setup_logging()

    # --- hooks ----------------------------------------------------------------------------

    def _setup_logging(self) -> None:
        if not self.d.main:
            return
        handler = logging.FileHandler(self.run / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)

    def _write_config(self) -> None:
        """The settings of the training about to run (not of a command that found nothing
        to do: a finished run's config.yaml keeps the settings it was trained with)."""
        if self.d.main:
            (self.run / "config.yaml").write_text(
                yaml.safe_dump(_plain(self.config.to_dict()), sort_keys=False)
            )

    def _log_metrics(self, record: dict) -> None:
        if self.d.main:
            with open(self.run / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            log.info(json.dumps(record))

    def _checkpoint(
        self, path: Path, calibration: dict | None = None, with_optimizer: bool = True
    ) -> None:
        if not self.d.main:
            return
        ckpt = {
            "format": FORMAT,
            "model_spec": self.spec.to_dict(),
            "preprocess": self.prep.to_dict(),
            "state_dict": self.scored.state_dict(),
            "train_config": _plain(self.config.to_dict()),
            "calibration": calibration,
            "data": {"path": str(self.config.data), "sha256": self.data_sha},
            "commit": git_commit(),
            "step": self.step,
            "epoch": self.epoch,
            "best_val_ap": self.best_ap,
            "stale_epochs": self.stale,
        }
        if with_optimizer:
            if self.ema:  # the trained weights to go on from; state_dict is their average
                ckpt["train_state_dict"] = self.model.state_dict()
            ckpt["optimizer"] = self.opt.state_dict()
            ckpt["scheduler"] = self.sched.state_dict()
        write_checkpoint(path, ckpt)

    def _stored_run(self) -> dict | None:
        """The folder's checkpoint to continue from (``last.pt``, else ``best.pt``), read once,
        or None. A folder trained on other terms (a leave-one-out group redefined, another
        model, other data) is refused: only what decides what the weights learn is compared;
        the schedule, workers and evaluation settings may change."""
        if not self.config.resume:
            return None
        paths = [self.run / "checkpoints" / n for n in ("last.pt", "best.pt")]
        path = next((p for p in paths if p.exists()), None)
        if path is None:
            return None
        ckpt = read_checkpoint(path)
        old, new = ckpt.get("train_config") or {}, _plain(self.config.to_dict())
        for key in RUN_DEFINING:
            if key in old and old[key] != new[key]:
                raise ValueError(
                    f"{self.run} was trained with {key}={old[key]!r}, not {new[key]!r}: "
                    "train into another out= folder, or remove this one"
                )
        old_sha = (ckpt.get("data") or {}).get("sha256")
        if old_sha and self.data_sha and old_sha != self.data_sha:
            raise ValueError(
                f"{self.run} was trained on another {self.config.data} (its sha256 differs): "
                "train into another out= folder, or remove this one"
            )
        return ckpt

    def _resume(self, ckpt: dict) -> None:
        if self.ema:
            if "train_state_dict" not in ckpt:
                raise ValueError(
                    f"{self.run}/checkpoints/last.pt was saved without a weight average "
                    "(ema_decay): train into another out= folder, or remove this one"
                )
            self.model.load_state_dict(ckpt["train_state_dict"])
            self.ema.model.load_state_dict(ckpt["state_dict"])
        else:
            self.model.load_state_dict(ckpt["state_dict"])
        if len(ckpt["optimizer"]["param_groups"]) != len(self.opt.param_groups):
            raise ValueError(
                f"{self.run}/checkpoints/last.pt holds an optimizer of another layout (saved "
                "before the backbone got its own learning rate): train into another out= "
                "folder, or remove this one"
            )
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        self.best_ap, self.stale = float(ckpt["best_val_ap"]), int(ckpt.get("stale_epochs", 0))
        self._wrap()
        log.info("resumed from step %d (epoch %d)", self.step, self.epoch)

    # --- the step and the epoch -----------------------------------------------------------

    @property
    def backbone_frozen(self) -> bool:
        return self.step < self.config.freeze_backbone_steps

    def _wrap(self) -> None:
        """Freeze or thaw the backbone for the current step, then wrap the model for the
        processes (DistributedDataParallel syncs only the parameters that train, so it is
        rebuilt when the backbone thaws). A frozen parameter gets no gradient, so the
        optimizer leaves it and its moments alone until then."""
        if self._wrapped_frozen == self.backbone_frozen:
            return  # a resumed run on the same side of the thaw keeps its wrapper
        self._wrapped_frozen = self.backbone_frozen
        for p in self.model.backbone.parameters():
            p.requires_grad_(not self.backbone_frozen)
        self.net = self.model
        if self.d.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.d.device.index] if self.d.device.type == "cuda" else None,
            )

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x = x.flatten(0, x.dim() - 4).to(self.d.device, non_blocking=True)  # k tiles an image
        y = y.to(self.d.device, non_blocking=True)
        if self.d.device.type == "cuda" and self.config.channels_last != "off":
            x = x.contiguous(memory_format=torch.channels_last)
        loss = optimization_step(
            self.net, self.opt, self.scaler, x, y, self.amp, self.config.grad_clip
        )
        self.sched.step()
        self.step += 1
        if self.ema:
            self.ema.update(self.step)
        if self.step == self.config.freeze_backbone_steps:
            log.info("step %d: the backbone thaws", self.step)
            self._wrap()  # a new wrapper is built in training mode, like the model it wraps
        return float(loss)

    def run_epoch(self) -> float:
        from tqdm import tqdm

        self.net.train()
        self.sampler.set_epoch(self.epoch)
        self.dataset.set_epoch(self.epoch)
        losses, seen, start = [], 0, time.perf_counter()
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {self.epoch}",
            disable=not self.d.main,
            leave=False,
        )
        for x, y in self.loader:
            losses.append(self.train_step(x, y))
            seen += len(y) * self.config.tiles_per_image * self.d.world  # tiles
            bar.update(1)
            bar.set_postfix(
                loss=f"{np.mean(losses[-20:]):.3f}",
                img_s=f"{seen / (time.perf_counter() - start):.0f}",
            )
            if self.step >= self.total_steps:
                break
        bar.close()
        self.throughput = seen / max(1e-9, time.perf_counter() - start)
        return float(np.mean(losses)) if losses else float("nan")

    def scores(self, samples: list[Sample], transform=None) -> np.ndarray:
        self.scored.eval()

        def run(tiles: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return (
                    self.scored(torch.from_numpy(tiles).to(self.d.device))
                    .float()
                    .reshape(-1)
                    .cpu()
                    .numpy()
                )

        return predict_logits(
            run,
            samples,
            self.prep,
            batch_images=self.config.eval_batch_images,
            workers=self.config.workers,
            transform=transform,
        )

    def _epoch_val(self) -> list[Sample]:
        """The validation images scored after each epoch: all, or a seeded random subset
        (scoring every tile of every image can take longer than an epoch on a CPU)."""
        n = self.config.val_max_images
        if n is None or n >= len(self.val_s):
            return self.val_s
        keep = np.random.default_rng(self.config.seed).permutation(len(self.val_s))[:n]
        return [self.val_s[i] for i in sorted(keep)]

    def validate(self) -> float:
        val = self._epoch_val()
        ap = average_precision([s.label for s in val], self.scores(val)) if self.d.main else 0.0
        if self.d.world > 1:  # every rank needs the same early-stopping decision
            t = torch.tensor([ap], dtype=torch.float64, device=self.d.device)  # NCCL: on the GPU
            dist.broadcast(t, 0)
            ap = float(t.item())
        return ap

    def _finished(self) -> bool:
        """The run's final record is written: trained, calibrated and stored."""
        path = self.run / "metrics.jsonl"
        if not path.is_file() or not (self.run / "checkpoints" / "best.pt").is_file():
            return False
        return any('"final": true' in line for line in path.read_text().splitlines())

    def fit(self) -> Path:
        c = self.config
        more = self.epoch < c.epochs and self.step < self.total_steps and self.stale < c.patience
        if (not more or self.best_only) and self._finished():  # do not recalibrate
            log.info("%s is finished (final record in metrics.jsonl); nothing to do", self.run)
            return self.run
        if self.best_only:  # training from scratch would overwrite its best.pt
            raise ValueError(
                f"{self.run}/checkpoints holds best.pt and no last.pt to continue from (a "
                "soup's folder, or last.pt removed): train into another out= folder, or "
                "remove this one"
            )
        self._write_config()
        log.info("train %d / val %d / test %d images; %d steps of %d; model %s %s", len(self.train_s),
                 len(self.val_s), len(self.test_s), self.total_steps, c.batch_size, c.model, c.branches)  # fmt: skip
        while self.epoch < c.epochs and self.step < self.total_steps and self.stale < c.patience:
            try:
                loss = self.run_epoch()
                ap = self.validate()
            except ImageError as exc:  # a file that was there when the run started is unreadable
                kept = f" (it resumes after epoch {self.epoch}, kept)" if self.epoch else ""
                raise ImageError(
                    f"{worker_message(exc)}; replace the file with a readable copy, then run "
                    f"the same command again{kept} (without its manifest row the data differ: "
                    "that is a new run, in another out= folder)"
                ) from None
            self.epoch += 1
            improved = ap > self.best_ap
            self.best_ap, self.stale = (ap, 0) if improved else (self.best_ap, self.stale + 1)
            self._log_metrics({"epoch": self.epoch, "step": self.step, "train_loss": loss, "val_ap": ap,
                               "lr": self.sched.get_last_lr()[0], "images_per_s": round(self.throughput, 1)})  # fmt: skip
            if improved or c.keep == "last":
                self._checkpoint(self.run / "checkpoints" / "best.pt", with_optimizer=False)
            self._checkpoint(self.run / "checkpoints" / "last.pt")
        if self.d.main:
            try:
                self.finish()
            except ImageError as exc:  # a validation or test image, after the training
                raise ImageError(
                    f"{worker_message(exc)}; replace the file with a readable copy, then run "
                    "the same command again (the training is kept: it calibrates and scores "
                    "again)"
                ) from None
        if self.d.world > 1:
            dist.barrier()
        return self.run

    def finish(self) -> None:
        """Calibrate the best weights on validation, store it, report the test split."""
        best = read_checkpoint(self.run / "checkpoints" / "best.pt")
        self.scored.load_state_dict(best["state_dict"])
        calib, _ = validation_calibration(
            self.scores,
            self.val_s,
            self.config.calibration_views,
            self.config.target_fpr,
            str(self.config.data),
        )
        best["calibration"] = calib.to_dict()
        write_checkpoint(self.run / "checkpoints" / "best.pt", best)
        record = {"final": True, "best_val_ap": self.best_ap, "calibration": calib.to_dict()}
        if self.test_s and self.config.eval_test:
            report = evaluate_scores(
                self.test_s,
                self.scores(self.test_s),
                calib,
                "test",
                model=str(self.run),
                data=str(self.config.data),
            )
            report.write(self.run / "eval_test.json")
            record["test"] = report.overall.to_dict()
            log.info("\n%s", report.render())
        self._log_metrics(record)


def validation_calibration(
    score, val: list[Sample], views: list[str], target_fpr: float, data: str
) -> tuple[Calibration, np.ndarray]:
    """Temperature and threshold fitted on the validation images as they are and under each
    view (e.g. ``jpeg:90``, the same images re-encoded). ``score(samples, transform)`` gives
    their logits. -> (calibration, the as-is logits)."""
    logits = [score(val, None)]
    for view in views:
        chain = parse_chain(view)
        logits.append(score(val, lambda px, c=chain: apply_chain(px, c, np.random.default_rng(0))))
    labels = [s.label for s in val] * len(logits)
    described = "as-is" + "".join(f" + {v}" for v in views)
    calib = fit_calibration(
        np.concatenate(logits), labels, target_fpr, f"val split of {data} ({described})"
    )
    return calib, logits[0]


def _plain(value):
    """Dataclass dicts with tuples -> YAML/JSON-friendly lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_run_folder(run: Path) -> None:
    """A run folder is new, empty, or a run's (checkpoints/, config.yaml or train.log): a
    folder of other files is not taken over (its config.yaml and checkpoints were added)."""
    if run.exists() and not run.is_dir():
        raise ValueError(f"out={run} is a file, not a folder")
    marks = ("checkpoints", "config.yaml", "train.log")
    if run.is_dir() and any(run.iterdir()) and not any((run / n).exists() for n in marks):
        raise ValueError(
            f"out={run} holds other files and no training run: train into a new or empty folder"
        )


def train(config: TrainConfig) -> Path:
    """Train (or resume) a run described by ``config``; returns the run folder."""
    if not config.data:
        raise ValueError("config.data is empty: point it at a manifest or dataset folder")
    config = replace(config, out=str(Path(config.out)))
    return Trainer(config).fit()
