"""The ``synthdetect`` command line.

Scoring commands live here. Other packages of the distribution (training, serving, benchmarks)
add their subcommands through the ``synthdetect.commands`` entry-point group, so ``detector``
never imports them. Every user error ends with a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import sys
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from detector.argtypes import positive_int
from detector.image import DecodeLimits, ImageError, decode, decode_file, file_identity, read_file
from detector.memory import KnownImageError, require_database
from detector.outputs import OutputError, check_not_an_input, staging_file
from detector.registry import RegistryError

__all__ = ["main"]

EXIT_OK = 0
EXIT_NONE_READABLE = 2
EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as ``synthdetect: <message>``, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    # Pillow warns about odd-but-readable files (corrupt EXIF, large images); decode() already
    # reports what matters, so the command line keeps its output to results and errors.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come after an option too (`train --config c.yaml epochs=3
    # lr=1e-3`): argparse takes the positional run before the option only
    if extra and isinstance(getattr(args, "overrides", None), list):
        kept = [a for a in extra if "=" in a and not a.startswith("-")]
        args.overrides += kept
        extra = [a for a in extra if a not in kept]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (CliError, OutputError) as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RegistryError as exc:  # an unknown method, model or generator name, from any command
        print(f"synthdetect: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("synthdetect: interrupted", file=sys.stderr)
        return 130
    except sqlite3.DatabaseError as exc:  # a memory or review database damaged on disk
        print(f"synthdetect: database error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `synthdetect score ... | head`
        return EXIT_OK
    except (IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError,
            FileNotFoundError) as exc:  # fmt: skip
        # a path given on the command line that cannot be written or read as asked
        where = f": {exc.filename}" if exc.filename else ""
        print(f"synthdetect: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise
        # stdout (or a file the command writes) is on a full or failing disk: say so, once
        print(f"synthdetect: cannot write output: {exc.strerror}", file=sys.stderr)
        with contextlib.suppress(OSError):  # what is still buffered cannot be written either
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces stdout until exit
        return 1


def build_parser() -> argparse.ArgumentParser:
    from detector import __version__

    parser = argparse.ArgumentParser(
        prog="synthdetect",
        description="Detect AI-generated images: model, artifact and provenance methods.",
    )
    parser.add_argument("--version", action="version", version=f"synthdetect {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_score(sub)
    _add_scan(sub)
    _add_methods(sub)
    _add_memory(sub)
    _load_plugins(sub)
    return parser


# --- shared options -----------------------------------------------------------------------


def _add_detector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--methods",
        metavar="LIST",
        help="comma-separated method names (default: every available method; see "
        "`synthdetect methods`)",
    )
    p.add_argument(
        "--include-prompt",
        action="store_true",
        help="include prompt text found in generation parameters (user data; off by default)",
    )
    p.add_argument(
        "--model",
        dest="model_path",
        metavar="PATH",
        help="model for the model method: ONNX folder, run folder or .pt (default: bundled)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="for the model method")
    p.add_argument(
        "--artifact-model",
        metavar="PATH",
        help="the artifact method's linear model (JSON from `synthdetect train-artifact`; "
        "default: bundled); runs the artifact method beside the default set",
    )
    p.add_argument(
        "--max-tiles",
        type=positive_int,
        metavar="N",
        help="for the model method: at most N tiles per image instead of the model's own "
        "(faster, less of a large image seen; the model card measures 4)",
    )
    p.add_argument(
        "--memory-db",
        metavar="PATH",
        default=os.environ.get("SYNTHDETECT_MEMORY_DB") or None,
        help="known-image memory (SQLite): images reviewers confirmed decide the verdict "
        "(default: $SYNTHDETECT_MEMORY_DB; none: the known_image method does not run)",
    )
    p.add_argument("--max-bytes", type=positive_int, default=DecodeLimits.max_bytes)
    p.add_argument("--max-pixels", type=positive_int, default=DecodeLimits.max_pixels)


def _detector_spec(args: argparse.Namespace) -> tuple[list[str] | None, dict[str, Any]]:
    """The method names (None: the default set) and options the detector options give."""
    names = None
    if args.methods is not None:  # `--methods ""` is a mistake, not the default set
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        if not names:
            raise CliError("--methods is empty")
    options: dict[str, Any] = {"include_prompt": args.include_prompt, "device": args.device}
    extra = set()
    if args.max_tiles:
        options["max_tiles"] = args.max_tiles
    if args.model_path:
        options["model_path"] = args.model_path
        extra.add("model")  # an explicit model makes the model method run even if none is bundled
    if args.memory_db:
        options["memory_db"] = args.memory_db
        extra.add("known_image")
    if args.artifact_model:
        options["artifact_model"] = args.artifact_model
        extra.add("artifact")  # opt-in otherwise: a model of one's own is asked for
    if names is not None:  # a model given for a method not asked for was never used
        for flag, method in (("--model", "model"), ("--artifact-model", "artifact")):
            if method in extra and method not in names:
                raise CliError(f"{flag} is for the {method} method, which --methods leaves out")
    if names is None and extra:
        from detector.methods import default_method_names

        names = default_method_names(also=extra)
    return names, options


def _make_detector(args: argparse.Namespace) -> Any:
    from detector.methods import MethodUnavailable
    from detector.pipeline import Detector

    names, options = _detector_spec(args)
    if args.memory_db:  # only `memory add` and `memory import` create a memory
        try:
            require_database(args.memory_db)
        except KnownImageError as exc:
            raise CliError(str(exc)) from None
    try:
        limits = DecodeLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels)
        return Detector(names, limits=limits, **options)
    except (RegistryError, MethodUnavailable, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and args.artifact_model and exc.filename == args.artifact_model:
            raise CliError(f"--artifact-model: {exc.strerror}: {args.artifact_model}") from None
        raise CliError(str(exc)) from None
    except KnownImageError as exc:
        raise CliError(f"--memory-db: {exc}") from None


def record(path: str, sha256: str | None, verdict: Any = None, error: str | None = None) -> dict:
    """One output record, the same shape for `score --json` and `scan` lines."""
    rec: dict[str, Any] = {"path": path, "sha256": sha256}
    if error is not None:
        rec["error"] = error
    else:
        rec["verdict"] = verdict.to_dict()
    return rec


# --- score --------------------------------------------------------------------------------


def _add_score(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="score image files and print verdicts",
        description="Score image files. Exit code 0 when at least one file could be read "
        "(whatever the verdicts), 2 when none could.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.add_argument("-v", "--verbose", action="store_true", help="show every method's result")
    p.add_argument(
        "--heatmap",
        metavar="OUT",
        help="where the model saw generation: per-tile probabilities over the whole image (in "
        "--json records) and an overlay PNG, written to OUT (a .png path for one file, else a "
        "folder that gets <name>.heatmap.png per file, <name>.2.heatmap.png for a second file "
        "of that name)",
    )
    _add_detector_options(p)
    p.set_defaults(func=_cmd_score)


# `score` decodes and scores its files in Detector.score's chunks (at most CHUNK_IMAGES files
# or CHUNK_PIXELS pixels), so that its memory does not grow with the number of files (one 80 MP
# image decodes to 240 MB)


def _cmd_score(args: argparse.Namespace) -> int:
    from detector.pipeline import CHUNK_IMAGES, CHUNK_PIXELS

    detector = _make_detector(args)
    heat_out = _heatmap_target(args, detector) if args.heatmap else None
    records: list[dict[str, Any]] = []
    pending: list[tuple[int, Any]] = []  # (index into records, image), scored in chunks
    scored = pending_pixels = 0

    def flush() -> None:  # score the chunk and drop its pixels: memory bounded by the chunk
        nonlocal scored, pending_pixels
        verdicts = detector.score([image for _, image in pending])
        for (i, image), verdict in zip(pending, verdicts, strict=True):
            records[i] = record(args.files[i], image.sha256, verdict)
            if heat_out is not None:
                bundle, dests = heat_out
                records[i]["heatmap"] = _write_heatmap(bundle, dests[i], image)
        scored += len(pending)
        pending.clear()
        pending_pixels = 0

    for path in args.files:
        try:
            data = read_file(path, detector.limits.max_bytes)
        except ImageError as exc:
            records.append(record(path, None, error=str(exc)))
            continue
        try:  # a file read but not decoded keeps its sha256, as in `scan`
            image = decode(data, detector.limits)
        except ImageError as exc:
            records.append(record(path, hashlib.sha256(data).hexdigest(), error=str(exc)))
            continue
        pending.append((len(records), image))
        records.append({})  # filled in once its chunk is scored
        pending_pixels += image.width * image.height
        if len(pending) >= CHUNK_IMAGES or pending_pixels >= CHUNK_PIXELS:
            flush()
    if pending:
        flush()
    if args.json:
        json.dump(records, sys.stdout, indent=2)
        print()
    else:
        for rec in records:
            if "error" in rec:
                print(f"{rec['path']}: unreadable: {rec['error']}", file=sys.stderr)
            elif "error" in rec.get("heatmap", {}):
                print(f"{rec['path']}: no heatmap: {rec['heatmap']['error']}", file=sys.stderr)
        if scored:
            _print_table([rec for rec in records if "verdict" in rec], args.verbose)
    return EXIT_OK if scored else EXIT_NONE_READABLE


def _heatmap_target(args: argparse.Namespace, detector: Any) -> tuple[Any, list[Path]]:
    """(model bundle, overlay path per file) for ``score --heatmap``."""
    model = next((m for m in detector.methods if m.kind.value == "model"), None)
    if model is None:
        raise CliError("--heatmap needs the model method (it maps the model's tiles)")
    out = Path(args.heatmap)
    single = out.suffix.lower() == ".png"
    if single and len(args.files) > 1:
        raise CliError("--heatmap FILE.png takes one image; give a folder for several")
    dests = [out] if single else _heatmap_names(out, args.files)
    inputs = {key for path in args.files if (key := file_identity(path))}
    for dest in dests:  # an overlay never replaces an image being scored
        if file_identity(dest) in inputs:
            raise CliError(
                f"--heatmap {dest} is an input image: it would be overwritten by its overlay"
            )
    try:
        (out.parent if single else out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--heatmap {out}: {exc}") from None
    return model.bundle, dests


def _heatmap_names(out: Path, files: list[str]) -> list[Path]:
    """``<name>.heatmap.png`` per file, ``<name>.2.heatmap.png`` (3, ...) for a later file of
    the same name (d1/x.jpg, d2/x.jpg): one run never overwrites its own overlays."""
    used: set[str] = set()
    dests = []
    for path in files:
        name, n = f"{Path(path).name}.heatmap.png", 1
        while name in used:
            n += 1
            name = f"{Path(path).name}.{n}.heatmap.png"
        used.add(name)
        dests.append(out / name)
    return dests


def _write_heatmap(bundle: Any, dest: Path, image: Any) -> dict:
    from detector.heatmap import overlay_png, tile_heatmap
    from detector.preprocess import too_small

    if too_small(image.pixels):
        return {"error": "too small for the model"}
    heat = tile_heatmap(bundle, image.pixels)
    try:
        dest.write_bytes(overlay_png(image.pixels, heat))
    except OSError as exc:
        raise CliError(f"--heatmap {dest}: {exc}") from None
    return {**heat.to_dict(), "overlay": str(dest)}


def _print_table(records: list[dict], verbose: bool) -> None:
    width = min(max(len(r["path"]) for r in records), 48)
    print(f"{'FILE':<{width}}  {'VERDICT':<10} {'P(AI)':>6}  EVIDENCE")
    for rec in records:
        v = rec["verdict"]
        path = rec["path"] if len(rec["path"]) <= width else "..." + rec["path"][-(width - 3) :]
        prob = "-" if v["probability"] is None else f"{v['probability']:.3f}"
        print(f"{path:<{width}}  {v['label']:<10} {prob:>6}  {v['summary']}")
        if verbose:
            _print_details(v)


def _print_details(v: dict) -> None:
    img = v["image"]
    print(f"    image: {img['format']} {img['width']}x{img['height']}, sha256 {img['sha256'][:16]}")
    for note in img["notes"]:
        print(f"    note: {note}")
    for name, res in v["methods"].items():
        prob = "abstains" if res["abstained"] else f"p={res['probability']:.3f}"
        flags = " decisive" if res["decisive"] else ""
        print(f"    {name:<20} {res['kind']:<9} {prob}{flags}  ({res['ms']:.1f} ms)")
        for ev in res["evidence"]:
            print(f"        [{ev['strength']}, {ev['supports']}] {ev['message']}")


# --- scan ---------------------------------------------------------------------------------


def _add_scan(sub: Any) -> None:
    p = sub.add_parser(
        "scan",
        help="score every image under a directory into a JSONL file (resumable)",
        description="Recursively score a directory. Each result is appended to OUT as one JSON "
        "line and flushed at once; re-running skips files whose path and sha256 are already in "
        "OUT, so an interrupted scan resumes where it stopped (with the same options and "
        "folder: OUT.scan.json records them, and a resume with others is refused). Exit code 0 "
        "when at least one file could be read (by this run or an earlier one), 2 when none "
        "could.",
    )
    p.add_argument(
        "directory", metavar="DIR", help="a folder (with --ray also a pyarrow.fs URI: s3://...)"
    )
    p.add_argument(
        "--out", required=True, metavar="OUT.jsonl", help="JSON lines; .parquet needs --ray"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray Data: decode on CPU tasks, the model on an actor pool (a GPU each when "
        "the cluster has GPUs); ADDRESS of a cluster (ray://... or auto), none: a local Ray "
        "(pip install 'synthdetect[ray]')",
    )
    p.add_argument("--ray-workers", type=positive_int, default=1, help="model actors (with --ray)")
    p.add_argument("--workers", type=positive_int, default=None, help="decoding threads")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--all-files", action="store_true", help="try every file, not only image extensions"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_detector_options(p)
    p.set_defaults(func=_cmd_scan)


def _cmd_scan(args: argparse.Namespace) -> int:
    from detector.scan import ScanError, scan_directory

    if args.ray is not None:
        return _cmd_scan_ray(args)
    if Path(args.out).suffix.lower() == ".parquet":  # JSON lines under that name would mislead
        raise CliError(f"--out {args.out}: Parquet output needs --ray; plain scan writes JSONL")
    root = Path(args.directory)
    if not root.is_dir():
        raise CliError(f"not a directory: {args.directory}")
    detector = _make_detector(args)
    try:
        stats = scan_directory(
            root,
            Path(args.out),
            detector,
            workers=args.workers,
            batch_size=args.batch_size,
            all_files=args.all_files,
            progress=not args.no_progress,
        )
    except ScanError as exc:
        raise CliError(str(exc)) from None
    return _scan_done(stats, args.directory)


def _scan_done(stats: Any, directory: str) -> int:
    """Print a scan's notes and summary; its exit code (2: no file could be read)."""
    for note in stats.notes:
        print(note, file=sys.stderr)
    print(stats.summary(), file=sys.stderr)
    if not stats.readable:
        print(f"synthdetect: no image could be read under {directory}", file=sys.stderr)
        return EXIT_NONE_READABLE
    return EXIT_OK


