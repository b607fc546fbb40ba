"""``synthdetect scan --ray``: bulk scans of folders or object stores on Ray Data.

Two stages, as on a real cluster:

1. **CPU tasks** read each file (a local folder, or any ``pyarrow.fs`` URI such as ``s3://``
   where the user has credentials), hash it, skip what the output already holds, decode it
   (``detector.image.decode``, the same limits), run every per-image method (metadata,
   artifact, watermark, memory) and cut the model's tiles (the one preprocessing);
2. **an actor pool** holds the model (one engine per actor; a GPU per actor when the cluster
   has GPUs) and scores the tiles of many images per engine call, then fuses each image's
   results into its verdict.

The driver streams the records out as they come: JSON lines (``.jsonl``: the same records as
``scan``) or Parquet (``.parquet``: path, sha256, label, probability, error and the verdict as
JSON; the records go to ``OUT.partial.jsonl`` as they come and into the Parquet file at the end,
so an interrupted run loses nothing either way). A re-run skips every file whose path and
sha256 the output holds (a degraded verdict is scored again), and refuses other settings than
those ``OUT.scan.json`` records (``detector.scan.check_settings``); a file that fails is a
row with its error, never a failed job. Stage 1 hands stage 2 its results pickled: both are
this module's own workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from detector.image import DecodeLimits, ImageError, decode, read_file
from detector.methods.model import model_tiles
from detector.preprocess import PreprocessConfig
from detector.scan import (
    IMAGE_EXTENSIONS,
    LINK_NOTE,
    ScanError,
    ScanStats,
    _load_done,
    _settings_files,
    _walk,
    check_settings,
    decode_failure_key,
    done_key,
    failure_key,
    open_results,
    scan_config,
)

__all__ = ["DetectorSpec", "resolved_source", "scan_ray"]


@dataclass(frozen=True)
class DetectorSpec:
    """What every worker needs to build the same detector: method names and options."""

    methods: tuple[str, ...]
    options: dict[str, Any]
    limits: DecodeLimits
    tiles: PreprocessConfig | None = None  # the model's preprocessing (None: no model method)


# --- listing -------------------------------------------------------------------------------


def _is_uri(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def _list(source: str, out: Path, all_files: bool) -> list[dict]:
    """Rows {"rel", "path", "error"} of every file to scan."""
    if not _is_uri(source):
        root = Path(source.removeprefix("file://"))
        if not root.is_dir():
            raise ScanError(f"not a directory: {source}")
        return [
            {"rel": e.rel, "path": str(e.path) if e.path else "", "error": e.error or ""}
            for e in _walk(root, (out, _partial(out), _tmp(out), *_settings_files(out)), all_files)
        ]
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(source)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:
        raise ScanError(f"cannot list {source}: {exc}") from None
    rows = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File:
            continue
        if not all_files and Path(info.path).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rel = info.path[len(root) :].lstrip("/")
        rows.append({"rel": rel, "path": info.path, "error": ""})
    return rows


def resolved_source(source: str) -> str:
    """The tree a scan's settings record: a local folder resolved, a URI as given."""
    return source if _is_uri(source) else str(Path(source.removeprefix("file://")).resolve())


def _reader(source: str):
    """A function path -> bytes for the source (built in each worker)."""
    if not _is_uri(source):
        return lambda path, limit: read_file(path, limit)
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(source)

    def read(path: str, limit: int) -> bytes:
        try:
            with fs.open_input_stream(path) as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise ImageError(f"cannot read file ({exc})") from None
        if len(data) > limit:
            raise ImageError(f"file too large: more than {limit} bytes")
        return data

    return read


# --- stage 1: read, decode, per-image methods, tiles (CPU tasks) ----------------------------


class _Prepare:
    """Stage 1 (stateless apart from the methods it builds once per worker process)."""

    def __init__(self, source: str, spec: DetectorSpec, done: dict[str, str]) -> None:
        from detector.methods import create_methods

        self.source = source
        self.read = _reader(source)
        self.spec = spec
        # every method but the model, which runs in stage 2: here only its tiles are cut
        self.others = create_methods([m for m in spec.methods if m != "model"], **spec.options)
        self.done = done

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {"rel": [], "sha256": [], "status": [], "payload": []}
        for rel, path, error in zip(batch["rel"], batch["path"], batch["error"], strict=True):
            sha = None
            try:
                if error:
                    raise ImageError(error)
                data = self.read(path, self.spec.limits.max_bytes)
            except ImageError as exc:  # never read: keyed by what it looked like
                key = failure_key(path if path and not _is_uri(self.source) else None, str(exc))
                status = "skip_failure" if self.done.get(rel) == key else "error"
                payload = json.dumps({"error": str(exc), "stat": key}).encode()
            else:
                sha = hashlib.sha256(data).hexdigest()
                status, payload = self._prepare(rel, sha, data)
            out["rel"].append(rel)
            out["sha256"].append(sha or "")
            out["status"].append(status)
            out["payload"].append(payload)
        return out

    def _prepare(self, rel: str, sha: str, data: bytes) -> tuple[str, bytes]:
        """(status, payload) of a file that was read: skipped, prepared, or undecodable."""
        if self.done.get(rel) == sha:
            return "skip", b""
        from detector.pipeline import image_info

        try:
            start = time.perf_counter()
            image = decode(data, self.spec.limits)
            decode_ms = (time.perf_counter() - start) * 1000
            results = [m.score([image])[0] for m in self.others]
            tiles = model_tiles([image], self.spec.tiles)[0] if self.spec.tiles else None
        except ImageError as exc:
            if self.done.get(rel) == decode_failure_key(sha, str(exc)):
                return "skip_failure", b""  # failed the same way before
            return "error", json.dumps({"error": str(exc)}).encode()
        return "ok", pickle.dumps((image_info(image), results, tiles, decode_ms))


