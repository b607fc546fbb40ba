"""Resumable, parallel scoring of a directory tree into a JSONL file.

Reading, hashing and decoding run in a thread pool (Pillow and zlib release the GIL while they
decompress); methods run on batches in the calling thread. Every finished result is written as
one line and flushed immediately, and the file is fsynced every few seconds and at the end, so a
crash or Ctrl-C loses no finished result. A re-run skips every file whose path and sha256 are
already in the output; a changed file is scored again and its new line appended (readers take
the last line per path), and so is a degraded verdict (a method failed on its batch: a CUDA
out-of-memory, an engine error), which is retried on every re-run until it is whole. The scan's
settings (root, methods, model, limits, version) are kept beside the output in
``OUT.scan.json``; a re-run with other settings is refused, never mixed into the same file.

Only regular files are read (FIFOs, devices and sockets are refused without blocking), and
every bad entry (unreadable file or folder, symlink loop, oversized file) is one error line,
never an abort; an entry that failed and has not changed since is not reported again. Paths
that are not valid UTF-8 are written with their undecodable bytes escaped (``\\xNN``).
Hidden files and folders (a leading dot, ``__MACOSX/``) are not scanned, ``--all-files`` or not.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from detector.image import (
    SUPPORTED_FORMATS,
    DecodedImage,
    DecodeLimits,
    ImageError,
    decode,
    file_identity,
    read_file,
)
from detector.pipeline import CHUNK_PIXELS, Detector

__all__ = [
    "IMAGE_EXTENSIONS",
    "ScanError",
    "ScanStats",
    "check_settings",
    "done_key",
    "is_hidden",
    "open_results",
    "scan_config",
    "scan_directory",
    "settings_path",
]

# The phone formats' names, taken only where this installation decodes them (detector.image)
_PHONE_EXTENSIONS = {"AVIF": (".avif",), "HEIF": (".heic", ".heif")}
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".gif"}
    | {ext for fmt in SUPPORTED_FORMATS for ext in _PHONE_EXTENSIONS.get(fmt, ())}
)
_FSYNC_EVERY_S = 2.0
# How every result line starts (the writer puts "path" first): what a cut-off line may be.
_RECORD_START = b'{"path": '
# The error line of a symlinked folder reached already under another path (a note)
LINK_NOTE = "links to a folder scanned already: not again"


def is_hidden(name: str) -> bool:
    """A name never holding images to read: hidden (``.ipynb_checkpoints/``, ``.DS_Store``,
    macOS's ``._IMG_0001.JPG`` resource forks) or the ``__MACOSX/`` folder of a Mac's zip."""
    return name.startswith(".") or name == "__MACOSX"


class ScanError(Exception):
    """The scan cannot start (unwritable output, corrupt results file)."""


@dataclass
class ScanStats:
    """What one scan did. ``errors`` counts every error line written, split into
    ``unreadable`` (a file or folder that could not be read or listed), ``undecodable`` (read,
    but not an image this decoder takes: a text file under ``--all-files``, a corrupt or
    oversized image) and ``links`` (a symlinked folder scanned already under another path: a
    note, not a failure). ``skipped_failures`` of the ``skipped`` are failures that have not
    changed since the last run; ``degraded`` of the scored verdicts lack a failed method."""

    files: int = 0
    skipped: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    unreadable: int = 0
    undecodable: int = 0
    links: int = 0
    degraded: int = 0
    skipped_failures: int = 0
    notes: list[str] = field(default_factory=list)  # for the user, once (e.g. an old file)

    @property
    def readable(self) -> bool:
        """Whether any file was scored, now or by an earlier run (``scan``'s exit code)."""
        return sum(self.labels.values()) + self.skipped - self.skipped_failures > 0

    def count_error(self, kind: str) -> None:
        """One error line of ``kind`` ("unreadable", "undecodable" or "links")."""
        self.errors += 1
        setattr(self, kind, getattr(self, kind) + 1)

    def summary(self) -> str:
        scored = sum(self.labels.values())
        parts = ", ".join(f"{n} {label}" for label, n in sorted(self.labels.items()))
        if self.degraded:
            parts += f"; {self.degraded} degraded (a method failed: retried on the next run)"
        links = (
            f", {self.links} folder link{'s' * (self.links != 1)} to a folder scanned "
            "already (not again)"
            if self.links
            else ""
        )
        return (
            f"scanned {self.files} files: {scored} scored ({parts or 'none'}), "
            f"{self.unreadable} unreadable, {self.undecodable} undecodable{links}, "
            f"{self.skipped} already in the results"
        )


@dataclass(frozen=True)
class _Entry:
    rel: str  # the path as written to the results (valid UTF-8)
    path: Path | None  # None: an entry that could not be listed
    error: str | None = None
    link: bool = False  # a note: a symlinked folder reached already under another path


@dataclass
class _Loaded:
    rel: str
    sha256: str | None
    stat: str | None = None  # for an entry that could not be read: what it looked like
    image: DecodedImage | None = None
    error: str | None = None
    skip: bool = False
    kind: str = "unreadable"  # of an error: "unreadable", "undecodable" or "links"
    failed_before: bool = False  # skipped: an unchanged failure, not an earlier result


def scan_directory(
    root: Path,
    out: Path,
    detector: Detector,
    *,
    workers: int | None = None,
    batch_size: int = 32,
    all_files: bool = False,
    progress: bool = True,
) -> ScanStats:
    from tqdm import tqdm

    fh = open_results(out)  # locked: a second scan of the same --out is refused
    stats = ScanStats()
    try:
        done = _load_done(out)
        note = check_settings(out, scan_config(str(root.resolve()), detector), bool(done))
        files = list(_walk(root, (out, *_settings_files(out)), all_files))
    except BaseException:
        fh.close()
        raise
    stats.files = len(files)
    stats.notes += [note] if note else []
    workers = workers or min(8, os.cpu_count() or 1)
    writer = _Writer(fh)
    bar = tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr)
    batch = _Batch()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
            loads = _bounded_map(
                pool,
                lambda entry: _load(entry, done, detector),
                files,
                workers * 4,
                size=_pixels,
                budget=CHUNK_PIXELS,
                held=lambda: batch.pixels,
                first=workers,
            )
            for item in loads:
                if item.skip:
                    stats.skipped += 1
                    stats.skipped_failures += item.failed_before
                    bar.update(1)
                elif item.image is None:
                    stats.count_error(item.kind)
                    rec = {"path": item.rel, "sha256": item.sha256, "error": item.error}
                    writer.write(rec if item.stat is None else {**rec, "stat": item.stat})
                    bar.update(1)
                else:
                    batch.add(item)
                    # Detector.score scores at most CHUNK_PIXELS at once: a batch of large
                    # images is flushed at that size, not held until it has batch_size of them
                    if len(batch.items) >= batch_size or batch.pixels >= CHUNK_PIXELS:
                        _flush_batch(batch, detector, writer, stats, bar)
            _flush_batch(batch, detector, writer, stats, bar)
    finally:
        writer.close()
        bar.close()
    return stats


def _pixels(item: _Loaded) -> int:
    return item.image.width * item.image.height if item.image is not None else 0


@dataclass
class _Batch:
    """The decoded images waiting to be scored, and their pixels."""

    items: list[_Loaded] = field(default_factory=list)
    pixels: int = 0

    def add(self, item: _Loaded) -> None:
        self.items.append(item)
        self.pixels += _pixels(item)


def _flush_batch(batch: _Batch, detector: Detector, writer: _Writer, stats, bar) -> None:
    if not batch.items:
        return
    verdicts = detector.score([item.image for item in batch.items])  # type: ignore[misc]
    for item, verdict in zip(batch.items, verdicts, strict=True):
        writer.write({"path": item.rel, "sha256": item.sha256, "verdict": verdict.to_dict()})
        stats.labels[verdict.label] += 1
        stats.degraded += bool(verdict.degraded)
    bar.update(len(batch.items))
    batch.items.clear()
    batch.pixels = 0


# --- the scan's settings, beside its output ------------------------------------------------


def settings_path(out: Path) -> Path:
    """Where a scan keeps the settings its results were made with: ``OUT.scan.json`` (for
    ``.jsonl`` and ``.parquet`` output alike)."""
    return out.with_name(out.name + ".scan.json")


def _settings_files(out: Path) -> tuple[Path, Path]:
    """The settings file and the temporary file it is written through (never scanned)."""
    path = settings_path(out)
    return path, path.with_name(path.name + ".tmp")


def scan_config(root: str, detector: Detector) -> dict[str, Any]:
    """What makes one scan's verdicts comparable with another's: the tree (``root``, resolved,
    or a URI), the methods, the models they load (name, graph sha256 and threshold; the
    artifact model's parameters hashed), the options that change a verdict, the decoding
    limits and the synthdetect version. A flat dict, so that a difference names its field."""
    from dataclasses import asdict

    from detector import __version__

    config: dict[str, Any] = {
        "root": root,
        "methods": list(detector.method_names),
        "include_prompt": False,
        "model": None,
        "model_sha256": None,
        "model_threshold": None,
        "max_tiles": None,
        "artifact_model_sha256": None,
    }
    for method in detector.methods:
        if hasattr(method, "include_prompt"):
            config["include_prompt"] = bool(method.include_prompt)
        if method.name == "model":
            bundle = method.bundle  # type: ignore[attr-defined]
            config["model"] = bundle.name
            config["model_sha256"] = bundle.meta.get("onnx_sha256")
            config["model_threshold"] = float(method.threshold)  # type: ignore[attr-defined]
            config["max_tiles"] = bundle.preprocess.max_tiles
        elif method.name == "artifact":
            params = [method.mean, method.std, method.weights]  # type: ignore[attr-defined]
            digest = hashlib.sha256(b"".join(p.tobytes() for p in params))
            digest.update(repr(method.bias).encode())  # type: ignore[attr-defined]
            config["artifact_model_sha256"] = digest.hexdigest()
    config.update(asdict(detector.limits))
    config["synthdetect"] = __version__
    return config


# Recorded, not compared: a decoding limit decides whether a file is scored, never its verdict,
# and raising one is how files refused by it are scored on a resume
_LIMIT_FIELDS = frozenset(f.name for f in fields(DecodeLimits))


def check_settings(out: Path, config: dict[str, Any], has_results: bool) -> str | None:
    """Refuse (``ScanError``) to add results made with ``config`` to ``out`` when the settings
    file beside it records others, naming each field that differs; otherwise record
    ``config`` there (atomically; its decoding limits are recorded, not compared) and return
    None, or a note for a results file written before settings were kept (it resumes
    unchecked). ``has_results``: whether ``out`` holds any
    result; without any, earlier settings (of results deleted since) are replaced."""
    path, tmp = _settings_files(out)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        raise ScanError(f"cannot read {path}: {exc.strerror or exc}") from None
    note = None
    if raw is not None and has_results:
        try:
            old = json.loads(raw)
        except ValueError:
            old = None
        if not isinstance(old, dict):
            raise ScanError(
                f"{path} is not a synthdetect scan's settings file; delete it, or choose "
                "another --out"
            )
        differ = [
            f"{key}: {old.get(key)!r} there, {config.get(key)!r} now"
            for key in sorted((config.keys() | old.keys()) - _LIMIT_FIELDS)
            if old.get(key) != config.get(key)
        ]
        if differ:
            raise ScanError(
                f"{out} holds results of a scan with other settings ({'; '.join(differ)}); "
                f"scan with the same options and folder, choose another --out, or delete {out} "
                "to score everything again"
            )
    if raw is None and has_results:
        note = (
            f"note: {out} was written before scans recorded their settings: resuming it "
            f"without checking them (from now on they are kept in {path.name})"
        )
    try:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ScanError(f"cannot write {path}: {exc.strerror or exc}") from None
    return note


def open_results(out: Path) -> IO[str]:
    """``out`` opened for appending results, created if absent, and locked for this process
    alone (``ScanError`` if another scan holds it: two scans appending to one file scored
    everything twice). Not a regular file (a FIFO, a device): refused before it is opened."""
    try:
        st = out.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ScanError(f"cannot read {out}: {exc.strerror or exc}") from None
    else:
        if not stat.S_ISREG(st.st_mode):
            raise ScanError(f"{out} is not a regular file; --out takes a file path")
    try:
        fh = open(out, "a", encoding="utf-8")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise ScanError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ScanError(
            f"{out} is being written by another scan; wait for it or choose another --out"
        ) from None
    return fh


class _Writer:
    """Appends JSON lines; flushes each line, fsyncs at most every few seconds."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.last_sync = time.monotonic()

    def write(self, rec: dict[str, Any]) -> None:
        self.fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.fh.flush()
        if time.monotonic() - self.last_sync > _FSYNC_EVERY_S:
            os.fsync(self.fh.fileno())
            self.last_sync = time.monotonic()

    def close(self) -> None:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        finally:
            self.fh.close()


def _load(entry: _Entry, done: dict[str, str], detector: Detector) -> _Loaded:
    if entry.path is None:
        loaded = _failed(entry, done, None, entry.error or "cannot list")
        loaded.kind = "links" if entry.link else "unreadable"
        return loaded
    try:
        data = read_file(entry.path, detector.limits.max_bytes)
    except ImageError as exc:
        return _failed(entry, done, entry.path, str(exc))
    sha = hashlib.sha256(data).hexdigest()
    if done.get(entry.rel) == sha:
        return _Loaded(entry.rel, sha, skip=True)
    try:
        return _Loaded(entry.rel, sha, image=decode(data, detector.limits))
    except ImageError as exc:
        if done.get(entry.rel) == decode_failure_key(sha, str(exc)):  # failed the same way
            return _Loaded(entry.rel, sha, skip=True, failed_before=True)
        return _Loaded(entry.rel, sha, error=str(exc), kind="undecodable")


def decode_failure_key(sha256: str, error: str) -> str:
    """A file read but not decoded is known by its bytes and the error: decoded again on a
    re-run, it is reported again only if it now fails differently (or decodes, once a limit
    is raised)."""
    return f"{sha256}|{error}"


def done_key(rec: dict[str, Any]) -> str | None:
    """What a result record says was done with its path, to compare on a re-run: the sha256 of
    a scored file, ``decode_failure_key`` of an undecodable one, ``failure_key`` (its stat and
    error) of an unreadable one; None for a record that is no result. A degraded verdict (a
    method failed on its batch: out of memory, an engine error) matches no file, so that the
    file is scored again on the next run (its new line is the last one for its path).
    ``rec`` is a JSON record or a Parquet row (whose verdict is JSON text)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
        return None
    sha, error, verdict = rec.get("sha256"), rec.get("error"), rec.get("verdict")
    if verdict is not None and sha:
        if isinstance(verdict, str | bytes) and b'"degraded": true' in _utf8(verdict):
            verdict = json.loads(verdict)  # Parquet: decoded only where it may be degraded
        return (
            f"{sha}|degraded" if isinstance(verdict, dict) and verdict.get("degraded") else str(sha)
        )
    if error is None:
        return None
    if rec.get("stat"):
        return str(rec["stat"])
    return decode_failure_key(str(sha), str(error)) if sha else None


def _utf8(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")


def failure_key(path: str | Path | None, error: str) -> str:
    """What an entry that could not be read looked like (its stat and the error): the same key
    on a re-run means nothing changed, so it is not reported again."""
    try:
        info = os.stat(path) if path else None
        seen = f"{info.st_mode}:{info.st_size}:{info.st_mtime_ns}" if info else "-"
    except OSError as exc:
        seen = f"stat failed: {exc.strerror or exc}"
    return f"{seen}|{error}"


def _failed(entry: _Entry, done: dict[str, str], path: Path | None, error: str) -> _Loaded:
    """An entry that could not be read: reported once, until it changes (its stat or error)."""
    key = failure_key(path, error)
    if done.get(entry.rel) == key:
        return _Loaded(entry.rel, None, skip=True, failed_before=True)
    return _Loaded(entry.rel, None, stat=key, error=error)


def _bounded_map(
    pool: ThreadPoolExecutor,
    fn: Callable[[Any], Any],
    items: list,
    window: int,
    *,
    size: Callable[[Any], int] | None = None,
    budget: int = 0,
    held: Callable[[], int] = lambda: 0,
    first: int | None = None,
) -> Iterator[Any]:
    """Like ``pool.map`` but with at most ``window`` tasks in flight (bounded memory). With
    ``size``, no task is added either while what the caller still ``held`` of the results
    taken, the results waiting to be taken, and the tasks not finished counted at the mean
    size of the results so far, come to ``budget`` (decoded images: a count alone let 64 of
    12 MB each wait); until a first result gives a size, at most ``first`` tasks run."""
    pending: deque[Future] = deque()
    it = iter(items)
    got = taken = total = 0  # results yielded; of them, sized, and their total size

    def room() -> bool:
        if not pending:
            return True
        if len(pending) >= (window if got or first is None else first):
            return False
        if size is None:
            return True
        mean = total / taken if taken else 0
        ahead = sum(size(f.result()) if f.done() else mean for f in pending)
        return held() + ahead < budget

    while True:
        while room():
            item = next(it, _END)
            if item is _END:
                break
            pending.append(pool.submit(fn, item))
        if not pending:
            return
        result = pending.popleft().result()
        got += 1
        if size is not None:
            taken += 1
            total += size(result)
        yield result


_END = object()


def _display(path: str) -> str:
    """A path that can be written as UTF-8, one per file: undecodable bytes (os.walk keeps
    them as surrogates) become ``\\xNN`` and a backslash of the name itself ``\\\\``, so
    that a file named with the byte 0xff and one named with the text ``\\xff`` stay two."""
    return os.fsencode(path.replace("\\", "\\\\")).decode("utf-8", "backslashreplace")


def _walk(root: Path, out: Path | tuple[Path, ...], all_files: bool) -> Iterator[_Entry]:
    """The files under ``root``, without ``out`` (the results file, or every file the scan
    writes) when it lies inside, by path or by identity (a hard link to it)."""
    outs = out if isinstance(out, tuple) else (out,)
    skip = _Skip({p.resolve() for p in outs}, {key for p in outs if (key := file_identity(p))})
    # Symlinked folders are followed, as symlinked files are, but only once the real tree is
    # listed: a real folder keeps its own path, and a link to a folder reached already (a
    # loop, a second link, a link to a real folder) is one entry saying so, not scanned twice.
    seen = {file_identity(root)}
    links: deque[Path] = deque()
    yield from _walk_real(root, root, skip, all_files, seen, links)
    while links:
        link = links.popleft()
        key = file_identity(link)
        if key is not None and key in seen:
            rel = link.relative_to(root).as_posix() + "/"
            yield _Entry(_display(rel), None, LINK_NOTE, True)
            continue
        seen.add(key)
        yield from _walk_real(root, link, skip, all_files, seen, links)


@dataclass(frozen=True)
class _Skip:
    """The files a scan writes: by resolved path and by (device, inode)."""

    paths: set[Path]
    ids: set[tuple[int, int]]

    def __contains__(self, path: Path) -> bool:
        try:
            if path.resolve() in self.paths:
                return True
        except (OSError, RuntimeError):  # a symlink loop: read_file reports it
            return False
        return bool(self.ids) and file_identity(path) in self.ids


def _walk_real(
    root: Path, top: Path, skip: _Skip, all_files: bool, seen: set, links: deque[Path]
) -> Iterator[_Entry]:
    """The files under ``top`` without following symlinked folders, which go to ``links``."""
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=unlisted.append):
        while unlisted:  # a folder os.walk could not list: one error entry, not silence
            exc = unlisted.pop()
            rel = Path(exc.filename or dirpath).relative_to(root).as_posix() + "/"
            yield _Entry(_display(rel), None, f"cannot list folder ({exc.strerror or exc})")
        kept = []
        for name in sorted(n for n in dirnames if not is_hidden(n)):
            path = Path(dirpath) / name
            if os.path.islink(path):
                links.append(path)
                continue
            key = file_identity(path)
            if key is not None and key in seen:  # reached through a link listed earlier
                rel = path.relative_to(root).as_posix() + "/"
                yield _Entry(_display(rel), None, LINK_NOTE, True)
                continue
            if key is not None:
                seen.add(key)
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_hidden(name):
                continue
            if not all_files and path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path in skip:
                continue
            yield _Entry(_display(path.relative_to(root).as_posix()), path)
    while unlisted:  # the last folder's error (or the top's own)
        exc = unlisted.pop()
        rel = Path(exc.filename or top).relative_to(root).as_posix() + "/"
        yield _Entry(_display(rel), None, f"cannot list folder ({exc.strerror or exc})")


def _load_done(out: Path) -> dict[str, str]:
    """{path: done_key} of finished results; repairs a last line cut off by a crash.

    The file is checked before anything is cut: every line must be a result record, and an
    unfinished last line is dropped only when it is the start of one (a complete record
    whose newline was lost is kept and ended). ``out`` is the file ``open_results`` opened
    and locked (it refused anything but a regular file). It is read a line at a time, and
    only each path's key is kept: a resume's memory does not grow with the records' size.
    Lines end at b"\\n" alone: a record holds U+2028, U+2029 or U+0085 unescaped (the writer
    keeps text as it is), which ``str.splitlines`` took for line ends.
    """
    done: dict[str, str] = {}

    def refuse(lineno: int) -> ScanError:
        return ScanError(f"{out} line {lineno} is not a synthdetect result; choose another --out")

    keep = lineno = 0  # the bytes of whole lines
    partial = b""
    try:
        with open(out, "rb") as fh:
            for line in fh:
                lineno += 1
                if not line.endswith(b"\n"):  # the last line, unfinished
                    partial = line
                    break
                keep += len(line)
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line.decode("utf-8", errors="replace"))
                except ValueError:
                    raise refuse(lineno) from None
                if (key := done_key(rec)) is None:
                    raise refuse(lineno)
                done[rec["path"]] = key
    except OSError as exc:
        raise ScanError(f"cannot read {out}: {exc.strerror or exc}") from None
    if partial:
        try:
            rec = json.loads(partial.decode("utf-8"))
        except ValueError:
            rec = None
        if rec is not None:  # complete JSON: a record whose newline was lost, or not ours
            if (key := done_key(rec)) is None:
                raise refuse(lineno)
            done[rec["path"]] = key
            with open(out, "ab") as fh:
                fh.write(b"\n")
        elif partial.startswith(_RECORD_START) or _RECORD_START.startswith(partial):
            # A crash mid-write leaves a partial record; drop it so appends stay line-aligned
            with open(out, "r+b") as fh:
                fh.truncate(keep)
        else:  # anything else there is somebody's file, which is left as it is
            raise refuse(lineno)
    return done