def _cmd_scan_ray(args: argparse.Namespace) -> int:
    from detector.scan import ScanError, scan_config
    from detector.scan_ray import DetectorSpec, resolved_source, scan_ray

    detector = _make_detector(args)  # checks every option here, before any worker starts
    _, options = _detector_spec(args)
    model = next((m for m in detector.methods if m.name == "model"), None)
    spec = DetectorSpec(
        tuple(detector.method_names),
        options,
        detector.limits,
        model.bundle.preprocess if model is not None else None,  # type: ignore[attr-defined]
    )
    try:
        stats = scan_ray(
            args.directory,
            Path(args.out),
            spec,
            address=args.ray or None,
            workers=args.ray_workers,
            batch_size=args.batch_size,
            all_files=args.all_files,
            config=scan_config(resolved_source(args.directory), detector),
        )
    except ScanError as exc:
        raise CliError(str(exc)) from None
    return _scan_done(stats, args.directory)


# --- memory -------------------------------------------------------------------------------


def _add_memory(sub: Any) -> None:
    p = sub.add_parser(
        "memory",
        help="the known-image memory: images reviewers confirmed as generated or camera",
        description="Images confirmed by a reviewer, stored by perceptual hash in a SQLite "
        "file (--db, or $SYNTHDETECT_MEMORY_DB). `score --memory-db` and the server use it: "
        "a match decides the verdict.",
    )
    msub = p.add_subparsers(title="memory commands", metavar="COMMAND")
    p.set_defaults(func=lambda a: p.print_help() or EXIT_USAGE)

    def db(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--db",
            metavar="PATH",
            default=os.environ.get("SYNTHDETECT_MEMORY_DB") or None,
            help="the memory database (default: $SYNTHDETECT_MEMORY_DB)",
        )

    a = msub.add_parser("add", help="record confirmed images")
    a.add_argument("files", nargs="+", metavar="FILE")
    a.add_argument("--label", required=True, choices=["generated", "camera"])
    a.add_argument(
        "--by",
        default=os.environ.get("USER") or "cli",
        help="who confirmed them (default: $USER)",
    )
    a.add_argument("--note", default="", help="a note kept with each record")
    a.add_argument("--source", default="cli", help="where the confirmation came from")
    db(a)
    a.set_defaults(func=_cmd_memory_add)

    f = msub.add_parser("find", help="look images up: which confirmed images they match")
    f.add_argument("files", nargs="+", metavar="FILE")
    f.add_argument("--json", action="store_true")
    db(f)
    f.set_defaults(func=_cmd_memory_find)

    e = msub.add_parser("export", help="write every record as JSON lines")
    e.add_argument("--out", default="-", metavar="OUT.jsonl", help="default: stdout")
    db(e)
    e.set_defaults(func=_cmd_memory_export)

    i = msub.add_parser("import", help="add the records of a JSONL export (all or none)")
    i.add_argument("file", metavar="IN.jsonl")
    db(i)
    i.set_defaults(func=_cmd_memory_import)

    st = msub.add_parser("stats", help="how many records, by label")
    db(st)
    st.set_defaults(func=_cmd_memory_stats)