# --- stage 2: the model on many images' tiles, then fusion (actor pool) -------------------


class _Score:
    def __init__(self, spec: DetectorSpec) -> None:
        from detector.methods import create_methods
        from detector.pipeline import method_bands

        methods = create_methods(list(spec.methods), **spec.options)
        self.model = next((m for m in methods if m.name == "model"), None)
        self.bands = method_bands(methods)  # as Detector: those of the method that scored

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from detector.pipeline import fuse_results

        rows = list(
            zip(batch["rel"], batch["sha256"], batch["status"], batch["payload"], strict=True)
        )
        prepared = {i: pickle.loads(p) for i, (_, _, s, p) in enumerate(rows) if s == "ok"}
        model_results = {}
        if self.model is not None and prepared:
            order = list(prepared)
            scored = self.model.score_tiles([prepared[i][2] for i in order])
            model_results = dict(zip(order, scored, strict=True))
        out: dict[str, list] = {"rel": [], "sha256": [], "status": [], "record": []}
        for i, (rel, sha, status, payload) in enumerate(rows):
            if status == "ok":
                info, results, _, decode_ms = prepared[i]
                if i in model_results:
                    results = [*results, model_results[i]]
                verdict = fuse_results(results, self.bands)
                timings = {"decode": decode_ms, **{r.method: r.seconds * 1000 for r in results}}
                verdict = replace(verdict, image=info, timings_ms=timings)
                record = {"path": rel, "sha256": sha, "verdict": verdict.to_dict()}
            elif status == "error":
                failure = json.loads(payload)
                record = {"path": rel, "sha256": sha or None, "error": failure["error"]}
                if failure.get("stat"):
                    record["stat"] = failure["stat"]
            else:
                record = None
            out["rel"].append(rel)
            out["sha256"].append(sha)
            out["status"].append(status)
            out["record"].append(json.dumps(record) if record else "")
        return out


# --- the driver ----------------------------------------------------------------------------


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def _target(out: Path) -> Path:
    """Where the records stream: OUT itself (.jsonl), or its partial file (.parquet)."""
    return out if out.suffix == ".jsonl" else _partial(out)


def _tmp(out: Path) -> Path:
    return out.with_name(out.name + ".tmp")


def _load_done_any(out: Path) -> tuple[dict[str, str], list[dict]]:
    """{path: sha256} of finished results, and (Parquet) the rows to keep: the Parquet file's
    and those an interrupted run left in its partial file."""
    if out.suffix != ".parquet":
        return _load_done(out), []
    rows: list[dict] = []
    if out.exists():
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(out)
        except Exception as exc:  # any unreadable file: not ours to overwrite
            raise ScanError(
                f"{out} is not a readable Parquet file ({exc}); choose another --out"
            ) from None
        missing = sorted(set(PARQUET_TYPES) - {"stat"} - set(table.column_names))
        if missing:  # someone else's table: it was merged into, and lost the verdicts
            raise ScanError(
                f"{out} is a Parquet file without the columns of scan results {missing}; "
                "choose another --out"
            )
        rows = [{k: r.get(k) for k in PARQUET_TYPES} for r in table.to_pylist()]
    partial = _partial(out)
    if partial.exists():
        _load_done(partial)  # checks it and repairs a line cut off by a crash
        with open(partial, "rb") as fh:  # lines end at b"\n" alone, as _load_done reads them
            recent = [_parquet_row(json.loads(line)) for line in fh if line.strip()]
        seen = {r["path"] for r in recent}
        rows = [r for r in rows if r["path"] not in seen] + recent
    # keyed as in JSONL (``done_key``): an unchanged unreadable file is not reported again on
    # every resume, an undecodable one is decoded again (a limit may have been raised)
    done = {r["path"]: done_key(r) for r in rows}
    return {p: key for p, key in done.items() if key}, rows


