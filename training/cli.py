"""``synthdetect`` subcommands of the training package (registered by entry point)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


class _UserError(Exception):
    pass


def register(sub: Any) -> None:
    corpus = sub.add_parser("corpus", help="build and check the offline training corpus")
    csub = corpus.add_subparsers(title="corpus commands", metavar="COMMAND")
    b = csub.add_parser(
        "build",
        help="build the offline corpus (real photos + fakes the project makes)",
        description="Build a corpus of real photos and generated images, offline and "
        "reproducibly. Sizes: tiny (tests, ~1-3 min), small (~20-30 min), full (all photos "
        "and generators).",
    )
    b.add_argument("--size", choices=["tiny", "small", "full"], default="tiny")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--real-dir", type=Path, help="use your own real photos instead of Debian's")
    b.add_argument(
        "--wild-dir",
        type=Path,
        help="the wild-train folder (default: ../shared/data/wild-train when present)",
    )
    b.add_argument("--no-wild", action="store_true", help="leave the wild images out")
    b.add_argument("--generators", help="comma-separated generator names (default: all)")
    b.add_argument("--cache-dir", type=Path, help="downloads and generator weights")
    b.set_defaults(func=_build)
    corpus.set_defaults(func=lambda a: corpus.print_help() or 2)

    c = csub.add_parser(
        "check-shortcut",
        help="can file size, JPEG quality and dimensions alone tell real from fake?",
    )
    c.add_argument("corpus", type=Path, help="corpus directory or manifest.csv")
    c.set_defaults(func=_check_shortcut)

    t = sub.add_parser(
        "train",
        help="train a detector (writes a run folder; resumes when it exists)",
        description="Train a CNN/ViT detector. Settings come from --config (YAML) and key=value "
        "overrides, e.g. `synthdetect train --config configs/default.yaml data=/tmp/c/manifest.csv "
        "epochs=5`. Multi-GPU: `torchrun --nproc-per-node N -m training.cli_train ...`.",
    )
    t.add_argument("--config", type=Path)
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "evaluate",
        help="per-generator and overall metrics of a model on a dataset",
    )
    e.add_argument(
        "--model", required=True, type=Path, help="run folder, .pt checkpoint, or ONNX folder"
    )
    e.add_argument("--data", required=True, type=Path, help="manifest or dataset layout")
    e.add_argument(
        "--split", default="test", help="split to evaluate (default test; 'all' for every image)"
    )
    e.add_argument(
        "--degrade", default="none", help="degradation chain applied to every image, e.g. jpeg:75"
    )
    e.add_argument("--out", type=Path, help="write the JSON report here")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e.add_argument(
        "--leave-one-out",
        action="store_true",
        help="train one model per generator family with that family held out (settings from "
        "--config and overrides), then evaluate each on its held-out family",
    )
    e.add_argument("--config", type=Path, help="training config for --leave-one-out")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    e.set_defaults(func=_evaluate)

    a = sub.add_parser("train-artifact", help="fit the artifact method's linear model on a dataset")
    a.add_argument("--data", required=True, type=Path, help="manifest or dataset layout")
    a.add_argument("--out", required=True, type=Path, help="where to write the model JSON")
    a.set_defaults(func=_train_artifact)

    x = sub.add_parser(
        "export", help="export a checkpoint to ONNX (+ sidecar JSON), parity-checked"
    )
    x.add_argument("run", type=Path, help="run folder or .pt checkpoint")
    x.add_argument("--out", required=True, type=Path)
    x.add_argument(
        "--images",
        nargs="*",
        type=Path,
        help="real images for the parity check (default: the bundled samples)",
    )
    x.add_argument("--name", help="model name recorded in the sidecar")
    prec = x.add_mutually_exclusive_group()
    prec.add_argument(
        "--fp16", action="store_true", help="fp16 weights (fp32 inputs/outputs), for GPUs"
    )
    prec.add_argument(
        "--int8", action="store_true", help="static int8 QDQ quantisation (needs --calib-data)"
    )
    x.add_argument(
        "--calib-data",
        type=Path,
        help="manifest whose val split calibrates int8 and measures its accuracy delta",
    )
    x.add_argument("--triton-repo", type=Path, help="also write a Triton model repository here")
    x.add_argument(
        "--triton-cpu",
        action="store_true",
        help="Triton instance_group KIND_CPU (default KIND_GPU)",
    )
    x.add_argument("--tensorrt", action="store_true", help="enable Triton's TensorRT accelerator")
    x.set_defaults(func=_export)


def _build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from training.corpus import SIZES, WILD_DEFAULT, CorpusError, build_corpus

    config = replace(SIZES[args.size], seed=args.seed)
    if args.generators:
        config = replace(config, generators=tuple(g.strip() for g in args.generators.split(",")))
    wild = None if args.no_wild else (args.wild_dir or WILD_DEFAULT)
    if args.wild_dir and not args.wild_dir.exists():
        print(f"synthdetect: --wild-dir {args.wild_dir} does not exist", file=sys.stderr)
        return 2
    try:
        build_corpus(
            args.out,
            config,
            real_dir=args.real_dir,
            wild_dir=wild,
            cache=args.cache_dir,
            log=lambda m: print(m, file=sys.stderr),
        )
    except (CorpusError, ValueError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.datasets import DatasetError
    from training.train import train

    try:
        config = load_config(args.config, args.overrides)
        run = train(config)
    except (ValueError, DatasetError, FileNotFoundError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    print(f"run folder: {run}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.datasets import DatasetError
    from training.run_eval import evaluate_model, leave_one_out

    try:
        if args.leave_one_out:
            report = leave_one_out(args.config, args.overrides, args.data, args.model)
        else:
            report = evaluate_model(args.model, args.data, args.split, args.degrade, args.device)
    except (ValueError, DatasetError, FileNotFoundError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    print(report.render())
    if args.out:
        report.write(args.out)
        print(f"wrote {args.out}")
    return 0


def _train_artifact(args: argparse.Namespace) -> int:
    from training.artifact_train import train_artifact
    from training.datasets import DatasetError

    try:
        model = train_artifact(args.data, args.out)
    except (ValueError, DatasetError, FileNotFoundError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    test = model.get("test") or {}
    print(f"wrote {args.out}; test AP {test.get('ap')}, TPR@1%FPR {test.get('tpr_at_1pct_fpr')}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from detector.bundled import SAMPLES
    from training.datasets import DatasetError, load_samples
    from training.export import ExportError, export_onnx

    images = args.images or sorted(SAMPLES.iterdir())
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    try:
        val = []
        if args.calib_data:
            val = [s for s in load_samples(args.calib_data) if s.split == "val"]
        result = export_onnx(
            args.run,
            args.out,
            images,
            precision=precision,
            calib_images=[s.path for s in val[:64]],
            name=args.name,
        )
        if precision == "int8" and val:
            _int8_delta(args.run, args.out, val)
        if args.triton_repo:
            from serving.triton_repo import write_triton_repo

            target = write_triton_repo(
                args.out, args.triton_repo, gpu=not args.triton_cpu, tensorrt=args.tensorrt
            )
            print(f"wrote Triton model {target}")
    except (ExportError, ValueError, FileNotFoundError, DatasetError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    parity = result.sidecar["parity"]
    print(
        f"wrote {result.onnx} ({precision}, + model.json); over {parity['tiles']} real tiles the "
        f"largest |logit difference| to torch is {parity['max_abs_logit_diff']:.2e}"
    )
    return 0


def _int8_delta(run: Path, out: Path, val: list) -> None:
    """AP of the fp32 checkpoint and of the int8 export on the same validation images."""
    import json

    from detector.engine import load_bundle
    from training.evaluate import predict_logits
    from training.metrics import average_precision

    labels = [s.label for s in val]
    results = {}
    for tag, path in (("fp32 (torch)", run), ("int8 (onnx)", out)):
        bundle = load_bundle(path)
        results[tag] = average_precision(
            labels, predict_logits(bundle.logits, val, bundle.preprocess)
        )
    meta_path = out / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["int8_validation"] = {
        "images": len(val),
        "ap": results,
        "delta": results["int8 (onnx)"] - results["fp32 (torch)"],
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"int8 on {len(val)} val images: AP {results['int8 (onnx)']:.4f} vs fp32 {results['fp32 (torch)']:.4f}"
    )


def _check_shortcut(args: argparse.Namespace) -> int:
    from training.shortcut import shortcut_check

    try:
        report = shortcut_check(args.corpus)
    except (OSError, ValueError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return 2
    print(report.render())
    return 0