def _open_memory(args: argparse.Namespace, create: bool = True) -> Any:
    from detector.memory import MemoryStore

    if not args.db:
        raise CliError("no memory database: pass --db PATH or set SYNTHDETECT_MEMORY_DB")
    try:
        if not create:
            require_database(args.db)
        return MemoryStore(args.db)
    except KnownImageError as exc:
        raise CliError(str(exc)) from None


def _hash_files(files: list[str], windows: bool = False) -> tuple[list[tuple[str, Any]], list[str]]:
    from detector.memory import hash_pixels

    good, bad = [], []
    for path in files:
        try:
            image = decode_file(path, DecodeLimits())
        except ImageError as exc:
            bad.append(f"{path}: unreadable: {exc}")
            continue
        good.append((path, hash_pixels(image.pixels, image.data, windows)))
    return good, bad


def _cmd_memory_add(args: argparse.Namespace) -> int:
    from detector.memory import plainness

    good, bad = _hash_files(args.files, windows=True)
    for line in bad:
        print(line, file=sys.stderr)
    if bad:  # nothing is recorded unless every file could be read
        raise CliError(f"{len(bad)} of {len(args.files)} files unreadable; nothing recorded")
    with _open_memory(args) as store:
        for path, hashes in good:
            try:
                rec, added = store.add_checked(hashes, args.label, args.by, args.note, args.source)
            except KnownImageError as exc:
                raise CliError(str(exc)) from None
            if not added:  # the latest decision about these pixels says this already
                print(
                    f"{path}: already recorded as {rec.label} (#{rec.id}, by {rec.confirmed_by} "
                    f"on {rec.confirmed_at[:10]}); nothing added"
                )
                continue
            plain = plainness(hashes)
            only_exact = (
                f"; too plain for near matches ({plain}): only this exact image will match"
                if plain
                else ""
            )
            print(f"{path}: recorded #{rec.id} as {rec.label} (pHash {rec.phash}{only_exact})")
    return EXIT_OK


