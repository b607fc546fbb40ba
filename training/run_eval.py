"""``synthdetect evaluate``: a model on a dataset, how it generalises, and leave-one-out.

Three questions, three functions:

- ``evaluate_model``: per-generator and overall metrics on one split, as the files are
  (``as-is``) and, with ``equalise``, after decoding and re-encoding every image of both classes
  the same way (e.g. ``jpeg:90``), reported side by side so that a format shortcut cannot pass
  for detection;
- ``generalisation``: what a model is chosen by. Validation sources (never trained on), per
  family and pooled; the families the run held out of training (its checkpoint says which),
  scored from every split but test against the validation reals of their pools; held-out real
  photos flagged. Never the test split;
- ``leave_one_out``: one training run per hold-out group (a family, or a few related ones), each
  scored on the group's fakes as above: how the recipe does on a generator it never saw.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from detector.engine import ModelBundle, load_bundle
from training.config import load_config
from training.datasets import Sample, load_samples, no_images_in_split
from training.degrade import Degradation, apply_chain, chain_name, parse_chain
from training.evaluate import EvalReport, evaluate_scores, predict_logits
from training.metrics import Metrics, compute_metrics

__all__ = [
    "cached_held_out_scores",
    "evaluate_model",
    "generalisation",
    "held_out_selection",
    "leave_one_out",
    "parse_equalise",
    "read_holdouts",
    "score_held_out_family",
    "training_config",
]

# Fakes of a held-out family may come from any split but test (the run never saw them).
HELD_OUT_FAKE_SPLITS = ("train", "val", "heldout-generators")


def parse_equalise(text: str | None) -> list[Degradation]:
    """``jpeg:Q`` -> the re-encoding applied to every image of both classes; none -> []."""
    if text is None or text.strip() == "none":
        return []
    if not text.strip():  # an unset shell variable: not a silent "none"
        raise ValueError("--equalise is empty; give jpeg:QUALITY (e.g. jpeg:90) or none")
    chain = parse_chain(text)
    if len(chain) != 1 or chain[0].kind != "jpeg":
        raise ValueError(f"--equalise takes jpeg:QUALITY (e.g. jpeg:90), got {text!r}")
    return chain


def _transform(chain: list[Degradation]):
    if not chain:
        return None
    return lambda px: apply_chain(px, chain, np.random.default_rng(0))


def _select(samples: list[Sample], split: str) -> list[Sample]:
    if split == "all":
        return samples
    wanted = {x.strip() for x in split.split(",")}  # one split or several: test,heldout-generators
    return [s for s in samples if s.split in wanted]


def evaluate_model(
    model: Path,
    data: Path,
    split: str = "test",
    degrade: str = "none",
    device: str = "cpu",
    equalise: str | None = None,
) -> EvalReport:
    """Metrics on ``split``; with ``equalise`` the report carries the equalised one beside it."""
    bundle = load_bundle(model, device=device)
    every = load_samples(data)
    samples = _select(every, split)
    if not samples:
        raise no_images_in_split(data, split, every)
    chain = parse_chain(degrade)
    eq = parse_equalise(equalise)
    reports = []
    for extra in ([], eq) if eq else ([],):
        logits = predict_logits(
            bundle.logits, samples, bundle.preprocess, transform=_transform(chain + extra),
            progress=True,
        )  # fmt: skip
        reports.append(
            evaluate_scores(
                samples,
                logits,
                bundle.calibration,
                split,
                degradation=chain_name(chain),
                model=f"{model} ({bundle.engine.name})",
                data=str(data),
            )
        )
    report = reports[0]
    if eq:
        report.equalised = reports[1]
        report.equalised.equalise = chain_name(eq)
    return report


def held_out_selection(
    samples: list[Sample],
    family: str | list[str],
    fake_splits: tuple[str, ...] = ("test", "heldout-generators"),
    real_split: str = "test",
) -> list[Sample]:
    """What a family held out of training is scored on, in this order: its fakes in
    ``fake_splits``, then the ``real_split`` reals of the same pools (each in manifest order).
    Everything that scores a held-out group (``score_held_out_family``, the probe's and the
    ensemble's leave-one-family-out tables) takes its images from here."""
    families = {family} if isinstance(family, str) else set(family)
    fakes = [s for s in samples if s.label == 1 and s.split in fake_splits and s.family in families]
    pools = {s.pool for s in fakes}
    return fakes + [
        s for s in samples if s.split == real_split and s.label == 0 and s.pool in pools
    ]


def score_held_out_family(
    bundle: ModelBundle,
    samples: list[Sample],
    family: str | list[str],
    fake_splits: tuple[str, ...] = ("test", "heldout-generators"),
    real_split: str = "test",
    equalise: list[Degradation] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and calibrated probabilities of a family's fakes in ``fake_splits`` and the
    ``real_split`` reals of the same pools: what a family held out of training is scored on."""
    chosen = held_out_selection(samples, family, fake_splits, real_split)
    logits = predict_logits(
        bundle.logits, chosen, bundle.preprocess, transform=_transform(equalise or [])
    )
    return np.array([s.label for s in chosen]), bundle.calibration.probability(logits)


def _row(m: Metrics) -> dict:
    d = m.to_dict()
    d["chance_ap"] = m.n_fake / max(1, m.n_fake + m.n_real)
    return d


def excluded_families(bundle: ModelBundle) -> list[str]:
    """The families a model's run left out of training (checkpoint or exported model)."""
    for key in ("train_config", "training"):
        fams = (bundle.meta.get(key) or {}).get("exclude_families")
        if fams:
            return [str(f) for f in fams]
    return []


def training_config(bundle: ModelBundle) -> dict | None:
    """The training config of a model's run (checkpoint or exported model), or None when
    the model does not record one (exported before models carried it, or not trained here)."""
    return (
        bundle.meta.get("train_config") or (bundle.meta.get("training") or {}).get("config") or None
    )


def generalisation(
    bundle: ModelBundle,
    samples: list[Sample],
    held_out: list[str] | dict[str, list[str]] | None = None,
    equalise: str | None = "jpeg:90",
    min_family: int = 5,
) -> dict:
    """The numbers a model is chosen by (never the test split), as-is and equalised.

    - ``val``: the validation split (sources never trained on): overall, per pool, and per
      family (its fakes against the validation reals of its pools; families with at least
      ``min_family`` fakes), with the mean family AP, and per source group (the share flagged
      at the threshold; a group of fakes also its ROC-AUC against the validation reals);
    - ``held_out``: each held-out group (a family, or ``name: [families]``; default: each
      family the run excluded from training), its fakes from every split but test against the
      validation reals;
    - ``heldout_real``: the share of the ``heldout-real`` photos flagged at the threshold.
    """
    if held_out is None:
        held_out = excluded_families(bundle)
    groups = held_out if isinstance(held_out, dict) else {f: [f] for f in held_out}
    excluded = {f for fams in groups.values() for f in fams}

    thr = bundle.calibration.threshold
    # the recipe travels with its numbers (tile size, learning rates, schedule, augmentation)
    out: dict = {"threshold": thr, "held_out": groups, "train_config": training_config(bundle)}
    for name, chain in (("as_is", []), ("equalised", parse_equalise(equalise))):
        if name == "equalised" and not chain:
            continue
        val = [s for s in samples if s.split == "val" and s.family not in excluded]
        probs = bundle.calibration.probability(
            predict_logits(bundle.logits, val, bundle.preprocess, transform=_transform(chain))
        )
        labels = np.array([s.label for s in val])
        res: dict = {
            "equalise": chain_name(chain),
            "val": {"overall": _row(compute_metrics(labels, probs, thr))},
        }
        for pool in sorted({s.pool for s in val}):
            m = np.array([s.pool == pool for s in val])
            if len(set(labels[m])) == 2:
                res["val"][f"pool:{pool}"] = _row(compute_metrics(labels[m], probs[m], thr))
        fams = {}
        for fam in sorted({s.family for s in val if s.label == 1}):
            fam_pools = {s.pool for s in val if s.label == 1 and s.family == fam}
            m = np.array(
                [
                    (s.label == 1 and s.family == fam) or (s.label == 0 and s.pool in fam_pools)
                    for s in val
                ]
            )
            if sum(1 for s in val if s.label == 1 and s.family == fam) >= min_family:
                fams[fam] = _row(compute_metrics(labels[m], probs[m], thr))
        res["val"]["families"] = fams
        res["val"]["source_groups"] = _source_groups(val, labels, probs, thr)
        res["val"]["mean_family_ap"] = (
            float(np.mean([f["ap"] for f in fams.values()])) if fams else None
        )
        held = {}
        for group, fams in groups.items():
            y, p = score_held_out_family(bundle, samples, fams, HELD_OUT_FAKE_SPLITS, "val", chain)
            if (y == 1).any() and (y == 0).any():
                held[group] = _row(compute_metrics(y, p, thr))
        res["held_out"] = held
        res["mean_held_out_ap"] = float(np.mean([h["ap"] for h in held.values()])) if held else None
        hr = [s for s in samples if s.split == "heldout-real"]
        if hr:
            p = bundle.calibration.probability(
                predict_logits(bundle.logits, hr, bundle.preprocess, transform=_transform(chain))
            )
            res["heldout_real_flagged"] = float(np.mean(p >= thr))
        out[name] = res
    return out


def _source_groups(val: list[Sample], labels: np.ndarray, probs: np.ndarray, thr: float) -> dict:
    """Per validation source group: its images flagged at the threshold and, for a group of
    fakes, its ROC-AUC against every validation real of its pools."""
    out = {}
    for group in sorted({s.source_id for s in val}):
        m = np.array([s.source_id == group for s in val])
        kinds = set(labels[m].tolist())
        label = "mixed" if len(kinds) == 2 else "fake" if 1 in kinds else "real"
        row = {"label": label, "n": int(m.sum()), "flagged": float(np.mean(probs[m] >= thr))}
        if label == "fake":
            pools = {s.pool for s, k in zip(val, m, strict=True) if k}
            reals = np.array([s.label == 0 and s.pool in pools for s in val])
            if reals.any():
                y = np.r_[np.ones(m.sum()), np.zeros(reals.sum())]
                row["roc_auc"] = compute_metrics(y, np.r_[probs[m], probs[reals]]).roc_auc
        out[group] = row
    return out


def read_holdouts(path: Path | None, samples: list[Sample]) -> dict[str, dict[str, list[str]]]:
    """Hold-out groups from a YAML file (``name: [families]`` or ``name: {exclude: [...],
    score: [...], exclude_sources: [...]}``), or one group per family of the data when no file
    is given. ``exclude_sources`` names source ids (wild source groups) that also leave
    training: the real photos a family's images were made from (its aligned twins)."""
    families = sorted({s.family for s in samples if s.label == 1 and s.family})
    if path is None:
        return {f: {"exclude": [f], "score": [f], "exclude_sources": []} for f in families}
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read hold-out groups {path}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a mapping of group name -> families")
    source_ids = {s.source_id for s in samples}
    groups = {}
    for name, spec in raw.items():
        if isinstance(spec, list):
            spec = {"exclude": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("exclude"), list):
            raise ValueError(f"{path}: group {name!r} needs a list of families (or exclude: [...])")
        unknown = sorted(set(spec) - {"exclude", "score", "exclude_sources"})
        if unknown:
            raise ValueError(
                f"{path}: group {name!r} has unknown keys {unknown} "
                "(a group takes exclude, score and exclude_sources)"
            )
        score = spec.get("score", spec["exclude"])
        if not isinstance(score, list):  # a string was read letter by letter
            raise ValueError(f"{path}: group {name!r}: score must be a list of families")
        if not spec["exclude"] or not score:  # a whole run for a row of n = 0
            raise ValueError(f"{path}: group {name!r} holds out or scores no family")
        exclude = [str(f) for f in spec["exclude"]]
        score = [str(f) for f in score]
        trained = sorted(set(score) - set(exclude))
        if trained:  # scored as held out, yet the group's run trains on them
            raise ValueError(
                f"{path}: group {name!r} scores {trained}, which it does not exclude from "
                "training (score must be among exclude)"
            )
        sources = spec.get("exclude_sources", [])
        if not isinstance(sources, list):
            raise ValueError(f"{path}: group {name!r}: exclude_sources must be a list of sources")
        sources = [str(x) for x in sources]
        unknown = sorted(set(exclude + score) - set(families))
        if unknown:
            raise ValueError(f"{path}: group {name!r} names families not in the data: {unknown}")
        unknown = sorted(set(sources) - source_ids)
        if unknown:
            raise ValueError(f"{path}: group {name!r} names sources not in the data: {unknown}")
        groups[str(name)] = {"exclude": exclude, "score": score, "exclude_sources": sources}
    return groups


def leave_one_out(
    config_path: Path | None,
    overrides: list[str],
    data: Path,
    out_root: Path,
    holdouts: Path | None = None,
    equalise: str | None = None,
    fake_splits: tuple[str, ...] = ("test", "heldout-generators"),
    real_split: str = "test",
    on_group=None,
    only: list[str] | None = None,
    previous: dict | None = None,
) -> EvalReport:
    """Train once per hold-out group with its families (and its ``exclude_sources``) left
    out; score each on its families.

    ``on_group(report, done, left)`` is called after each group with the report so far (the
    CLI writes it, so a long run leaves its finished groups on disk).

    ``only`` runs just the named groups. ``previous`` (an earlier leave-one-out report, as
    written) supplies the rows of groups finished elsewhere (another machine, or a run folder
    since deleted): they are kept as they are, not retrained, when their definition and what was
    scored match; the pooled ``overall`` then covers only the groups scored in this call, which
    ``extra["pooled_groups"]`` names.

    The group's fakes (from ``fake_splits``) are compared with the ``real_split`` reals of the
    same pools. The report's ``per_generator`` rows are the groups; ``overall`` pools their
    scores; ``extra`` holds the mean and lowest group AP and, with ``equalise``, the same after
    re-encoding both classes. A group whose run already finished is scored without retraining.
    """
    from training.train import train

    samples = load_samples(data)
    groups = read_holdouts(holdouts, samples)
    if len(groups) < 2 and holdouts is None:
        raise ValueError(f"{data}: leave-one-out needs at least two generator families")
    base = load_config(config_path, [*overrides, f"data={data}"])
    eq = parse_equalise(equalise)
    unknown = sorted(set(only or []) - set(groups))
    if unknown:
        raise ValueError(f"no hold-out group {unknown}; the groups are {sorted(groups)}")
    per: dict[str, dict[str, Metrics]] = {"as_is": {}, "equalised": {}}
    pooled: dict[str, tuple[list, list]] = {"as_is": ([], []), "equalised": ([], [])}
    split = f"held-out group: fakes from {','.join(fake_splits)}, reals from {real_split}"
    kept = _previous_groups(previous, groups, only, data, split, eq) if previous else {}
    for kind, rows in kept.items():
        per[kind].update(rows)
    todo = [n for n in groups if (only is None or n in only) and n not in per["as_is"]]
    report = None
    if not todo:
        raise ValueError("no hold-out group left to run")
    for i, name in enumerate(todo):
        group = groups[name]
        run = train(
            replace(
                base,
                out=str(Path(out_root) / f"loo-{name}"),
                exclude_families=group["exclude"],
                exclude_sources=group["exclude_sources"],
            )
        )
        bundle = load_bundle(run)
        for kind, chain in (("as_is", []), ("equalised", eq)):
            if kind == "equalised" and not eq:
                continue
            y, p = _held_out_scores(
                Path(run), bundle, samples, group["score"], fake_splits, real_split, chain
            )
            per[kind][name] = compute_metrics(y, p, bundle.calibration.threshold)
            pooled[kind][0].extend(y)
            pooled[kind][1].extend(p)
        report = _loo_report(per, pooled, groups, split, out_root, data, eq)
        if kept:
            report.extra["pooled_groups"] = todo[: i + 1]
        if on_group is not None:
            done = [n for n in groups if n in per["as_is"]]
            on_group(report, done, [n for n in groups if n not in done])
    assert report is not None
    return report


def _previous_groups(
    previous: dict, groups, only, data, split, eq
) -> dict[str, dict[str, Metrics]]:
    """The finished groups of an earlier report that this run keeps (those not in ``only``).

    A kept group must be defined as it is now and have been scored the same way (the same
    manifest, the same fake and real splits, the same equalisation), or the table would mix two measurements.
    """
    try:
        runs = previous["leave_one_out"]
        prev_split = previous["split"]
        prev_eq = (previous.get("equalised") or {}).get("equalise")
        prev_data = previous["data"]
    except (KeyError, TypeError):
        raise ValueError("the previous report is not a leave-one-out result") from None
    if Path(str(prev_data)).resolve() != Path(data).resolve():  # rows from another corpus
        raise ValueError(f"the previous report was scored on {prev_data}, this run on {data}")
    if prev_split != split:
        raise ValueError(f"the previous report scored {prev_split!r}, this run {split!r}")
    want_eq = chain_name(eq) if eq else None
    if prev_eq != want_eq:
        raise ValueError(
            f"the previous report was equalised with {prev_eq}, this run with {want_eq}"
        )
    kept: dict[str, dict[str, Metrics]] = {}
    for kind, block in runs.items():
        for name, row in block["groups"].items():
            if only is not None and name in only:
                continue
            if name not in groups:
                raise ValueError(f"the previous report has group {name!r}, not in the hold-outs")
            defined = {k: row.get(k, []) for k in ("exclude", "score", "exclude_sources")}
            if defined != groups[name]:
                raise ValueError(
                    f"group {name!r} was defined otherwise in the previous report "
                    f"(exclude {defined['exclude']}, score {defined['score']}, "
                    f"exclude_sources {defined['exclude_sources']})"
                )
            kept.setdefault(kind, {})[name] = Metrics.from_dict(row)
    return kept


def _held_out_key(run: Path, families, fake_splits, real_split, chain) -> dict:
    import hashlib

    ckpt = run / "checkpoints" / "best.pt"
    return {
        "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()
        if ckpt.exists()
        else None,
        "families": sorted(families),
        "fake_splits": list(fake_splits),
        "real_split": real_split,
        "chain": chain_name(chain) if chain else "none",
    }


KEPT_SCORES = "held-out-scores.json"  # a leave-one-out run folder's kept held-out scores


def _kept(run: Path, key: dict) -> tuple[list, tuple[np.ndarray, np.ndarray] | None]:
    """The run folder's kept score entries, and the one for ``key`` (None if absent)."""
    cache = run / KEPT_SCORES
    entries = json.loads(cache.read_text()) if cache.exists() else []
    for entry in entries:
        if entry["key"] == key:
            return entries, (
                np.asarray(entry["labels"], np.int64),
                np.asarray(entry["scores"], np.float64),
            )
    return entries, None


def cached_held_out_scores(
    run: Path, families, fake_splits, real_split, chain
) -> tuple[np.ndarray, np.ndarray] | None:
    """The labels and calibrated probabilities a leave-one-out run kept in its folder for the
    images ``held_out_selection`` picks (in that order), or None where it kept none for this
    checkpoint and selection."""
    run = Path(run)
    if not (run / KEPT_SCORES).exists():
        return None  # nothing kept: no need to hash the checkpoint for the key
    return _kept(run, _held_out_key(run, families, fake_splits, real_split, chain))[1]


def _held_out_scores(
    run: Path, bundle, samples, families, fake_splits, real_split, chain
) -> tuple[np.ndarray, np.ndarray]:
    """A group's held-out labels and scores, kept in its run folder: a resumed leave-one-out
    (or a second report) does not score a finished group again. The cache is keyed by the
    checkpoint's bytes and what was scored."""
    key = _held_out_key(run, families, fake_splits, real_split, chain)  # hashes the checkpoint once
    entries, found = _kept(run, key)
    if found is not None:
        return found
    y, p = score_held_out_family(bundle, samples, families, fake_splits, real_split, chain)
    entries.append({"key": key, "labels": np.asarray(y).tolist(), "scores": np.asarray(p).tolist()})
    if key["checkpoint_sha256"]:
        (run / KEPT_SCORES).write_text(json.dumps(entries))
    return y, p


def _loo_report(per, pooled, groups, split, out_root, data, eq) -> EvalReport:
    # rows in the hold-outs' order, whichever were kept from an earlier report or run here
    per = {kind: {n: rows[n] for n in groups if n in rows} for kind, rows in per.items()}
    summary = {
        kind: {
            "mean_ap": float(np.mean([m.ap for m in rows.values()])),
            "min_ap": float(np.min([m.ap for m in rows.values()])),
            "mean_roc_auc": float(np.mean([m.roc_auc for m in rows.values()])),
            "groups": {n: {**groups[n], **_row(m)} for n, m in rows.items()},
        }
        for kind, rows in per.items()
        if rows
    }
    report = EvalReport(
        split=split,
        overall=compute_metrics(*pooled["as_is"]),
        per_generator=per["as_is"],
        per_pool={},
        calibration={"threshold": "per group model"},
        model=f"leave-one-out runs under {out_root}",
        data=str(data),
        extra={"mean_ap": summary["as_is"]["mean_ap"], "leave_one_out": summary},
    )
    if eq:
        report.equalised = EvalReport(
            split=report.split,
            overall=compute_metrics(*pooled["equalised"]),
            per_generator=per["equalised"],
            per_pool={},
            calibration=report.calibration,
            model=report.model,
            data=report.data,
            equalise=chain_name(eq),
        )
    return report


def write_json(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
