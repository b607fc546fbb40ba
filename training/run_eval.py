"""``synthdetect evaluate``: a model (checkpoint or ONNX) on a dataset, and leave-one-out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.engine import ModelBundle, load_bundle
from training.config import load_config
from training.datasets import Sample, load_samples
from training.degrade import apply_chain, chain_name, parse_chain
from training.evaluate import EvalReport, evaluate_scores, predict_logits
from training.metrics import compute_metrics

__all__ = ["evaluate_model", "leave_one_out", "score_held_out_family"]


def evaluate_model(
    model: Path, data: Path, split: str = "test", degrade: str = "none", device: str = "cpu"
) -> EvalReport:
    bundle = load_bundle(model, device=device)
    samples = load_samples(data)
    if split != "all":  # one split or several, comma-separated (e.g. test,heldout-generators)
        wanted = {x.strip() for x in split.split(",")}
        samples = [s for s in samples if s.split in wanted]
    if not samples:
        raise ValueError(f"{data}: no images in split {split!r}")
    chain = parse_chain(degrade)
    transform = (lambda px: apply_chain(px, chain, np.random.default_rng(0))) if chain else None
    logits = predict_logits(
        bundle.logits, samples, bundle.preprocess, transform=transform, progress=True
    )
    return evaluate_scores(
        samples,
        logits,
        bundle.calibration,
        split,
        degradation=chain_name(chain),
        model=f"{model} ({bundle.engine.name})",
        data=str(data),
    )


def score_held_out_family(
    bundle: ModelBundle, samples: list[Sample], family: str
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and calibrated probabilities of a family's test (and held-out generator) fakes
    and the test reals of the same pools: what leave-one-out scores each family's model on."""
    fakes = [s for s in samples if s.split in ("test", "heldout-generators") and s.family == family]
    pools = {s.pool for s in fakes}
    chosen = fakes + [s for s in samples if s.split == "test" and s.label == 0 and s.pool in pools]
    probs = bundle.calibration.probability(predict_logits(bundle.logits, chosen, bundle.preprocess))
    return np.array([s.label for s in chosen]), probs


def leave_one_out(
    config_path: Path | None, overrides: list[str], data: Path, out_root: Path
) -> EvalReport:
    """Train once per family with it held out; score each on its family's test fakes.

    The held-out family's fakes are compared with the reals of the same pools in the test
    split. The report's ``per_generator`` rows are the held-out families; ``overall`` pools
    their scores, and ``extra.mean_ap`` is the mean over families.
    """
    from training.train import train

    samples = load_samples(data)
    families = sorted({s.family for s in samples if s.label == 1 and s.family})
    if len(families) < 2:
        raise ValueError(f"{data}: leave-one-out needs at least two generator families")
    base = load_config(config_path, [*overrides, f"data={data}"])
    per_family, all_labels, all_probs = {}, [], []
    for family in families:
        run = train(
            replace(base, out=str(Path(out_root) / f"loo-{family}"), exclude_families=[family])
        )
        bundle = load_bundle(run)
        labels, probs = score_held_out_family(bundle, samples, family)
        per_family[family] = compute_metrics(labels, probs, bundle.calibration.threshold)
        all_labels += list(labels)
        all_probs += list(probs)
    report = EvalReport(
        split="test (held-out family)",
        overall=compute_metrics(all_labels, all_probs),
        per_generator=per_family,
        per_pool={},
        calibration={"threshold": "per family model"},
        model=f"leave-one-out runs under {out_root}",
        data=str(data),
        extra={"mean_ap": float(np.mean([m.ap for m in per_family.values()]))},
    )
    return report
