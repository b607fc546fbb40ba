"""Weight averaging of fine-tuned runs ("model soups", Wortsman et al. 2022).

Runs fine-tuned from the same pretrained start with different data mixes or settings often sit
in one basin of the loss, and the average of their weights tends to generalise better than any
of them alone, at the cost of one model at inference. ``make_soup`` checks the runs are the same
architecture and preprocessing, averages their ``best.pt`` weights (optionally weighted),
calibrates the average on the validation split exactly as training does, and writes a run
folder that ``export``, ``evaluate`` and ``serve`` take like any other.

The soup's ``exclude_families`` (and ``exclude_sources``) are those every ingredient was
trained without: only those are unseen by the average, so only those count as held out when it
is evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from detector.buildinfo import git_commit
from detector.checkpoint import FORMAT, model_from_checkpoint, read_checkpoint, write_checkpoint
from detector.engine import ONNX_FILE, SIDECAR
from detector.preprocess import PreprocessConfig
from training.datasets import load_samples
from training.debian import sha256_file
from training.evaluate import predict_logits
from training.metrics import average_precision
from training.train import split_samples, validation_calibration

__all__ = ["SoupError", "average_state_dicts", "left_out_by_all", "make_soup", "normalised_weights"]


class SoupError(ValueError):
    """The runs cannot be averaged, or the soup cannot be calibrated."""


def left_out_by_all(configs: list[dict], key: str) -> list[str]:
    """What every ingredient's training config left out under ``key`` (in the first's order)."""
    return [x for x in configs[0].get(key) or [] if all(x in (c.get(key) or []) for c in configs)]


def _best(run: Path) -> Path:
    path = run / "checkpoints" / "best.pt" if run.is_dir() else run
    if not path.is_file():
        raise SoupError(f"{run}: no checkpoints/best.pt (is it a finished training run?)")
    return path


def _spec_key(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "pretrained"}


def average_state_dicts(states: list[dict], weights: list[float]) -> dict:
    """The weighted mean of floating-point tensors; integer buffers (BatchNorm's step count)
    are taken from the first. States must have the same keys, shapes and dtypes."""
    first = states[0]
    for i, state in enumerate(states[1:], 2):
        if state.keys() != first.keys():
            diff = sorted(set(state) ^ set(first))[:3]
            raise SoupError(f"ingredient {i} has other parameters than the first ({diff} ...)")
        for k, v in state.items():
            if v.shape != first[k].shape or v.dtype != first[k].dtype:
                raise SoupError(
                    f"ingredient {i}: {k} is {tuple(v.shape)} {v.dtype}, "
                    f"the first has {tuple(first[k].shape)} {first[k].dtype}"
                )
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            acc = sum(w * s[k].double() for w, s in zip(weights, states, strict=True))
            out[k] = acc.to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def model_in(folder: Path) -> str | None:
    """The model ``folder`` already holds, in words, or None. A new model written beside it
    hides it or is hidden by it (``score --model`` reads the ONNX file first, ``export`` and
    ``evaluate`` the checkpoints), so soup, probe and ensemble refuse such a folder."""
    folder = Path(folder)
    if (folder / ONNX_FILE).exists() or (folder / SIDECAR).exists():
        return "an ONNX model"
    if (folder / "checkpoints").exists():
        return "a training run (checkpoints/)"
    return None


def normalised_weights(
    weights: list[float] | None, count: int, unit: str, error: type[ValueError] = SoupError
) -> list[float]:
    """``weights`` (default: all equal), one per ``unit``, checked and scaled to sum to 1."""
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(weights) != count:
        raise error(f"{len(weights)} weights for {count} {unit}")
    if not all(np.isfinite(weights)) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise error("weights must be finite, >= 0 and not all zero")
    return [w / sum(weights) for w in weights]


def make_soup(
    runs: list[Path],
    out: Path,
    *,
    data: Path | None = None,
    weights: list[float] | None = None,
    workers: int = 2,
) -> dict:
    """Average ``runs`` into the run folder ``out``, calibrated on ``data``'s validation split
    (default: the first run's manifest). -> the final record (also in ``metrics.jsonl``)."""
    if len(runs) < 2:
        raise SoupError("a soup needs at least two runs")
    weights = normalised_weights(weights, len(runs), "runs")
    if held := model_in(out):
        raise SoupError(f"{out} already holds {held}; choose a new folder")

    ckpts = [(run, read_checkpoint(_best(run))) for run in runs]
    unfinished = [str(run) for run, c in ckpts if not c.get("calibration")]
    if unfinished:  # best.pt of a run still training (or stopped): its weights of the moment
        raise SoupError(
            f"{unfinished[0]} has not finished training (its best.pt is not calibrated): "
            "finish it (run its train command again) or leave it out"
        )
    first_run, first = ckpts[0]
    for run, ckpt in ckpts[1:]:
        if _spec_key(ckpt["model_spec"]) != _spec_key(first["model_spec"]):
            raise SoupError(
                f"{run} is {ckpt['model_spec']}, {first_run} is {first['model_spec']}: "
                "only one architecture can be averaged"
            )
        if ckpt["preprocess"] != first["preprocess"]:
            raise SoupError(f"{run} preprocesses differently from {first_run}")
    state = average_state_dicts([c["state_dict"] for _, c in ckpts], weights)

    configs = [c.get("train_config") or {} for _, c in ckpts]
    common = left_out_by_all(configs, "exclude_families")
    common_sources = left_out_by_all(configs, "exclude_sources")
    data = Path(data or configs[0].get("data") or "")
    if not data.is_file() and not data.is_dir():
        raise SoupError(f"calibration data {data} not found (pass --data MANIFEST)")
    _, val, _ = split_samples(load_samples(data), common, common_sources)

    model = model_from_checkpoint({"model_spec": first["model_spec"], "state_dict": state})
    prep = PreprocessConfig.from_dict(first["preprocess"])

    def score(samples, transform):
        def run(tiles: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(tiles)).float().reshape(-1).numpy()

        return predict_logits(run, samples, prep, workers=workers, transform=transform)

    calib, logits = validation_calibration(
        score,
        val,
        list(configs[0].get("calibration_views") or []),
        float(configs[0].get("target_fpr", 0.01)),
        str(data),
    )
    val_ap = average_precision([s.label for s in val], logits)
    ingredients = [
        {
            "run": str(run),
            "weight": w,
            "commit": c.get("commit"),
            "best_val_ap": c.get("best_val_ap"),
            "exclude_families": cfg.get("exclude_families") or [],
            "exclude_sources": cfg.get("exclude_sources") or [],
        }
        for (run, c), w, cfg in zip(ckpts, weights, configs, strict=True)
    ]
    train_config = {
        **configs[0],
        "out": str(out),
        "exclude_families": common,
        "exclude_sources": common_sources,
    }
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": FORMAT,
        "model_spec": first["model_spec"],
        "preprocess": first["preprocess"],
        "state_dict": state,
        "train_config": train_config,
        "calibration": calib.to_dict(),
        "data": {"path": str(data), "sha256": sha256_file(data) if data.is_file() else ""},
        "commit": git_commit(),
        "step": 0,
        "epoch": 0,
        "best_val_ap": val_ap,
        "stale_epochs": 0,
        "soup": ingredients,
    }
    write_checkpoint(out / "checkpoints" / "best.pt", ckpt)
    (out / "config.yaml").write_text(
        yaml.safe_dump({**train_config, "soup": ingredients}, sort_keys=False)
    )
    record = {
        "final": True,
        "soup": ingredients,
        "best_val_ap": val_ap,
        "val_images": len(val),
        "calibration": calib.to_dict(),
    }
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record