# A Parquet result's columns (written with this schema: from rows alone, pyarrow takes its
# columns from the first row, and a kept row of other columns dropped the verdicts); "stat"
# came later, so an older result may lack it
PARQUET_TYPES = {"path": "string", "sha256": "string", "label": "string",
                 "probability": "float64", "error": "string", "verdict": "string",
                 "stat": "string"}  # fmt: skip


def _parquet_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in PARQUET_TYPES.items()])


def _parquet_row(rec: dict) -> dict:
    verdict = rec.get("verdict")
    return {
        "path": rec["path"],
        "sha256": rec.get("sha256") or "",
        "label": verdict["label"] if verdict else None,
        "probability": verdict["probability"] if verdict else None,
        "error": rec.get("error"),
        "verdict": json.dumps(verdict) if verdict else None,
        "stat": rec.get("stat"),  # an unreadable file's size and time: resumed, not retried
    }


def scan_ray(
    source: str,
    out: Path,
    spec: DetectorSpec,
    *,
    address: str | None = None,
    workers: int = 1,
    batch_size: int = 32,
    all_files: bool = False,
    log=print,
    config: dict[str, Any] | None = None,
) -> ScanStats:
    """Scan ``source`` on Ray (``address``: a cluster's, or None for a local Ray on this
    machine) with ``workers`` model actors; write ``out`` (.jsonl or .parquet). ``config``:
    the settings recorded beside ``out`` and checked on a resume (``detector.scan.scan_config``
    of the detector ``spec`` builds; None: built here, which loads the model once)."""
    try:
        import ray
        import ray.data  # noqa: F401 - whether Ray is here, before anything is opened
    except ImportError:
        raise ScanError("scan --ray needs Ray: pip install 'synthdetect[ray]'") from None
    if out.suffix not in (".jsonl", ".parquet"):
        raise ScanError(f"--out must end in .jsonl or .parquet with --ray, got {out.name}")
    target = _target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScanError(f"cannot write {out}: {exc.strerror or exc}") from None
    fh = open_results(target)  # locked: a second scan of the same --out is refused
    try:
        return _scan_locked(source, out, spec, fh, address, workers, batch_size, all_files, config)
    finally:
        fh.close()
        if target != out and target.exists() and target.stat().st_size == 0:
            target.unlink()  # the partial file this run opened and never wrote


def _scan_locked(
    source, out, spec, fh, address, workers, batch_size, all_files, config
) -> ScanStats:
    import ray
    import ray.data

    done, kept = _load_done_any(out)
    rows = _list(source, out, all_files)  # a source that is no folder: refused, nothing kept
    if config is None:
        from detector.pipeline import Detector

        detector = Detector(list(spec.methods), limits=spec.limits, **spec.options)
        config = scan_config(resolved_source(source), detector)
    note = check_settings(out, config, bool(done or kept))
    stats = ScanStats(files=len(rows), notes=[note] if note else [])
    if not rows:
        return stats
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            ignore_reinit_error=True,
            **({} if address else {"num_cpus": os.cpu_count() or 1}),
        )
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 64)))
        ds = ds.map_batches(
            _Prepare,
            fn_constructor_args=(source, spec, done),
            batch_size=8,
            concurrency=(1, max(1, int(ray.cluster_resources().get("CPU", 1)))),
            num_cpus=1,
        )
        ds = ds.map_batches(
            _Score,
            fn_constructor_args=(spec,),
            batch_size=batch_size,
            concurrency=workers,
            num_cpus=0 if gpus else 1,
            num_gpus=1 if gpus else 0,
        )
        records = (r for r in ds.iter_rows())
        _write(out, fh, records, kept, stats)
    finally:
        if started_here:
            ray.shutdown()
    return stats


def _write(
    out: Path, fh: IO[str], rows: Iterator[dict], kept: list[dict], stats: ScanStats
) -> None:
    """Stream records to ``fh``: OUT (.jsonl), or OUT.partial.jsonl, then merged into OUT
    (.parquet)."""
    target = _target(out)
    fresh: list[dict] = []
    try:
        for row in rows:
            if row["status"].startswith("skip"):
                stats.skipped += 1
                stats.skipped_failures += row["status"] == "skip_failure"
                continue
            rec = json.loads(row["record"])
            if "error" in rec:
                link = rec["error"] == LINK_NOTE
                stats.count_error(
                    "links" if link else "unreadable" if "stat" in rec else "undecodable"
                )
            else:
                stats.labels[rec["verdict"]["label"]] += 1
                stats.degraded += bool(rec["verdict"].get("degraded"))
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            fresh.append(_parquet_row(rec))
    finally:
        fh.flush()
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        new_paths = {r["path"] for r in fresh}
        merged = [r for r in kept if r["path"] not in new_paths] + fresh
        if merged:
            tmp = _tmp(out)
            pq.write_table(pa.Table.from_pylist(merged, schema=_parquet_schema()), tmp)
            os.replace(tmp, out)
        target.unlink(missing_ok=True)
