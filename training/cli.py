"""``synthdetect`` subcommands of the training package (registered by entry point)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detector.argtypes import floats, output_file, output_folder, positive_int

__all__ = ["register"]

# What a user's input can raise (a bad manifest or config, a missing file; DatasetError is a
# ValueError): a message and exit status 2, never a traceback.
USER_ERRORS = (ValueError, FileNotFoundError)


def _refused(exc: BaseException) -> int:
    from training.datasets import worker_message  # a DataLoader worker's error: its own words

    print(f"synthdetect: {worker_message(exc)}", file=sys.stderr)
    return 2


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
    b.add_argument(
        "--fakes-per-real",
        type=positive_int,
        help="aligned fakes made from each real crop (default: the size's; small: 1)",
    )
    b.add_argument("--cache-dir", type=Path, help="downloads and generator weights")
    b.add_argument(
        "--mirror",
        type=Path,
        help="folder of git mirrors (<owner>+<name>) holding pinned generator weights (TAEF2); "
        "without it they are cloned with git, or taken from the cache",
    )
    b.add_argument("--git-url-base", default="https://github.com/", help=argparse.SUPPRESS)
    b.set_defaults(func=_build)
    corpus.set_defaults(func=lambda a: corpus.print_help() or 2)

    s = csub.add_parser(
        "sources",
        help="build a corpus from a pinned sources list (public repositories, blob-checked)",
        description="Extract every file of a sources list (repo, commit, path, blob_sha, label, "
        "family, source_group, licence, notes) from local git mirrors (--mirror DIR holding "
        "<owner>+<name>) or, without --mirror, from clones of the pinned commits fetched with "
        "git. Files are blob-checked, decoded, cut into grid tiles or crop boxes as their notes "
        "say, cropped at native resolution (never resized) and written with the corpus's "
        "post-processing; splits are by source group (and repository).",
    )
    s.add_argument("--sources", required=True, type=Path, help="the sources list (CSV)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--mirror", type=Path, help="folder of git mirrors, <owner>+<name> each")
    s.add_argument(
        "--git-url-base",
        default="https://github.com/",
        help="where to clone from without --mirror (default https://github.com/)",
    )
    s.add_argument("--cache-dir", type=Path, help="clones made without --mirror go here")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--crop", type=positive_int, default=384, help="largest crop side (px)")
    s.add_argument("--crops-per-image", type=positive_int, default=2)
    s.add_argument("--families", help="comma-separated families to take (default: all)")
    s.add_argument("--workers", type=positive_int, default=2, help="decoding threads")
    s.add_argument(
        "--twins",
        help="aligned generators (e.g. taef2) that also remake each real crop: fakes with a "
        "real photo's content, in its split and source group",
    )
    s.add_argument(
        "--twin-share",
        type=float,
        default=1.0,
        help="share of the real crops that get twins (seeded; default 1)",
    )
    s.add_argument(
        "--skip-unusable",
        action="store_true",
        help="leave out files that cannot be decoded or cut (each is recorded in corpus.json)",
    )
    s.set_defaults(func=_build_sources)

    m = csub.add_parser(
        "merge",
        help="one manifest over several corpora (paths rewritten, images left in place)",
    )
    m.add_argument("corpora", nargs="+", type=Path, help="corpus folders or manifest.csv files")
    m.add_argument("--out", required=True, type=Path, help="folder for the merged manifest.csv")
    m.add_argument(
        "--exclude-pools", default="", help="comma-separated pools to leave out (e.g. wild)"
    )
    m.set_defaults(func=_merge)

    c = csub.add_parser(
        "check-shortcut",
        help="can file size, JPEG quality and dimensions alone tell real from fake? (exit 1 "
        "when they can)",
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
    e.add_argument(
        "--equalise",
        metavar="jpeg:Q",
        help="also report every number after decoding and re-encoding each image of both "
        "classes the same way (e.g. jpeg:90), beside the as-is numbers",
    )
    e.add_argument("--out", type=output_file, help="write the JSON report here")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e.add_argument(
        "--generalisation",
        action="store_true",
        help="what a model is chosen by, never the test split: validation sources per family "
        "and pooled, the families its run held out of training (or --held-out), held-out "
        "real photos flagged; as-is and with --equalise (default jpeg:90)",
    )
    e.add_argument(
        "--held-out",
        help="comma-separated families for --generalisation (default: the run's excluded ones); "
        "with --holdouts they are scored by group",
    )
    e.add_argument(
        "--leave-one-out",
        action="store_true",
        help="train one model per hold-out group (each family, or the groups of --holdouts) "
        "with it left out (settings from --config and overrides), then score each on it",
    )
    e.add_argument(
        "--holdouts",
        type=Path,
        help="YAML of hold-out groups for --leave-one-out: name: [families] or "
        "name: {exclude: [...], score: [...], exclude_sources: [source groups]}",
    )
    e.add_argument(
        "--groups",
        help="--leave-one-out: run only these hold-out groups (comma-separated)",
    )
    e.add_argument(
        "--previous",
        type=Path,
        help="--leave-one-out: an earlier report (its JSON) whose finished groups are kept as "
        "they are, not retrained; with --groups, the named ones are run again",
    )
    e.add_argument(
        "--score-on",
        choices=["validation", "test"],
        default="validation",
        help="--leave-one-out: score a group's fakes from every split but test against the "
        "validation reals (default), or its test fakes against the test reals",
    )
    e.add_argument("--config", type=Path, help="training config for --leave-one-out")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    e.set_defaults(func=_evaluate)

    sp = sub.add_parser(
        "soup",
        help="average the weights of finished runs (a model soup) and calibrate the average",
        description="Average the best weights of runs fine-tuned from the same start (same "
        "architecture and preprocessing), calibrate the average on the validation split as "
        "training does, and write a run folder that export/evaluate take. Its held-out "
        "families are those every run was trained without.",
    )
    sp.add_argument("runs", nargs="+", type=Path, help="run folders (or best.pt checkpoints)")
    sp.add_argument("--out", required=True, type=output_folder, help="the new run folder")
    sp.add_argument("--data", type=Path, help="calibration manifest (default: the first run's)")
    sp.add_argument(
        "--weights", type=floats, help="comma-separated weights, one per run (default: all equal)"
    )
    sp.set_defaults(func=_soup)

    en = sub.add_parser(
        "ensemble",
        help="merge exported models into one graph (a logit ensemble) and calibrate it",
        description="Merge exported model folders with the same preprocessing into one ONNX "
        "graph whose tile logit is the weighted mean of the members' temperature-scaled tile "
        "logits, calibrate it on the validation split as training does, and write a model "
        "folder that evaluate/serve/bench take. Its held-out families are those every member "
        "was trained without.",
    )
    en.add_argument("models", nargs="+", type=Path, help="exported model folders (fp32)")
    en.add_argument("--out", required=True, type=output_folder, help="the new model folder")
    en.add_argument("--data", required=True, type=Path, help="calibration manifest")
    en.add_argument(
        "--weights", type=floats, help="comma-separated weights, one per model (default: equal)"
    )
    en.add_argument("--name", help="the model's name (default: the folder's)")
    en.add_argument(
        "--fp16-storage",
        action="store_true",
        help="store the weights as float16 (about half the file; still computed in float32)",
    )
    en.set_defaults(func=_ensemble)

    pr = sub.add_parser(
        "probe",
        help="fit a linear probe on frozen ImageNet features and export it as a model folder",
        description="Fit a logistic regression on the frozen ImageNet EfficientNet-Lite0's "
        "features of each tile, on the training split of --data (as-is and after one draw of "
        "the config's training degradations, weighted as training draws them), choose C by "
        "the validation AP, calibrate on the validation split as training does, and write a "
        "parity-checked model folder that evaluate/serve/ensemble take. Preprocessing, "
        "weights, held-out families and calibration views come from --config and KEY=VALUE "
        "overrides, as for train. The default model merges this probe with the fine-tuned "
        "detector (synthdetect ensemble).",
    )
    pr.add_argument("--config", type=Path)
    pr.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    pr.add_argument("--data", type=Path, help="manifest or dataset (default: the config's data)")
    pr.add_argument("--out", required=True, type=output_folder, help="the new model folder")
    pr.add_argument(
        "--c", type=floats, default=None, help="comma-separated C values to choose from "
        "(inverse L2 strength; default 1e-4,3e-4,1e-3,3e-3,1e-2)",
    )  # fmt: skip
    pr.add_argument(
        "--parts", default="head",
        help="frozen features: head (the 1,280 pooled features), stages (per-stage channel "
        "statistics), or head,stages",
    )  # fmt: skip
    pr.add_argument(
        "--downscale",
        type=positive_int,
        default=1,
        help="average-pool each tile by this factor first",
    )
    pr.add_argument("--cache", type=Path, help="folder for per-image features (reused by reruns)")
    pr.add_argument("--name", help="the model's name (default: the folder's)")
    pr.set_defaults(func=_probe)

    a = sub.add_parser("train-artifact", help="fit the artifact method's linear model on a dataset")
    a.add_argument("--data", required=True, type=Path, help="manifest or dataset layout")
    a.add_argument("--out", required=True, type=output_file, help="where to write the model JSON")
    a.set_defaults(func=_train_artifact)

    x = sub.add_parser(
        "export", help="export a checkpoint to ONNX (+ sidecar JSON), parity-checked"
    )
    x.add_argument(
        "run",
        type=Path,
        help="run folder or .pt checkpoint; or an fp32 ONNX export (such as the bundled "
        "model) with --fp16 or --int8, for a reduced-precision copy checked against it, or "
        "with --triton-repo alone, to put it in a Triton model repository as it is",
    )
    x.add_argument(
        "--out",
        type=Path,
        help="the new model folder (not needed to put an existing ONNX export in a Triton "
        "repository with --triton-repo)",
    )
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
    from training.debian import cache_dir
    from training.pinned import PinnedError, Store

    config = replace(SIZES[args.size], seed=args.seed)
    if args.generators:
        config = replace(config, generators=tuple(g.strip() for g in args.generators.split(",")))
    if args.fakes_per_real:
        config = replace(config, fakes_per_real=args.fakes_per_real)
    wild = None if args.no_wild else (args.wild_dir or WILD_DEFAULT)
    if args.wild_dir and not args.wild_dir.is_dir():
        what = "is a file, not a folder" if args.wild_dir.exists() else "does not exist"
        print(f"synthdetect: --wild-dir {args.wild_dir} {what}", file=sys.stderr)
        return 2
    try:
        cache = cache_dir(args.cache_dir)
        build_corpus(
            args.out,
            config,
            real_dir=args.real_dir,
            wild_dir=wild,
            cache=cache,
            store=Store(args.mirror, cache, url_base=args.git_url_base),
            log=lambda m: print(m, file=sys.stderr),
        )
    except (CorpusError, PinnedError, ValueError) as exc:
        return _refused(exc)
    return 0


def _build_sources(args: argparse.Namespace) -> int:
    from training.corpus import CorpusError
    from training.debian import cache_dir
    from training.pinned import PinnedError, Store, read_sources
    from training.sources_corpus import SourcesConfig, build_sources_corpus

    try:
        families = tuple(f.strip() for f in args.families.split(",")) if args.families else None
        config = SourcesConfig(
            seed=args.seed,
            crop=args.crop,
            crops_per_image=args.crops_per_image,
            families=families,
            skip_unusable=args.skip_unusable,
            workers=args.workers,
            twins=tuple(t.strip() for t in args.twins.split(",")) if args.twins else (),
            twin_share=args.twin_share,
        )
        rows = read_sources(args.sources)
        store = Store(
            args.mirror,
            None if args.mirror else cache_dir(args.cache_dir),
            url_base=args.git_url_base,
        )
        build_sources_corpus(
            rows,
            args.out,
            store,
            config,
            log=lambda m: print(m, file=sys.stderr),
            sources_file=str(args.sources),
            cache=args.cache_dir,
        )
    except (CorpusError, PinnedError, ValueError) as exc:
        return _refused(exc)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from training.merge import merge_manifests

    pools = tuple(p.strip() for p in args.exclude_pools.split(",") if p.strip())
    try:
        info = merge_manifests(args.corpora, args.out, pools)
    except ValueError as exc:
        return _refused(exc)
    print(
        f"wrote {args.out / 'manifest.csv'}: {info['rows']} images from {len(args.corpora)} corpora"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.train import train

    try:
        config = load_config(args.config, args.overrides)
        run = train(config)
    except USER_ERRORS as exc:
        return _refused(exc)
    print(f"run folder: {run}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from detector.outputs import check_not_an_input
    from training.run_eval import HELD_OUT_FAKE_SPLITS, evaluate_model, leave_one_out

    # (a report written over the model's model.json or the manifest replaced it, exit 0)
    check_not_an_input(args.out, args.model, args.data, args.config)

    if (args.groups or args.previous) and not args.leave_one_out:
        print("synthdetect: --groups and --previous go with --leave-one-out", file=sys.stderr)
        return 2
    # Options that belong to one mode are refused elsewhere, not silently ignored.
    ignored = [
        name
        for name, given, unused in (
            ("--generalisation", args.generalisation, args.leave_one_out),
            ("--config", args.config is not None, not args.leave_one_out),
            ("KEY=VALUE overrides", bool(args.overrides), not args.leave_one_out),
            ("--held-out", args.held_out is not None, not args.generalisation),
            (
                "--holdouts",
                args.holdouts is not None,
                not (args.leave_one_out or args.generalisation),
            ),
        )
        if given and unused
    ]
    if ignored:
        mode = (
            "--leave-one-out"
            if args.leave_one_out
            else "--generalisation"
            if args.generalisation
            else "a plain evaluation"
        )
        print(f"synthdetect: {', '.join(ignored)} not used by {mode}", file=sys.stderr)
        return 2
    try:
        if args.generalisation:
            return _generalisation(args)
        if args.leave_one_out:
            splits = (
                (HELD_OUT_FAKE_SPLITS, "val")
                if args.score_on == "validation"
                else (("test", "heldout-generators"), "test")
            )

            def written(report, done: list[str], left: list[str]) -> None:
                """After each group: the report so far, on disk (a long run's partial result)."""
                if args.out:
                    report.extra = {**report.extra, "groups_done": done, "groups_left": left}
                    report.write(args.out)
                    print(f"wrote {args.out} ({len(done)} of {len(done) + len(left)} groups)",
                          file=sys.stderr)  # fmt: skip

            previous = None
            if args.previous is not None:
                try:
                    previous = json.loads(args.previous.read_text())
                except (OSError, ValueError) as exc:
                    raise ValueError(
                        f"cannot read the previous report {args.previous}: {exc}"
                    ) from None
            only = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
            report = leave_one_out(
                args.config, args.overrides, args.data, args.model, args.holdouts,
                args.equalise, *splits, on_group=written, only=only, previous=previous,
            )  # fmt: skip
        else:
            report = evaluate_model(
                args.model, args.data, args.split, args.degrade, args.device, args.equalise
            )
    except USER_ERRORS as exc:
        return _refused(exc)
    print(report.render())
    if args.out:
        report.write(args.out)
        print(f"wrote {args.out}")
    return 0


def _generalisation(args: argparse.Namespace) -> int:
    import json

    from detector.engine import load_bundle
    from training.datasets import load_samples
    from training.run_eval import excluded_families, generalisation, read_holdouts, write_json

    samples = load_samples(args.data)
    bundle = load_bundle(args.model, device=args.device)
    excluded = excluded_families(bundle)
    held: list[str] | dict[str, list[str]] | None = None
    if args.held_out:
        held = [f.strip() for f in args.held_out.split(",") if f.strip()]
        unknown = sorted(set(held) - {s.family for s in samples if s.label == 1})
        if unknown or not held:
            raise ValueError(f"--held-out names no generated family of {args.data}: {unknown}")
        trained = sorted(set(held) - set(excluded))
        if trained:  # scored as held out, a family the run trained on would read as unseen
            raise ValueError(
                f"--held-out {','.join(trained)}: the model was trained on it; only the "
                f"families it excluded ({', '.join(excluded) or 'none'}) are held out"
            )
    if args.holdouts:  # name the run's excluded families by the groups they belong to
        chosen = held or excluded
        groups = read_holdouts(args.holdouts, samples)
        held = {n: g["score"] for n, g in groups.items() if set(g["exclude"]) <= set(chosen)}
    report = generalisation(bundle, samples, held, args.equalise or "jpeg:90")
    report = {"model": str(args.model), "data": str(args.data), **report}
    for kind in ("as_is", "equalised"):
        if kind in report:
            r = report[kind]
            val = r["val"]["overall"]
            held = r["mean_held_out_ap"]
            fam = r["val"]["mean_family_ap"]
            print(
                f"{kind:>9}: val AP {val['ap']:.3f} ROC-AUC {val['roc_auc']:.3f} "
                + (f"(mean family AP {fam:.3f}); " if fam is not None else "; ")
                + (
                    f"held-out families mean AP {held:.3f}"
                    if held is not None
                    else "no held-out families (the run trained on every family)"
                )
            )
    if args.out:
        write_json(report, args.out)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(report, indent=2))
    return 0