def _cmd_memory_find(args: argparse.Namespace) -> int:
    good, bad = _hash_files(args.files)
    for line in bad:
        print(line, file=sys.stderr)
    out = []
    with _open_memory(args, create=False) as store:
        for path, hashes in good:
            matches = store.find(hashes)
            out.append({"path": path, "matches": [m.to_dict() for m in matches]})
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        for item in out:
            if not item["matches"]:
                print(f"{item['path']}: no match")
            for m in item["matches"]:
                how = (
                    "same image"
                    if m["exact"]
                    else f"{'a crop of it, ' if m['cropped'] else ''}distance {m['distance']}"
                )
                print(
                    f"{item['path']}: #{m['id']} {m['label']}, confirmed {m['confirmed_at']} "
                    f"by {m['confirmed_by']}, {how}"
                )
    return EXIT_OK if good else EXIT_NONE_READABLE


def _cmd_memory_export(args: argparse.Namespace) -> int:
    with _open_memory(args, create=False) as store:
        if args.out == "-":
            n = store.export_jsonl(sys.stdout)
        else:
            out = Path(args.out)
            if out.is_dir():
                raise CliError(f"--out {out} is a directory; give a file path")
            if out.exists() and not out.is_file():  # moving a file over it would replace it
                raise CliError(
                    f"--out {out} is not a regular file; give a file path, or - for stdout"
                )
            db = Path(args.db)  # the database and its write-ahead log are what is read
            check_not_an_input(
                out, db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")
            )
            try:  # a file of its own beside out (a fixed OUT.partial name replaced the user's)
                fd, tmp = staging_file(out)
            except OSError as exc:
                raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
            try:
                with open(fd, "w") as fh:
                    n = store.export_jsonl(fh)
                tmp.replace(out)
            except OSError as exc:
                raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
            finally:  # also when interrupted: nothing half-written is left beside out
                tmp.unlink(missing_ok=True)
    print(f"exported {n} records", file=sys.stderr)
    return EXIT_OK


