"""Evaluation: per-generator and overall metrics, as dataclasses written to JSON.

Per-generator metrics compare the fakes of one generator with the reals of the same *pool* and
split (the images made the same way: 256 px crops, 64 px crops, wild images), so a generator is
never judged against reals of another size or origin. Images are scored through the same tile
grid as at inference, and a tile's logits are averaged per image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from detector.calibration import Calibration
from detector.preprocess import PreprocessConfig
from training.data import EvalDataset, collate_tiles
from training.datasets import Sample
from training.metrics import Metrics, compute_metrics, generator_groups

__all__ = ["EvalReport", "evaluate_scores", "predict_logits"]


def predict_logits(
    run: Callable[[np.ndarray], np.ndarray],
    samples: Sequence[Sample],
    preprocess: PreprocessConfig,
    *,
    batch_images: int = 16,
    workers: int = 0,
    transform=None,
    progress: bool = False,
) -> np.ndarray:
    """Mean tile logit per image, in sample order. ``run`` maps tiles (N,3,S,S) -> N logits."""
    loader = DataLoader(
        EvalDataset(samples, preprocess, transform),
        batch_size=batch_images,
        num_workers=workers,
        collate_fn=collate_tiles,
    )
    out = np.zeros(len(samples), np.float64)
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, unit="batch", desc="scoring", leave=False)
    for tiles, owner, indices in it:
        logits = np.asarray(run(tiles.numpy()), np.float64)
        sums = np.bincount(owner.numpy(), weights=logits, minlength=len(indices))
        counts = np.bincount(owner.numpy(), minlength=len(indices))
        out[indices] = sums / counts
    return out


@dataclass
class EvalReport:
    split: str
    overall: Metrics
    per_generator: dict[str, Metrics]
    per_pool: dict[str, Metrics]
    calibration: dict
    degradation: str = "none"
    model: str = ""
    data: str = ""
    extra: dict = field(default_factory=dict)
    equalise: str = "none"  # the re-encoding applied to both classes before scoring
    equalised: EvalReport | None = None  # the same evaluation after --equalise, beside this one

    def to_dict(self) -> dict:
        out = {
            "schema": 1,
            "split": self.split,
            "degradation": self.degradation,
            "equalise": self.equalise,
            "model": self.model,
            "data": self.data,
            "calibration": self.calibration,
            "overall": self.overall.to_dict(),
            "per_pool": {k: v.to_dict() for k, v in self.per_pool.items()},
            "per_generator": {k: v.to_dict() for k, v in self.per_generator.items()},
            **self.extra,
        }
        if self.equalised is not None:
            out["equalised"] = self.equalised.to_dict()
        return out

    def render(self) -> str:
        head = f"{'group':<28} {'n_real':>6} {'n_fake':>6} {'AP':>6} {'AUC':>6} {'acc.5':>6} {'real':>6} {'fake':>6} {'TPR@1%':>7} {'ECE':>6}"
        lines = [
            f"split={self.split} degradation={self.degradation} equalise={self.equalise} "
            f"threshold={self.calibration.get('threshold')}",
            head,
        ]

        def row(name: str, m: Metrics) -> str:
            def f(v):
                return (
                    "   -  " if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:6.3f}"
                )

            return (
                f"{name:<28} {m.n_real:>6} {m.n_fake:>6} {f(m.ap)} {f(m.roc_auc)} {f(m.accuracy)} "
                f"{f(m.real_accuracy_at_threshold)} {f(m.fake_accuracy_at_threshold)} {f(m.tpr_at_1pct_fpr):>7} {f(m.ece)}"
            )

        lines.append(row("ALL", self.overall))
        lines += [row(f"pool:{k}", v) for k, v in sorted(self.per_pool.items())]
        lines += [row(k, v) for k, v in sorted(self.per_generator.items())]
        lines.append("(real/fake: accuracy at the shipped threshold; acc.5: accuracy at 0.5)")
        if self.equalised is not None:
            lines += ["", self.equalised.render()]
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def evaluate_scores(
    samples: Sequence[Sample],
    logits: np.ndarray,
    calibration: Calibration,
    split: str,
    **meta,
) -> EvalReport:
    probs = calibration.probability(np.asarray(logits))
    labels = np.array([s.label for s in samples])
    thr = calibration.threshold
    per_pool, per_gen = {}, {}
    pools = sorted({s.pool for s in samples})
    for pool in pools:  # a one-class pool too (held-out photos): no AP, its class's accuracy
        m = np.array([s.pool == pool for s in samples])
        per_pool[pool or "-"] = compute_metrics(labels[m], probs[m], thr)
    for gen, m in generator_groups(samples).items():
        per_gen[gen] = compute_metrics(labels[m], probs[m], thr)
    return EvalReport(
        split=split,
        overall=compute_metrics(labels, probs, thr),
        per_generator=per_gen,
        per_pool=per_pool,
        calibration=calibration.to_dict(),
        **meta,
    )