def _soup(args: argparse.Namespace) -> int:
    from training.soup import make_soup

    try:
        record = make_soup(args.runs, args.out, data=args.data, weights=args.weights)
    except USER_ERRORS as exc:
        return _refused(exc)
    print(
        f"soup of {len(args.runs)} runs: {args.out} (validation AP {record['best_val_ap']:.3f} "
        f"over {record['val_images']} images, threshold {record['calibration']['threshold']:.3f})"
    )
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from training.ensemble import make_ensemble

    try:
        meta = make_ensemble(
            args.models, args.out, args.data, weights=args.weights, name=args.name,
            store_fp16=args.fp16_storage,
        )  # fmt: skip
    except USER_ERRORS as exc:
        return _refused(exc)
    cal, parity = meta["calibration"], meta["parity"]
    print(
        f"ensemble of {len(args.models)} models: {args.out} (validation AP "
        f"{meta['training']['val_ap']:.3f}, threshold {cal['threshold']:.3f}; over "
        f"{parity['tiles']} tiles the largest |logit difference| to the members is "
        f"{parity['max_abs_logit_diff']:.1e})"
    )
    return 0


def _probe(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.probe import DEFAULT_CS, train_probe

    try:
        config = load_config(args.config, args.overrides)
        data = args.data or config.data
        if not data:
            raise ValueError("no data: give --data or data=<manifest>")
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        meta = train_probe(
            Path(data), args.out, config, cs=args.c or DEFAULT_CS, parts=parts,
            downscale=args.downscale, cache=args.cache, name=args.name,
        )  # fmt: skip
    except USER_ERRORS as exc:
        return _refused(exc)
    cal, fit = meta["calibration"], meta["training"]
    print(
        f"probe: {args.out} (C {fit['config']['C']:g}, validation AP {fit['best_val_ap']:.3f}, "
        f"temperature {cal['temperature']:.3f}, threshold {cal['threshold']:.3f}; parity "
        f"{meta['parity']['max_abs_logit_diff']:.1e})"
    )
    return 0


def _train_artifact(args: argparse.Namespace) -> int:
    from detector.outputs import check_not_an_input
    from training.artifact_train import train_artifact

    check_not_an_input(args.out, args.data)
    try:
        model = train_artifact(args.data, args.out)
    except USER_ERRORS as exc:
        return _refused(exc)
    test = model.get("test") or {}
    for warning in model["warnings"]:
        print(f"synthdetect: warning: {warning}", file=sys.stderr)
    skipped = sum(model["training"]["skipped"].values())
    if skipped:
        print(f"left out {skipped} images the method does not judge (smaller than 64 px, or flat)")
    print(f"wrote {args.out}; test AP {test.get('ap')}, TPR@1%FPR {test.get('tpr_at_1pct_fpr')}")
    return 0


def _triton_repo(args: argparse.Namespace, model_dir: Path) -> int:
    from training.triton_repo import write_triton_repo

    target = write_triton_repo(
        model_dir, args.triton_repo, gpu=not args.triton_cpu, tensorrt=args.tensorrt
    )
    print(f"wrote Triton model {target}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from detector.bundled import SAMPLES
    from detector.engine import SIDECAR
    from training.datasets import load_samples
    from training.export import ExportError, check_convertible, export_onnx, reduce_precision

    images = args.images or sorted(SAMPLES.iterdir())
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    from_onnx = args.run.is_dir() and (args.run / SIDECAR).is_file()
    try:
        if from_onnx and precision == "fp32":
            if not args.triton_repo or args.out:
                raise ExportError(
                    f"{args.run} is already an ONNX export; --fp16 or --int8 makes a "
                    "reduced-precision copy of it, --triton-repo DIR (without --out) puts it "
                    "in a Triton model repository as it is"
                )
            return _triton_repo(args, args.run)
        if args.out is None:
            raise ExportError("--out is required: the folder for the exported model")
        val = []
        if args.calib_data and precision == "int8":
            val = [s for s in load_samples(args.calib_data) if s.split == "val"]
            if not val:
                raise ExportError(f"{args.calib_data} has no val split to calibrate on")
        # 64 images spread evenly over the split (a manifest is often sorted by source); the
        # accuracy check below scores the whole split, these 64 included.
        n = min(64, len(val))
        calib = [val[i * len(val) // n].path for i in range(n)]
        if from_onnx:  # the quick refusals before the slower scoring below
            check_convertible(args.run, args.out, precision)
        # The fp32 model scores the split first: an image it cannot read stops the export here,
        # before anything is written, not after the copy is made and left unvalidated.
        reference = "fp32 (onnx)" if from_onnx else "fp32 (torch)"
        fp32_check = _val_check(args.run, val) if precision == "int8" and val else None
        if from_onnx:
            result = reduce_precision(
                args.run, args.out, images, precision=precision, calib_images=calib, name=args.name
            )
        else:
            result = export_onnx(
                args.run, args.out, images, precision=precision, calib_images=calib, name=args.name
            )
        if fp32_check is not None:
            _int8_delta(args.out, val, reference, fp32_check)
        if args.triton_repo:
            _triton_repo(args, args.out)
    except (*USER_ERRORS, ExportError) as exc:
        return _refused(exc)
    parity = result.sidecar["parity"]
    print(
        f"wrote {result.onnx} ({precision}, + model.json); over {parity['tiles']} real tiles the "
        f"largest |logit difference| to {'the fp32 ONNX' if from_onnx else 'torch'} is "
        f"{parity['max_abs_logit_diff']:.2e}"
    )
    return 0


def _val_check(model: Path, val: list) -> tuple[float, dict]:
    """A model's AP on the validation images, and the share of reals and fakes it flags at its
    threshold (NaN, a class absent from the split, is written as null)."""
    import math

    from detector.engine import load_bundle
    from training.evaluate import predict_logits
    from training.metrics import accuracy, average_precision

    labels = [s.label for s in val]
    bundle = load_bundle(model)
    logits = predict_logits(bundle.logits, val, bundle.preprocess)
    cal = bundle.calibration
    _, real_ok, fakes = accuracy(labels, cal.probability(logits), cal.threshold)
    flagged = {
        k: None if math.isnan(v) else v for k, v in (("reals", 1 - real_ok), ("fakes", fakes))
    }
    return average_precision(labels, logits), flagged


def _int8_delta(out: Path, val: list, reference: str, fp32_check: tuple[float, dict]) -> None:
    """AP of the int8 export against the fp32 model's (checkpoint or ONNX, scored before the
    conversion) on the same validation images, and the share of reals and fakes each flags at
    the threshold the int8 copy keeps (fitted on the fp32 model's logits)."""
    import json

    int8_check = _val_check(out, val)
    results = {reference: fp32_check[0], "int8 (onnx)": int8_check[0]}
    flagged = {reference: fp32_check[1], "int8 (onnx)": int8_check[1]}
    meta_path = out / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["int8_validation"] = {
        "images": len(val),
        "ap": results,
        "delta": results["int8 (onnx)"] - results[reference],
        "flagged_at_threshold": flagged,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"int8 on {len(val)} val images: AP {results['int8 (onnx)']:.4f} vs fp32 "
        f"{results[reference]:.4f}; at the threshold, reals flagged "
        f"{_share(flagged['int8 (onnx)']['reals'])} vs {_share(flagged[reference]['reals'])}, "
        f"fakes {_share(flagged['int8 (onnx)']['fakes'])} vs {_share(flagged[reference]['fakes'])}"
    )


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _check_shortcut(args: argparse.Namespace) -> int:
    from training.shortcut import shortcut_check

    try:
        report = shortcut_check(args.corpus)
    except (OSError, ValueError) as exc:
        return _refused(exc)
    print(report.render())
    return 0 if report.verdict == "PASS" else 1  # a CI step can stop on it