def _cmd_memory_import(args: argparse.Namespace) -> int:
    from detector.memory import parse_jsonl

    try:
        lines = Path(args.file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {args.file}: {exc}") from None
    try:  # checked before the memory is opened: a bad file leaves no new, empty memory behind
        rows = parse_jsonl(lines, origin=args.file)
    except KnownImageError as exc:
        raise CliError(f"{exc}; nothing imported") from None
    db = Path(args.db) if args.db else None
    created = db is not None and not db.exists()
    try:
        with _open_memory(args) as store:
            result = store.import_rows(rows)
    except (KnownImageError, CliError) as exc:
        if created and db is not None:  # a memory this command created holds nothing: gone
            for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                leftover.unlink(missing_ok=True)
        if isinstance(exc, CliError):
            raise
        raise CliError(f"{exc}; nothing imported") from None
    repeats = f", {result.repeated} repeated within the file" if result.repeated else ""
    print(
        f"imported {result.added} records, skipped {result.present} already in the memory" + repeats
    )
    return EXIT_OK


def _cmd_memory_stats(args: argparse.Namespace) -> int:
    with _open_memory(args, create=False) as store:
        print(json.dumps(store.stats(), indent=2))
    return EXIT_OK


# --- methods ------------------------------------------------------------------------------


def _add_methods(sub: Any) -> None:
    p = sub.add_parser("methods", help="list the registered detection methods")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_methods)


