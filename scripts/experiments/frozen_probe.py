"""Does a linear probe on frozen ImageNet features reach unseen families better than fine-tuning?

The probe itself is ``training.probe`` (``synthdetect probe``): a logistic regression on the
frozen ImageNet EfficientNet-Lite0's features of each tile, chosen by the validation AP and
calibrated as training calibrates. This script runs the selection experiments around it:

- a probe on the selection runs' training split (``--exclude``: the held-out families), written
  as a model folder that ``synthdetect evaluate --generalisation`` and
  ``scripts/experiments/ensemble.py`` score like every candidate of ``scripts/select_model.sh``;
- ``--lofo HOLDOUTS``: the probe's leave-one-family-out table instead (one fit per group,
  scored as ``evaluate --leave-one-out`` scores one), on the frozen network's features, on
  co-occurrences of quantised pixel residuals (``--input cooc``, ``training.cooccurrence``) or
  both side by side, with a linear, a one-hidden-layer or a one-class head (``--lofo-head``:
  ``gauss``, ``relgauss``, ``linear+gauss``, which learn the reals' distribution), or a linear
  head that uses the training families (``multinomial``: one class per family;
  ``linear-nofamily``: without the directions that tell the families apart); with
  ``--pair-runs DIR`` (the work folder of ``scripts/lofo_wild.sh``) also the table of the
  default model's recipe, the fine-tuned run and the probe averaged as ``synthdetect
  ensemble`` averages them (equal weights on their temperature-scaled logits), for every
  group whose fine-tuned run has finished there;
- ``--zero-shot-of RUN``: also the probe as a checkpoint of RUN's architecture, the zero-shot
  end of WiSE-FT with ``synthdetect soup``.

Features are cached per image under ``--features`` (``training.probe.FeatureCache``). The
probe is fitted with the configuration's ``probe_drop_pcs`` (16 since v6; the tables committed
before v6 were made with 0: add ``probe_drop_pcs=0`` to rerun one).

    python scripts/experiments/frozen_probe.py MANIFEST OUT_DIR --features CACHE_DIR \
        [--parts head] [--downscale 1] [--zero-shot-of RUN]
    python scripts/experiments/frozen_probe.py MANIFEST OUT.json --features CACHE_DIR \
        --lofo configs/holdouts-wild.yaml [--downscale 1,2] [--input rgb,npr|cooc] \
        [--backbone efficientnet_lite1] [--lofo-c C] [--lofo-head mlp|gauss|...] [--fit-jpeg90] \
        [--augment-draws N] [--source-fraction F [--fraction-seed S]] \
        [--val-half SEED [--val-half-fit]] \
        [--workers N] [--pair-runs runs/lofo192 [--previous OUT.json]] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit, logit

from detector.checkpoint import read_checkpoint, write_checkpoint
from detector.models import MODELS, ModelSpec
from detector.preprocess import PreprocessConfig
from training.calibrate import fit_calibration
from training.config import load_config
from training.cooccurrence import CooccurrenceFeatures
from training.datasets import load_samples
from training.degrade import parse_chain
from training.metrics import compute_metrics
from training.probe import (
    AUGMENTED,
    HEAD_WIDTH,
    INPUTS,
    PARTS,
    FeatureCache,
    FrozenFeatures,
    fit_logistic,
    frozen_lite0,
    probe_head,
    project_out,
    real_directions,
    train_probe,
)
from training.run_eval import (
    HELD_OUT_FAKE_SPLITS,
    cached_held_out_scores,
    held_out_selection,
    read_holdouts,
)
from training.train import sample_weights

COOC = "cooc"  # --input: co-occurrences of quantised residuals (training.cooccurrence)


class Scales:
    """The features of several FeatureCaches side by side (one per input and downscale)."""

    def __init__(self, caches: list[FeatureCache]) -> None:
        self.caches = caches

    def get(self, samples, view: str = "as-is") -> np.ndarray:
        return np.hstack([c.get(samples, view) for c in self.caches])


def lofo(
    pool, cache: FeatureCache, holdouts: Path, c: float, config, manifest,
    pair_runs: Path | None = None, head: str = "linear", fit_jpeg90: bool = False,
    family_dirs: int = 8, more_draws: tuple[Scales, ...] = (), source_fraction: float = 1.0,
    fraction_seed: int = 0, val_half: int | None = None, val_half_fit: bool = False,
) -> dict:  # fmt: skip
    """The probe's leave-one-family-out table, scored as ``evaluate --leave-one-out`` scores a
    group: its fakes from every split but test against the validation reals of their pools.
    With ``pair_runs``, also the pair's table (``pair_row``) for each group whose fine-tuned
    run ``pair_runs/loo-GROUP`` kept its held-out scores. ``more_draws``: caches of other seeds,
    each adding one more draw of the training degradations per training image to the fit's
    rows (the bundled probe fits one). ``fit_jpeg90``: each training image
    also re-encoded as JPEG q90 among the fit's rows (the equalised view's own re-encoding,
    inside the training degradations' range: what a probe gains from seeing it).
    ``source_fraction``: every fit sees only this share of the training source groups (drawn
    with ``fraction_seed``): how much does the table gain from more sources? ``val_half`` (a
    seed): the validation source groups are split in two halves at random; the reals of the
    second half alone calibrate and are scored, and with ``val_half_fit`` the first half's
    images (the held-out group's excepted) join the training rows: what would fitting on the
    validation split's sources as well add?"""
    pairs: dict[str, dict] = {}
    feats = {v: cache.get(pool, v) for v in ("as-is", "jpeg:90")}
    train = [i for i, s in enumerate(pool) if s.split == "train"]
    augs = []  # the training degradations: one draw per cache (seed), each its own rows
    for draw in (cache, *more_draws):
        augs.append(np.zeros_like(feats["as-is"]))
        augs[-1][train] = draw.get([pool[i] for i in train], AUGMENTED)
    if source_fraction < 1:
        sources = sorted({pool[i].source_id for i in train})
        kept = set(
            np.random.default_rng(fraction_seed).choice(
                sources, max(1, round(source_fraction * len(sources))), replace=False
            )
        )
        train = [i for i in train if pool[i].source_id in kept]
    scored_half = None  # the validation source groups that calibrate and are scored
    if val_half is not None:
        val_all = [i for i, s in enumerate(pool) if s.split == "val"]
        halves = sorted({pool[i].source_id for i in val_all})
        fit_half = set(np.random.default_rng(val_half).permutation(halves)[: len(halves) // 2])
        scored_half = set(halves) - fit_half
        if val_half_fit:
            added = [i for i in val_all if pool[i].source_id in fit_half]
            for a, draw in zip(augs, (cache, *more_draws), strict=True):
                a[added] = draw.get([pool[i] for i in added], AUGMENTED)
            train = train + added
    groups = read_holdouts(holdouts, pool)
    where = {id(s): i for i, s in enumerate(pool)}
    table = {}
    for name, g in groups.items():
        t = time.time()
        out_fams, out_src = set(g["exclude"]), set(g["exclude_sources"])

        def keep(s, out_fams=out_fams, out_src=out_src):
            return s.family not in out_fams and s.source_id not in out_src

        idx = [i for i in train if keep(pool[i])]
        w = np.asarray(sample_weights([pool[i] for i in idx], config.balance_power,
                                      config.pool_weights or None))  # fmt: skip
        y = np.array([pool[i].label for i in idx])
        rows = [feats["as-is"][idx], *(a[idx] for a in augs)]
        rows += [feats["jpeg:90"][idx]] * fit_jpeg90
        fams = np.array([pool[i].family or pool[i].generator for i in idx])
        score = fit_head(
            head, np.concatenate(rows), np.concatenate([y] * len(rows)),
            np.concatenate([w] * len(rows)) / w.mean(), c, config.seed, config.probe_drop_pcs,
            np.concatenate([fams] * len(rows)), family_dirs,
        )  # fmt: skip
        val = [i for i, s in enumerate(pool) if s.split == "val" and keep(s)]
        if scored_half is not None:
            val = [i for i in val if pool[i].source_id in scored_half]
        cal = fit_calibration(
            np.concatenate([score(feats[v][val]) for v in ("as-is", "jpeg:90")]),
            np.array([pool[i].label for i in val] * 2), config.target_fpr,
            f"val split of {manifest} (as-is + jpeg:90)",
        )  # fmt: skip
        scored = [
            where[id(s)] for s in held_out_selection(pool, g["score"], HELD_OUT_FAKE_SPLITS, "val")
        ]
        if scored_half is not None:  # the held-out fakes, and the reals of the scored half
            scored = [i for i in scored if pool[i].label or pool[i].source_id in scored_half]
        y = np.array([pool[i].label for i in scored])
        if not y.any() or y.all():
            print(f"{name}: no fakes or no validation reals to score, skipped")
            continue
        row = {"exclude": g["exclude"], "exclude_sources": g["exclude_sources"]}
        run = pair_runs / f"loo-{name}" if pair_runs else None
        paired = {"run": str(run)}
        for kind, view in (("as_is", "as-is"), ("equalised", "jpeg:90")):
            p = cal.probability(score(feats[view][scored]))
            m = compute_metrics(y, p, cal.threshold)
            row[kind] = {
                "ap": m.ap, "roc_auc": m.roc_auc, "n_fake": m.n_fake, "n_real": m.n_real,
                "chance_ap": m.n_fake / (m.n_fake + m.n_real),
                "fakes_flagged": m.fake_accuracy_at_threshold,
                "reals_flagged": 1 - m.real_accuracy_at_threshold,
                "tpr_at_1pct_fpr": m.tpr_at_1pct_fpr,
            }  # fmt: skip
            chain = [] if view == "as-is" else parse_chain(view)
            found = run and cached_held_out_scores(
                run, g["score"], HELD_OUT_FAKE_SPLITS, "val", chain
            )
            if found:
                paired[kind] = pair_row(y, found, p)
        if all(k in paired for k in KINDS):  # the run kept both its as-is and equalised scores
            pairs[name] = paired
        table[name] = row
        print(f"{name}: AP {row['as_is']['ap']:.3f} / {row['equalised']['ap']:.3f}, ROC-AUC "
              f"{row['as_is']['roc_auc']:.3f} / {row['equalised']['roc_auc']:.3f} "
              f"({time.time() - t:.0f} s)", flush=True)  # fmt: skip
    result = {"groups": table, "summary": summarise(table)}
    if pair_runs:
        result["pair"] = {"runs": str(pair_runs), "groups": pairs}
        summarise_pairs(result)
    return result


KINDS = ("as_is", "equalised")
HEADS = ("linear", "mlp", "gauss", "relgauss", "linear+gauss", "multinomial", "linear-nofamily")
LINEAR_HEADS = ("linear", "multinomial", "linear-nofamily")  # those probe_drop_pcs applies to
MIN_CLASS_ROWS = 20  # multinomial: a family with fewer rows joins the class "other"


def fit_head(
    head: str, x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, seed: int,
    drop_pcs: int = 0, families: np.ndarray | None = None, family_dirs: int = 8,
) -> Callable[[np.ndarray], np.ndarray]:  # fmt: skip
    """Fit the probe's head on the rows -> a function from features to logits. ``linear``: the
    L2 logistic regression the bundled probe is (C ``c``). ``mlp``: one hidden layer of 256
    ReLU units on the standardised features, Adam on batches of 200 for at most 100 epochs,
    its L2 penalty matched to the logistic regression's (sklearn divides ``alpha`` by the
    batch's weight, the logistic regression its 1/(2C) by the whole table's): does a
    non-linear head on the same frozen features reach unseen families better? No early
    stopping: the rows are each image as-is and degraded, so a random tenth held back would
    share its images with the rest. ``drop_pcs`` (the linear heads only; ``probe_drop_pcs`` of
    the training config): the fit without the real rows' top principal directions
    (``training.probe.fit_logistic``). Two linear heads that use the rows' ``families``:
    ``multinomial``, a softmax regression over the reals and each training family (families
    under MIN_CLASS_ROWS rows as one class), scored log P(any family) - log P(real): does
    learning each family apart reach an unseen one through its nearest seen one?
    ``linear-nofamily``: the logistic regression without the top ``family_dirs`` directions in
    which the training families' mean features differ, so it must use what the families share
    (the evidence common to all fakes) rather than what tells them apart."""
    if drop_pcs and head not in LINEAR_HEADS:  # configs/default.yaml sets it for the probe
        raise SystemExit(
            f"probe_drop_pcs ({drop_pcs}) applies to the linear heads only: add probe_drop_pcs=0 "
            f"for --lofo-head {head} (its committed tables were made without it)"
        )
    if head in ("multinomial", "linear-nofamily") and families is None:
        raise ValueError(f"the {head} head needs each row's family")
    if head == "linear":
        weight, bias = fit_logistic(x, y, w, c, drop_pcs)
        return lambda f: f @ weight + bias
    if head == "linear-nofamily":
        fakes = sorted(set(families[y == 1]))
        means = np.array([x[(y == 1) & (families == f)].mean(0) for f in fakes])
        k = min(family_dirs, len(means) - 1)
        q = np.linalg.svd(means - means.mean(0), full_matrices=False)[2][:k].T
        weight, bias = fit_logistic(project_out(x, q), y, w, c, drop_pcs)
        weight = project_out(weight, q)  # the same logits on the raw features
        return lambda f: f @ weight + bias
    if head == "multinomial":
        return fit_multinomial(x, y, w, c, drop_pcs, families)
    if head in ("gauss", "relgauss"):
        return fit_gauss(x, y, head == "relgauss")
    if head == "linear+gauss":  # both on one scale: standardised on the real rows, summed
        weight, bias = fit_logistic(x, y, w, c)
        linear = on_reals_scale(lambda f: f @ weight, x[y == 0])
        gauss = fit_gauss(x, y, False)
        return lambda f: linear(f) + gauss(f)
    if head != "mlp":
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    from sklearn.neural_network import MLPClassifier

    mu, sd = x.mean(0), x.std(0) + 1e-6
    batch = min(200, len(x))
    mlp = MLPClassifier(
        hidden_layer_sizes=(256,), alpha=batch / (c * len(x)), batch_size=batch, max_iter=100,
        random_state=seed,
    ).fit((x - mu) / sd, y, sample_weight=w)  # fmt: skip
    (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_

    def logits(f: np.ndarray) -> np.ndarray:  # the network's own logit: no clipped ties
        return (np.maximum((f - mu) / sd @ w1 + b1, 0) @ w2 + b2)[:, 0]

    return logits


def fit_multinomial(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, drop_pcs: int, families: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Softmax regression over the reals and each training family (sklearn lbfgs, L2 at C on
    standardised features, without the reals' top ``drop_pcs`` directions as the linear fit)
    -> log P(generated by any family) - log P(real)."""
    from scipy.special import logsumexp
    from sklearn.linear_model import LogisticRegression

    top = real_directions(x, y, drop_pcs) if drop_pcs else np.zeros((x.shape[1], 0))
    xp = project_out(x, top)
    rows = {f: int((families == f).sum()) for f in set(families[y == 1])}
    label = np.where(y == 0, "real", families)
    label = np.array([v if v == "real" or rows[v] >= MIN_CLASS_ROWS else "other" for v in label])
    classes = sorted(set(label))
    mu, sd = xp.mean(0), xp.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=3000).fit((xp - mu) / sd, label, sample_weight=w)
    weight = lr.coef_ / sd
    weight = project_out(weight, top)  # the same logits on the raw features
    bias = lr.intercept_ - (lr.coef_ * mu / sd).sum(1)
    real = list(lr.classes_).index("real")
    fake = [i for i in range(len(classes)) if i != real]
    if len(classes) == 2:  # one fake class: sklearn fits one logit, for classes_[1]
        sign = 1.0 if real == 0 else -1.0
        return lambda f: sign * (f @ weight[0] + bias[0])

    def score(f: np.ndarray) -> np.ndarray:
        z = f @ weight.T + bias
        return logsumexp(z[:, fake], axis=1) - z[:, real]

    return score


def fit_gauss(x: np.ndarray, y: np.ndarray, relative: bool) -> Callable[[np.ndarray], np.ndarray]:
    """One-class heads: a Gaussian of the real rows only (Ledoit-Wolf shrunk covariance), the
    score the squared Mahalanobis distance from it: an image unlike the photos is generated,
    whatever made it, so nothing about the training fakes is learnt. ``relative``: minus the
    distance from a Gaussian of all rows (Ren et al. 2021), which takes out the directions in
    which every image varies."""
    from sklearn.covariance import LedoitWolf

    def distance(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        lw = LedoitWolf().fit(rows)
        mu, prec = lw.location_, lw.precision_
        return lambda f: np.einsum("ij,jk,ik->i", f - mu, prec, f - mu)

    real = distance(x[y == 0])
    background = distance(x) if relative else None

    def raw(f: np.ndarray) -> np.ndarray:
        return real(f) - background(f) if relative else real(f)

    return on_reals_scale(raw, x[y == 0])  # logits, not saturated distances


def on_reals_scale(
    score: Callable[[np.ndarray], np.ndarray], reals: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """``score`` centred on its median over the real rows and divided by its spread there."""
    own = score(reals)
    centre, scale = float(np.median(own)), float(own.std()) + 1e-9
    return lambda f: (score(f) - centre) / scale


def summarise(table: dict) -> dict:
    """Mean and lowest AP and mean ROC-AUC over a table's groups, per kind."""
    return {
        kind: {
            "groups": len(table),
            "mean_ap": float(np.mean([r[kind]["ap"] for r in table.values()])),
            "lowest_ap": float(np.min([r[kind]["ap"] for r in table.values()])),
            "mean_roc_auc": float(np.mean([r[kind]["roc_auc"] for r in table.values()])),
            "mean_tpr_at_1pct_fpr": float(
                np.mean([r[kind]["tpr_at_1pct_fpr"] for r in table.values()])
            ),
        }
        for kind in KINDS
    }


def pair_row(y: np.ndarray, fine_tuned: tuple[np.ndarray, np.ndarray], probe: np.ndarray) -> dict:
    """A group scored by the fine-tuned run (its kept, calibrated probabilities), by the probe,
    and by the two averaged as the bundled ensemble averages them: the mean of their
    temperature-scaled logits (the probe at weight 0.5; other weights under ``probe_weights``).
    ``tpr_at_1pct_fpr``: the share of the fakes above the score that flags 1% of these reals
    (the validation reals), one rule for all three; the pair is not calibrated here, since the
    fine-tuned run's validation logits, which would calibrate it, are not kept."""
    y_ft, p_ft = fine_tuned
    if len(y_ft) != len(y) or (y_ft != y).any():
        raise SystemExit(
            f"the fine-tuned run's kept scores ({len(y_ft)} images) do not line up with this "
            f"selection ({len(y)}): was it scored on another manifest?"
        )
    eps = 1e-12
    z_ft, z_probe = (logit(np.clip(p, eps, 1 - eps)) for p in (p_ft, probe))

    def scored(w: float) -> dict:
        m = compute_metrics(y, expit((1 - w) * z_ft + w * z_probe))
        return {"ap": m.ap, "roc_auc": m.roc_auc, "tpr_at_1pct_fpr": m.tpr_at_1pct_fpr}

    out = {"fine_tuned": scored(0.0), "probe": scored(1.0), "pair": scored(0.5)}
    out["probe_weights"] = {str(w): scored(w) for w in (0.3, 0.4, 0.6, 0.7)}
    return out


def keep_previous_pairs(result: dict, previous: dict) -> None:
    """Pair rows of an earlier run of this script for the groups this run could not pair
    (their fine-tuned runs finished on another machine), when the group was defined the same.
    Each kept row is its own draw: its fine-tuned run and the probe it was averaged with. The
    same fit on the same features gives the same numbers, but features computed on another
    machine (another CPU's arithmetic, the project's own fakes regenerated there) move the
    probe's last digits: such a row keeps its probe and records this run's refit beside it
    (``probe_here``), so the shift is in the report."""
    pair = result.get("pair")
    if pair is None:
        raise SystemExit("--previous needs --pair-runs")
    for name, row in (previous.get("pair") or {}).get("groups", {}).items():
        if name in pair["groups"] or name not in result["groups"]:
            continue
        was, now = previous["groups"].get(name, {}), result["groups"][name]
        if any(was.get(k) != now[k] for k in ("exclude", "exclude_sources")):
            raise SystemExit(f"group {name!r} is defined differently now; rerun its pair")
        here = {k: {m: now[k][m] for m in ("ap", "roc_auc")} for k in KINDS}
        row = {k: v for k, v in row.items() if k != "probe_here"}  # recorded afresh below
        if any(row[k]["probe"][m] != here[k][m] for k in KINDS for m in here[k]):
            row["probe_here"] = here
        pair["groups"][name] = row
    summarise_pairs(result)


def summarise_pairs(result: dict) -> None:
    """The pair rows in the hold-outs' order, and their summary per member."""
    pair = result["pair"]
    pair["groups"] = {n: pair["groups"][n] for n in result["groups"] if n in pair["groups"]}
    pair.pop("summary", None)
    if pair["groups"]:
        pair["summary"] = {
            member: summarise(
                {n: {k: r[k][member] for k in KINDS} for n, r in pair["groups"].items()}
            )
            for member in ("pair", "fine_tuned", "probe")
        }


def write_zero_shot(run: Path, out: Path, weight: np.ndarray, bias: float) -> None:
    """The probe as a checkpoint of ``run``'s architecture (an EfficientNet-Lite0 with a linear
    head), the zero-shot end of WiSE-FT (Wortsman et al. 2022): the ImageNet backbone, its stem
    reading the RGB channels only (the residual channels' filters zero), the head weighing the
    pooled features as the probe does and the spectrum features by zero (the spectrum branch is
    the run's, so that ``synthdetect soup`` can interpolate every tensor). Averaged with the run
    by ``synthdetect soup OUT RUN --weights 1-a,a``."""
    ckpt = read_checkpoint(run / "checkpoints" / "best.pt")
    spec = ckpt["model_spec"]
    if spec["name"] != "efficientnet_lite0" or spec.get("head", "linear") != "linear":
        raise SystemExit(f"{run}: zero-shot end needs efficientnet_lite0 with a linear head")
    imagenet = frozen_lite0().state_dict()
    state = {}
    for k, v in ckpt["state_dict"].items():
        if k.startswith("backbone.net."):
            src = imagenet[k.removeprefix("backbone.net.")]
            if k == "backbone.net._conv_stem.weight":  # (32, C, 3, 3), RGB first
                src = torch.cat([src, torch.zeros_like(v[:, 3:])], 1)
            state[k] = src.to(v.dtype).clone()
        elif k == "head.1.weight":
            w = torch.zeros_like(v)
            w[0, :HEAD_WIDTH] = torch.as_tensor(weight)
            state[k] = w
        elif k == "head.1.bias":
            state[k] = torch.full_like(v, bias)
        elif k.startswith("spectrum."):
            state[k] = v.clone()
        else:
            raise SystemExit(f"{run}: unexpected tensor {k}")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_checkpoint(out / "checkpoints" / "best.pt", {**ckpt, "state_dict": state})
    print(f"wrote {out} (the probe as a checkpoint of {run}'s architecture)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path, help="model folder to write, or with --lofo a JSON file")
    ap.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    ap.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="training-config overrides the fits use (pool_weights, balance_power, ...)",
    )  # fmt: skip
    ap.add_argument("--exclude", default="midjourney,flux,flux2,gigagan,stylegan,biggan,vqgan")
    ap.add_argument("--c", default="0.0001,0.0003,0.001,0.003,0.01")
    ap.add_argument("--parts", default="head", help=f"comma-separated, of {PARTS}")
    ap.add_argument("--features", type=Path, required=True, help="folder of cached features")
    ap.add_argument("--lofo", type=Path, help="hold-out groups YAML: the leave-one-out table")
    ap.add_argument("--lofo-c", type=float, default=0.001, help="C of every --lofo fit")
    ap.add_argument(
        "--lofo-head", choices=HEADS, default="linear",
        help="the head of every --lofo fit (gauss, relgauss: one-class, fitted on the reals)",
    )  # fmt: skip
    ap.add_argument(
        "--family-dirs", type=int, default=8,
        help="with --lofo-head linear-nofamily: how many directions of the families' means to drop",
    )  # fmt: skip
    ap.add_argument(
        "--augment-draws", type=int, default=1,
        help="with --lofo: draws of the training degradations per training image (seeds "
        "seed, seed+1, ...; each draw's features are cached apart)",
    )  # fmt: skip
    ap.add_argument(
        "--source-fraction", type=float, default=1.0,
        help="with --lofo: fit on this share of the training source groups only (a learning "
        "curve in sources)",
    )  # fmt: skip
    ap.add_argument(
        "--fraction-seed", type=int, default=0, help="the draw of --source-fraction's groups"
    )
    ap.add_argument(
        "--val-half", type=int, metavar="SEED",
        help="with --lofo: calibrate on and score the reals of a random half of the validation "
        "source groups only",
    )  # fmt: skip
    ap.add_argument(
        "--val-half-fit", action="store_true",
        help="with --val-half: also fit on the other half's images (the held-out group's excepted)",
    )  # fmt: skip
    ap.add_argument(
        "--fit-jpeg90", action="store_true",
        help="with --lofo: each training image also re-encoded as JPEG q90 among the fit's rows",
    )  # fmt: skip
    ap.add_argument(
        "--downscale", default="1",
        help="average-pool each tile by this factor first; with --lofo, a list (1,2) "
        "concatenates the features of each scale",
    )  # fmt: skip
    ap.add_argument(
        "--input", default="rgb",
        help=f"with --lofo: what the frozen network sees, of {INPUTS}, or {COOC} (residual "
        "co-occurrences, no network); a list (rgb,npr) concatenates the features of each",
    )  # fmt: skip
    ap.add_argument(
        "--workers", type=int, default=0, help="processes decoding images for the extraction"
    )
    ap.add_argument(
        "--backbone", default="efficientnet_lite0",
        help="with --lofo: the frozen ImageNet network (another one caches under its name)",
    )  # fmt: skip
    ap.add_argument(
        "--pair-runs", type=Path,
        help="with --lofo: scripts/lofo_wild.sh's work folder; adds the pair's table for every "
        "group whose fine-tuned run finished there",
    )  # fmt: skip
    ap.add_argument(
        "--previous", type=Path,
        help="with --pair-runs: an earlier JSON of this script whose pair rows are kept for "
        "groups without a run folder here (their runs were on another machine)",
    )  # fmt: skip
    ap.add_argument(
        "--zero-shot-of", type=Path, help="also write the probe in this run's architecture"
    )
    args = ap.parse_intermixed_args()
    config = load_config(args.config, args.overrides)
    parts = [p for p in args.parts.split(",") if p]
    inputs = [i for i in args.input.split(",") if i]
    if not inputs:
        raise SystemExit("--input is empty")
    unknown = [i for i in inputs if i not in (*INPUTS, COOC)]
    if unknown:
        raise SystemExit(f"--input: unknown {unknown}; choose from {', '.join((*INPUTS, COOC))}")
    if args.lofo and args.lofo_head not in LINEAR_HEADS and config.probe_drop_pcs:
        raise SystemExit(  # before minutes of feature loading (fit_head would refuse it too)
            f"probe_drop_pcs ({config.probe_drop_pcs}) applies to the linear heads only: add "
            f"probe_drop_pcs=0 for --lofo-head {args.lofo_head}"
        )
    if inputs != ["rgb"] and not args.lofo:
        raise SystemExit("--input other than rgb is measured with --lofo only")
    if args.lofo:
        prep = PreprocessConfig(input_size=config.input_size, max_tiles=config.max_tiles)
        if inputs == [COOC]:  # no network to load
            net, folder = None, args.features
        elif args.backbone == "efficientnet_lite0":
            net, folder = frozen_lite0(), args.features
        else:  # another ImageNet network of the registry (its weights package installed)
            features, _ = MODELS.get(args.backbone)(ModelSpec(args.backbone), 3)
            net, folder = features.net.eval(), args.features / args.backbone
        scales = [int(d) for d in str(args.downscale).split(",")]
        if inputs == [COOC] and scales != [1]:
            raise SystemExit("--downscale does not apply to --input cooc (it reads every pixel)")

        def extractor(i: str, d: int):  # "cooc": residual co-occurrences, no network
            if i == COOC:
                return CooccurrenceFeatures(prep.mean, prep.std)
            return FrozenFeatures(net, parts, d, i)

        def caches(seed: int) -> Scales:
            return Scales(
                [FeatureCache(extractor(i, d), prep, args.features if i == COOC else folder,
                              config.augment, seed, workers=args.workers)
                 for i in inputs for d in ([1] if i == COOC else scales)]
            )  # fmt: skip

        if args.augment_draws < 1:
            raise SystemExit("--augment-draws must be at least 1")
        if args.family_dirs < 1:
            raise SystemExit("--family-dirs must be at least 1")
        if not 0 < args.source_fraction <= 1:
            raise SystemExit("--source-fraction must be in (0, 1]")
        if args.val_half is not None and args.pair_runs:
            raise SystemExit("--val-half scores other reals than the fine-tuned runs kept")
        if args.val_half_fit and args.val_half is None:
            raise SystemExit("--val-half-fit needs --val-half SEED")
        cache = caches(config.seed)
        more = tuple(caches(config.seed + k) for k in range(1, args.augment_draws))
        pool = [s for s in load_samples(args.manifest) if s.split != "test"]
        result = {"manifest": str(args.manifest), "C": args.lofo_c, "parts": parts,
                  "overrides": args.overrides, "head": args.lofo_head,
                  "fit_jpeg90": args.fit_jpeg90, "drop_pcs": config.probe_drop_pcs,
                  "augment_draws": args.augment_draws,
                  **({"source_fraction": args.source_fraction, "fraction_seed": args.fraction_seed}
                     if args.source_fraction < 1 else {}),
                  **({"val_half": args.val_half, "val_half_fit": args.val_half_fit}
                     if args.val_half is not None else {}),
                  **({"family_dirs": args.family_dirs}
                     if args.lofo_head == "linear-nofamily" else {}),
                  "backbone": args.backbone, "downscale": scales, "input": inputs,
                  "scored": "each group's fakes from train/val/heldout-generators against the "
                  "validation reals of their pools; threshold at 1% of the validation reals",
                  **lofo(pool, cache, args.lofo, args.lofo_c, config, args.manifest,
                         args.pair_runs, args.lofo_head, args.fit_jpeg90,
                         args.family_dirs, more, args.source_fraction,
                         args.fraction_seed, args.val_half, args.val_half_fit)}  # fmt: skip
        if args.previous:
            keep_previous_pairs(result, json.loads(args.previous.read_text()))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["summary"]))
        return
    excluded = sorted({f for f in args.exclude.split(",") if f})
    meta = train_probe(
        args.manifest, args.out, replace(config, exclude_families=excluded),
        cs=[float(v) for v in args.c.split(",")], parts=parts, downscale=int(args.downscale),
        cache=args.features, name=f"probe-{args.out.name}",
    )  # fmt: skip
    if args.zero_shot_of:
        if parts != ["head"] or args.downscale != "1":
            raise SystemExit("--zero-shot-of needs --parts head and no --downscale")
        weight, bias = probe_head(args.out)
        write_zero_shot(args.zero_shot_of, args.out.with_name(args.out.name + "-zs"), weight, bias)
    cal = meta["calibration"]
    print(f"wrote {args.out} (C={meta['training']['config']['C']}, temperature "
          f"{cal['temperature']:.3f}, threshold {cal['threshold']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
