"""Experiment: do reconstructions by an SD-shaped autoencoder of our own reach real LDM outputs?

The wild diffusion images (Stable Diffusion, FLUX, Kandinsky, ...) are all decoded by a
latent-diffusion VAE. If the traces of that decoder come from its shape (GroupNorm ResBlocks,
three nearest + conv upsamplings from 4 latent channels at 1/8) rather than its weights, real
crops reconstructed by a small VAE of that shape, trained by us, should teach a detector to
flag LDM outputs it never saw. This script builds that family for the train and val splits of
a corpus (the test split is untouched) and scores a leave-one-family-out model.

    python scripts/experiments/ldm_vae_transfer.py build runs/corpus-small/manifest.csv
    synthdetect train --config configs/default.yaml data=runs/corpus-small/manifest-ldm.csv \
        out=runs/exp/loo-wd-ldm epochs=3 "exclude_families=[wild-diffusion]"
    python scripts/experiments/ldm_vae_transfer.py family-ap runs/exp/loo-wd-ldm \
        runs/corpus-small/manifest.csv wild-diffusion

The model card's other two rows of this comparison: the same training on manifest.csv (the
baseline; `evaluate --leave-one-out` trains it too), and with `"branches=[residual, spectrum]"`
added (no RGB), each scored by `family-ap` the same way.

Result on the small corpus (2026-11-22, CPU, 1,200 VAE steps; 541 reconstructions at 27.6 dB
after matching each channel's mean and std to the real crop, without which the under-trained
VAE tinted every crop, a colour cue no real decoder gives): held-out wild-diffusion AP 0.429
(ROC-AUC 0.456) against 0.383 (0.355) without the family, at a chance AP of 0.47. Two earlier
runs, which post-processed the reconstructions with the script's own copy of the corpus'
JPEG/PNG step instead of the corpus writer, gave 0.424 (0.459) and 0.448 (0.479).
No transfer; see the model card.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from training.corpus import CorpusConfig, CorpusItem, CorpusStats, CorpusWriter, psnr
from training.generators.trained import _random_patches

GENERATOR = "ae_ldm"
CHANNELS = (32, 64, 128, 128)  # SD's VAE: (128, 256, 512, 512) with two ResBlocks a level


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class _Down(nn.Module):  # asymmetric pad + stride-2 conv, as in SD's encoder
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Up(nn.Module):  # nearest x2 + conv, as in SD's decoder
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SmallLdmVae(nn.Module):
    """KL autoencoder, 3 -> 4 latent channels at 1/8 -> 3, pixels in [-1, 1]."""

    def __init__(self, latent: int = 4) -> None:
        super().__init__()
        enc: list[nn.Module] = [nn.Conv2d(3, CHANNELS[0], 3, padding=1)]
        prev = CHANNELS[0]
        for i, c in enumerate(CHANNELS):
            enc.append(_Res(prev, c))
            prev = c
            if i < len(CHANNELS) - 1:
                enc.append(_Down(c))
        enc += [_Res(prev, prev), nn.GroupNorm(8, prev), nn.SiLU()]
        enc.append(nn.Conv2d(prev, 2 * latent, 3, padding=1))
        self.enc = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent, prev, 3, padding=1), _Res(prev, prev)]
        for i, c in enumerate(reversed(CHANNELS)):
            dec.append(_Res(prev, c))
            prev = c
            if i < len(CHANNELS) - 1:
                dec.append(_Up(c))
        dec += [nn.GroupNorm(8, prev), nn.SiLU(), nn.Conv2d(prev, 3, 3, padding=1)]
        self.dec = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.enc(x).chunk(2, 1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum((1, 2, 3)).mean()
        return self.dec(z), kl


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _reconstruct(model: SmallLdmVae, px: np.ndarray) -> np.ndarray:
    rec = (model(_tensor(px[None]), sample=False)[0][0].clamp(-1, 1) + 1) * 127.5
    # An under-trained small VAE shifts colours, a content cue no real LDM decoder gives:
    # match each channel's mean and std to the real crop and keep only the spatial traces.
    ref = torch.from_numpy(px.astype(np.float32)).permute(2, 0, 1)
    rec = (rec - rec.mean((1, 2), keepdim=True)) / (rec.std((1, 2), keepdim=True) + 1e-3)
    rec = rec * ref.std((1, 2), keepdim=True) + ref.mean((1, 2), keepdim=True)
    return rec.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def build(manifest: Path, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    root = manifest.parent
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    reals = [r for r in rows if r["label"] == "real" and r["pool"] == "crops256"]

    def load(r: dict) -> np.ndarray:
        return np.asarray(Image.open(root / r["path"]).convert("RGB"))

    train = np.stack([load(r) for r in reals if r["split"] == "train"])
    model = SmallLdmVae()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    start = time.perf_counter()
    for step in range(steps):  # L1 + a light KL, on random 64 px patches of train crops
        x = _tensor(_random_patches(train, 16, 64, rng))
        rec, kl = model(x)
        loss = (rec - x).abs().mean() + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    # The corpus' own writer: the same post-processing (JPEG or PNG, seeded per item) as both
    # classes of the corpus got, and manifest rows with their sha256.
    config = CorpusConfig(**json.loads((root / "corpus.json").read_text())["config"])
    stats, fidelity = CorpusStats(), []
    writer = CorpusWriter(root, config, stats)
    with torch.inference_mode():
        for r in reals:
            if r["split"] not in ("train", "val"):
                continue
            px = load(r)
            fake = _reconstruct(model, px)
            fidelity.append(psnr(fake, px))
            key = f"{Path(r['path']).stem}-{GENERATOR}"
            writer.write(CorpusItem(fake, "fake", GENERATOR, "autoencoder", r["pool"], r["source_id"],
                               r["split"], key, pair=r["path"]))  # fmt: skip
    out = root / "manifest-ldm.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + stats.rows)
    print(f"{len(stats.rows)} reconstructions, mean PSNR {np.mean(fidelity):.2f} dB -> {out}")


def family_ap(model: str, manifest: Path, family: str) -> None:
    """A family's test fakes against the test reals of the same pools, as leave-one-out does."""
    from detector.engine import load_bundle
    from training.datasets import read_manifest
    from training.metrics import compute_metrics
    from training.run_eval import score_held_out_family

    bundle = load_bundle(model)
    labels, probs = score_held_out_family(bundle, read_manifest(manifest), family)
    if not labels.any():
        sys.exit(f"no test fakes of family {family!r} in {manifest}")
    m = compute_metrics(labels, probs, bundle.calibration.threshold)
    print(
        f"{model} {family}: {int(labels.sum())} fakes / {int((labels == 0).sum())} reals,"
        f" AP {m.ap:.3f} (chance {labels.mean():.2f}), ROC-AUC {m.roc_auc:.3f},"
        f" TPR@1%FPR {m.tpr_at_1pct_fpr:.3f}, flagged {m.fake_accuracy_at_threshold:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser(
        "build", help="train the VAE, write its reconstructions and manifest-ldm.csv"
    )
    b.add_argument("manifest", type=Path)
    b.add_argument("--steps", type=int, default=1200)
    b.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("family-ap", help="score one held-out family against the test reals")
    f.add_argument("model")
    f.add_argument("manifest", type=Path)
    f.add_argument("family")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.manifest, args.steps, args.seed)
    else:
        family_ap(args.model, args.manifest, args.family)


if __name__ == "__main__":
    main()