def _cmd_methods(args: argparse.Namespace) -> int:
    from detector.methods import METHODS

    rows = [METHODS.get(name).describe() for name in METHODS.names()]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return EXIT_OK
    for r in rows:
        state = "" if r["available"] else f"  [unavailable: {r['reason']}]"
        opt_in = "" if r["in_default"] else "  [opt-in: not in the default verdict]"
        print(f"{r['name']:<20} {r['kind']:<9} {r['description']}{opt_in}{state}")
    return EXIT_OK


# --- plugins ------------------------------------------------------------------------------


def _load_plugins(sub: Any) -> None:
    """Subcommands contributed by packages (entry-point group ``synthdetect.commands``).

    Each entry point is a function ``register(subparsers)``. synthdetect's own (train, serve,
    bench) load first, then the other packages' in name order, and a command of another package
    that has a built-in command's name is refused: a plugin named before ``serving`` replaced
    ``serve``. A plugin that fails to load is reported on stderr in one line and skipped,
    leaving no method it registered before it failed, so one broken optional dependency never
    breaks scoring.
    """
    from detector.methods import METHODS

    found = _plugin_entry_points()
    own = sorted((ep for ep in found if _own_entry_point(ep)), key=lambda e: e.name)
    others = sorted((ep for ep in found if not _own_entry_point(ep)), key=lambda e: e.name)
    for ep in own:
        _load_plugin(ep, sub, METHODS)
    builtin = set(sub.choices)  # aliases included
    for ep in others:
        _load_plugin(ep, _ThirdPartyCommands(sub, builtin, ep.name), METHODS)


