"""Resumable, parallel scoring of a directory tree into a JSONL file.

Reading, hashing and decoding run in a thread pool (Pillow and zlib release the GIL while they
decompress); methods run on batches in the calling thread. Every finished result is written as
one line and flushed immediately, and the file is fsynced every few seconds and at the end, so a
crash or Ctrl-C loses no finished result. A re-run skips every file whose path and sha256 are
already in the output; a changed file is scored again and its new line appended (readers take
the last line per path).

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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from detector.image import (
    SUPPORTED_FORMATS,
    DecodedImage,
    ImageError,
    decode,
    file_identity,
    read_file,
)
from detector.pipeline import Detector

__all__ = [
    "IMAGE_EXTENSIONS",
    "ScanError",
    "ScanStats",
    "done_key",
    "is_hidden",
    "open_results",
    "scan_directory",
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


def is_hidden(name: str) -> bool:
    """A name never holding images to read: hidden (``.ipynb_checkpoints/``, ``.DS_Store``,
    macOS's ``._IMG_0001.JPG`` resource forks) or the ``__MACOSX/`` folder of a Mac's zip."""
    return name.startswith(".") or name == "__MACOSX"


class ScanError(Exception):
    """The scan cannot start (unwritable output, corrupt results file)."""


@dataclass
class ScanStats:
    files: int = 0
    skipped: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    def summary(self) -> str:
        scored = sum(self.labels.values())
        parts = ", ".join(f"{n} {label}" for label, n in sorted(self.labels.items()))
        return (
            f"scanned {self.files} files: {scored} scored ({parts or 'none'}), "
            f"{self.errors} unreadable, {self.skipped} already in the results"
        )


@dataclass(frozen=True)
class _Entry:
    rel: str  # the path as written to the results (valid UTF-8)
    path: Path | None  # None: an entry that could not be listed
    error: str | None = None


@dataclass
class _Loaded:
    rel: str
    sha256: str | None
    stat: str | None = None  # for an entry that could not be read: what it looked like
    image: DecodedImage | None = None
    error: str | None = None
    skip: bool = False


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
    try:
        done = _load_done(out)
        files = list(_walk(root, out, all_files))
    except BaseException:
        fh.close()
        raise
    stats = ScanStats(files=len(files))
    workers = workers or min(8, os.cpu_count() or 1)
    writer = _Writer(fh)
    bar = tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr)
    batch: list[_Loaded] = []
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
            for item in _bounded_map(
                pool, lambda entry: _load(entry, done, detector), files, workers * 4
            ):
                if item.skip:
                    stats.skipped += 1
                    bar.update(1)
                elif item.image is None:
                    stats.errors += 1
                    rec = {"path": item.rel, "sha256": item.sha256, "error": item.error}
                    writer.write(rec if item.stat is None else {**rec, "stat": item.stat})
                    bar.update(1)
                else:
                    batch.append(item)
                    if len(batch) >= batch_size:
                        _flush_batch(batch, detector, writer, stats, bar)
            _flush_batch(batch, detector, writer, stats, bar)
    finally:
        writer.close()
        bar.close()
    return stats


def _flush_batch(batch: list[_Loaded], detector: Detector, writer: _Writer, stats, bar) -> None:
    if not batch:
        return
    verdicts = detector.score([item.image for item in batch])  # type: ignore[misc]
    for item, verdict in zip(batch, verdicts, strict=True):
        writer.write({"path": item.rel, "sha256": item.sha256, "verdict": verdict.to_dict()})
        stats.labels[verdict.label] += 1
    bar.update(len(batch))
    batch.clear()


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
        return _failed(entry, done, None, entry.error or "cannot list")
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
        if done.get(entry.rel) == decode_failure_key(sha, str(exc)):
            return _Loaded(entry.rel, sha, skip=True)  # failed the same way before
        return _Loaded(entry.rel, sha, error=str(exc))


def decode_failure_key(sha256: str, error: str) -> str:
    """A file read but not decoded is known by its bytes and the error: decoded again on a
    re-run, it is reported again only if it now fails differently (or decodes, once a limit
    is raised)."""
    return f"{sha256}|{error}"


def done_key(rec: dict[str, Any]) -> str | None:
    """What a result record says was done with its path, to compare on a re-run: the sha256 of
    a scored file, ``decode_failure_key`` of an undecodable one, ``failure_key`` (its stat and
    error) of an unreadable one; None for a record that is no result."""
    if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
        return None
    sha, error = rec.get("sha256"), rec.get("error")
    if rec.get("verdict") is not None and sha:
        return str(sha)
    if error is None:
        return None
    if rec.get("stat"):
        return str(rec["stat"])
    return decode_failure_key(str(sha), str(error)) if sha else None


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
        return _Loaded(entry.rel, None, skip=True)
    return _Loaded(entry.rel, None, stat=key, error=error)


def _bounded_map(pool: ThreadPoolExecutor, fn, items: list, window: int) -> Iterator[Any]:
    """Like ``pool.map`` but with at most ``window`` tasks in flight (bounded memory)."""
    pending: deque[Future] = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    while pending:
        yield pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))


def _display(path: str) -> str:
    """A path that can be written as UTF-8, one per file: undecodable bytes (os.walk keeps
    them as surrogates) become ``\\xNN`` and a backslash of the name itself ``\\\\``, so
    that a file named with the byte 0xff and one named with the text ``\\xff`` stay two."""
    return os.fsencode(path.replace("\\", "\\\\")).decode("utf-8", "backslashreplace")


def _walk(root: Path, out: Path | tuple[Path, ...], all_files: bool) -> Iterator[_Entry]:
    """The files under ``root``, without ``out`` (the results file, or every file the scan
    writes) when it lies inside."""
    outs = {p.resolve() for p in (out if isinstance(out, tuple) else (out,))}
    unlisted: list[OSError] = []
    # Symlinked folders are followed, as symlinked files are; a folder reached a second time
    # (a symlink loop, or two links to one folder) is one entry saying so, not scanned twice.
    seen = {file_identity(root)}
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append, followlinks=True):
        while unlisted:  # a folder os.walk could not list: one error entry, not silence
            exc = unlisted.pop()
            rel = Path(exc.filename or dirpath).relative_to(root).as_posix() + "/"
            yield _Entry(_display(rel), None, f"cannot list folder ({exc.strerror or exc})")
        dirnames[:] = sorted(n for n in dirnames if not is_hidden(n))
        # real folders claim their place before links to them at the same level
        for name in sorted(dirnames, key=lambda n: os.path.islink(os.path.join(dirpath, n))):
            key = file_identity(Path(dirpath) / name)
            if key is not None and key in seen:
                dirnames.remove(name)
                rel = (Path(dirpath) / name).relative_to(root).as_posix() + "/"
                yield _Entry(_display(rel), None, "links to a folder scanned already: not again")
            elif key is not None:
                seen.add(key)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_hidden(name):
                continue
            if not all_files and path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                if path.resolve() in outs:
                    continue
            except (OSError, RuntimeError):  # a symlink loop: read_file reports it
                pass
            yield _Entry(_display(path.relative_to(root).as_posix()), path)
    while unlisted:  # the last folder's error (or the root's own)
        exc = unlisted.pop()
        rel = Path(exc.filename or root).relative_to(root).as_posix() + "/"
        yield _Entry(_display(rel), None, f"cannot list folder ({exc.strerror or exc})")


def _load_done(out: Path) -> dict[str, str]:
    """{path: done_key} of finished results; repairs a last line cut off by a crash.

    The file is checked before anything is cut: every line must be a result record, and an
    unfinished last line is dropped only when it is the start of one (a complete record
    whose newline was lost is kept and ended). ``out`` is the file ``open_results`` opened
    and locked (it refused anything but a regular file).
    """
    try:
        raw = out.read_bytes()
    except OSError as exc:
        raise ScanError(f"cannot read {out}: {exc.strerror or exc}") from None
    keep = raw.rfind(b"\n") + 1
    partial = raw[keep:]
    done: dict[str, str] = {}

    def refuse(lineno: int) -> ScanError:
        return ScanError(f"{out} line {lineno} is not a synthdetect result; choose another --out")

    lines = raw[:keep].decode("utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise refuse(lineno) from None
        if (key := done_key(rec)) is None:
            raise refuse(lineno)
        done[rec["path"]] = key
    if partial:
        lineno = len(lines) + 1
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