def _load_plugin(ep: metadata.EntryPoint, sub: Any, methods: Any) -> None:
    try:
        with methods.atomic():  # what it registered before it failed is undone
            ep.load()(sub)
    except _CommandRefused as exc:
        print(f"synthdetect: {exc}", file=sys.stderr)
    except Exception as exc:
        print(f"synthdetect: command {ep.name!r} unavailable: {exc}", file=sys.stderr)


def _own_entry_point(ep: metadata.EntryPoint) -> bool:
    """Declared by synthdetect itself (installed, or read from its pyproject.toml)."""
    dist = getattr(ep, "dist", None)
    return dist is None or (dist.name or "").lower() == "synthdetect"


class _CommandRefused(Exception):
    """A plugin's command has a built-in command's name."""


class _ThirdPartyCommands:
    """The subparsers as another package's plugin gets them: a built-in name is refused."""

    def __init__(self, sub: Any, builtin: set[str], plugin: str) -> None:
        self._sub, self._builtin, self._plugin = sub, builtin, plugin

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        clash = sorted({name, *kwargs.get("aliases", ())} & self._builtin)
        if clash:
            raise _CommandRefused(
                f"command {clash[0]!r} of plugin {self._plugin!r} refused: a built-in "
                "command has that name"
            )
        return self._sub.add_parser(name, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sub, name)


def _plugin_entry_points() -> list[metadata.EntryPoint]:
    """The installed entry points; from a source tree that was never installed (``python -m
    detector.cli`` with the checkout on the path, as on a bare GPU machine) the ones its
    ``pyproject.toml`` declares, which otherwise would not exist: no train, serve or bench."""
    group = "synthdetect.commands"
    installed = list(metadata.entry_points(group=group))
    try:
        metadata.distribution("synthdetect")
        return installed
    except metadata.PackageNotFoundError:
        pass
    import re
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:  # the table's `name = "module:function"` lines (tomllib is newer than Python 3.10)
        text = pyproject.read_text()
    except OSError:
        return installed
    table = re.search(r'^\[project\.entry-points\."synthdetect\.commands"\]\n(.*?)(?=^\[|\Z)',
                      text, re.M | re.S)  # fmt: skip
    declared = (
        dict(re.findall(r'^(\w+)\s*=\s*"([\w.]+:\w+)"', table.group(1), re.M)) if table else {}
    )
    own = [metadata.EntryPoint(name, value, group) for name, value in declared.items()]
    return [*own, *(ep for ep in installed if ep.name not in declared)]


if __name__ == "__main__":
    sys.exit(main())
