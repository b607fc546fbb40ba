"""Known-image memory: what reviewers confirmed, found again when it comes back.

An image a reviewer confirmed as generated must be caught again at once when it is re-uploaded,
resized or re-compressed; a photo a reviewer confirmed must stop being flagged. Each confirmed
image is stored as

- two perceptual hashes of its pixels (``imagehash``): pHash (DCT of a 32x32 grey thumbnail,
  robust to re-compression and rescaling) and dHash (gradient signs of a 9x8 thumbnail), 64
  bits each;
- the same two hashes of 34 crop windows of the image (``CROP_WINDOWS``: 95% of each side at
  3x3 offsets, 90% at 5x5 offsets). Both hashes see the whole frame, so a re-upload cropped by
  5-10% no longer matches the full frame's hashes (36% and 1.4% recall in the benchmark); it
  matches the window that it nearly is. Lookups hash only the upload's full frame: the windows
  cost the store (35 codes per record in the index), not the request;
- the sha256 of its decoded pixels and of its file (exact re-uploads, whatever the distance);
- the label (``generated`` or ``camera``), who confirmed it, when (UTC, to the microsecond), a
  note and its source.

An image whose hashes cannot tell it from other pictures is matched only exactly (same pixels or
same file), never as a near-duplicate (``has_structure``): a flat or plain-gradient image, and a
small picture on a plain background (a sticker), whose hashes encode little more than where it
sits, so that two different stickers at one spot matched each other.

When several records match one upload they are decisions about one picture: the latest
``confirmed_at`` leads (``find``), so a newer human judgement overrides an older one, however the
hash distances fall.

Records live in one SQLite file (WAL mode: several server processes read and write it at once;
writers wait on a busy timeout instead of failing). The near-duplicate search runs in a faiss
binary index (Hamming distance) over the pHashes of every record's full frame and windows,
rebuilt from SQLite when a store opens and brought up to date from the database before every
lookup, so a record written by another process is found by this one. A candidate matches when
both the pHash and the dHash of one of its frames (full or window) are within their distance
limits (``MatchRule``; the defaults are chosen by the memory benchmark).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LABELS",
    "ImageHashes",
    "ImportResult",
    "KnownImage",
    "KnownImageError",
    "Match",
    "MatchRule",
    "MemoryStore",
    "connect_shared",
    "detail_share",
    "has_structure",
    "hash_codes",
    "hash_pixels",
    "parse_jsonl",
    "plainness",
]

LABELS = ("generated", "camera")
_BITS = 64
_SCHEMA = 2
# Below this many set pHash bits (32 for any picture with detail) an image has too little
# structure for near-duplicate matching (``has_structure``).
_MIN_PHASH_BITS = 24
# ``detail_share``: measured on a 64x64 grey thumbnail (the hashes see 32x32 and 9x8); a pixel
# within _DETAIL_LEVELS grey levels of the border's median is background, and the detail is the
# bounding box of the pixels holding _DETAIL_MASS of the deviation from it. Under _MIN_DETAIL of
# the frame an image is matched only exactly. Measured (see ``has_structure``): different
# stickers at one spot on a plain 512x512 or 800x600 canvas match each other in 23-66 of 66
# pairs while their detail covers <= 6.6% (none at 10-16%: 1-9 of 66); of 6,270 real photos of
# the corpus with structure, 2 cover less than 5% (0.5%, 3.3%: white frames with a sliver of
# an object at one edge), the next 6.8%, the 0.1th percentile 20%.
_DETAIL_SIDE = 64
_DETAIL_LEVELS = 8.0
_DETAIL_MASS = 0.95
_MIN_DETAIL = 0.05


def _windows() -> tuple[tuple[float, float, float], ...]:
    """(kept fraction of each side, x offset, y offset) of each crop window, offsets as
    fractions of the side: 95% at 3x3 offsets and 90% at 5x5 (a crop of up to 10% of each side,
    split any way between its two ends, is within 1.25% of a window)."""
    out = []
    for keep, n in ((0.95, 3), (0.90, 5)):
        offsets = np.linspace(0.0, 1.0 - keep, n)
        out += [(keep, float(x), float(y)) for y in offsets for x in offsets]
    return tuple(out)


CROP_WINDOWS = _windows()
_WINDOW_IDS = 64  # faiss id = record id * 64 + frame (0: the full frame; 1..: a window)
_WINDOW_SIDE = 256  # windows are cut from the image scaled to at most this side


class KnownImageError(Exception):
    """A bad memory database, record or import line (the message says which and why)."""


def require_database(path: str | Path) -> None:
    """Refuse a memory that is not there yet, where only reading it makes sense.

    :class:`MemoryStore` creates a missing file, which is right for ``memory add`` and
    ``memory import`` but wrong for a reader: a mistyped path would hold an empty memory that
    never matches. A directory passes here and is refused by :class:`MemoryStore` itself.
    """
    if not Path(path).exists():
        raise KnownImageError(f"no memory database at {path}")


@dataclass(frozen=True)
class ImageHashes:
    phash: str  # 16 hex digits
    dhash: str
    pixel_sha256: str
    file_sha256: str | None = None
    windows: tuple[tuple[str, str], ...] = ()  # (phash, dhash) per CROP_WINDOWS entry
    # share of the frame the image's detail covers (``detail_share``); None: not measured
    # (hashes rebuilt from a record or a review item), then only the pHash bits are judged
    detail: float | None = None


@dataclass(frozen=True)
class MatchRule:
    """A stored image matches when both distances of its full frame are within the full-frame
    limits, or both distances of one of its crop windows within the (tighter) window limits
    (bits of 64). A lookup compares 35 frames per record, so windows get limits of their own:
    they add crop recall at a cost in false matches that the benchmark measures.

    The defaults are the memory benchmark's choice (``benchmarks/results/memory-cpu.json``,
    10,000 distinct corpus images): the full frame alone recalls 97.6-99.8% of re-encoded,
    rescaled and screenshotted re-uploads but 1.4-36% of 5-10% crops, matching 0.17% of images
    to a different picture; the windows raise crop recall to 88-93% at 0.37%."""

    max_phash: int = 6
    max_dhash: int = 8
    max_phash_window: int = 4
    max_dhash_window: int = 6

    def __post_init__(self) -> None:
        for name in ("max_phash", "max_dhash", "max_phash_window", "max_dhash_window"):
            v = getattr(self, name)
            if not 0 <= v <= _BITS:
                raise ValueError(f"{name} must be within 0..{_BITS}, got {v}")

    def limits(self, frame: int) -> tuple[int, int]:
        """(pHash, dHash) limits for frame 0 (the full frame) or a window (1..)."""
        if frame == 0:
            return self.max_phash, self.max_dhash
        return self.max_phash_window, self.max_dhash_window


@dataclass(frozen=True)
class KnownImage:
    id: int
    label: str
    phash: str
    dhash: str
    pixel_sha256: str
    file_sha256: str | None
    confirmed_by: str
    confirmed_at: str  # ISO 8601, UTC (to the microsecond; records before: to the second)
    note: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Match:
    record: KnownImage
    phash_distance: int
    dhash_distance: int
    exact: bool  # same pixels or same file
    window: int = 0  # 0: the full frame matched; n: the upload is a crop (CROP_WINDOWS[n - 1])

    @property
    def distance(self) -> int:
        return 0 if self.exact else self.phash_distance

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record.to_dict(),
            "distance": self.distance,
            "phash_distance": self.phash_distance,
            "dhash_distance": self.dhash_distance,
            "exact": self.exact,
            "cropped": self.window > 0,
        }


def _to_hex(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, dtype=bool).reshape(-1)).tobytes().hex()


def hash_pixels(
    pixels: np.ndarray, data: bytes | None = None, windows: bool = False
) -> ImageHashes:
    """The perceptual and exact hashes of decoded RGB pixels (and of the file, if given); with
    ``windows``, also those of the crop windows (for storing: lookups need the full frame)."""
    import imagehash
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(pixels))
    shape = f"{pixels.shape[0]}x{pixels.shape[1]}x{pixels.shape[2]}:".encode()
    return ImageHashes(
        phash=_to_hex(imagehash.phash(img).hash),
        dhash=_to_hex(imagehash.dhash(img).hash),
        pixel_sha256=hashlib.sha256(shape + np.ascontiguousarray(pixels).tobytes()).hexdigest(),
        file_sha256=hashlib.sha256(data).hexdigest() if data is not None else None,
        windows=_window_hashes(img) if windows else (),
        detail=detail_share(pixels),
    )


def detail_share(pixels: np.ndarray) -> float:
    """The share of the frame (0..1) that the image's detail covers, beside a plain background.

    The background is the median grey level of the border of a 64x64 thumbnail; the detail is
    the bounding box of the thumbnail pixels that hold 95% of the deviation from it. A sticker
    pasted on a plain canvas covers its own box (a 120 px one on 800x600: 3%); a photo covers
    the frame. An image in which nothing stands out of the background by more than 8 levels is
    near-flat: 1.0 here, and ``has_structure`` judges it by its pHash bits alone."""
    from PIL import Image

    thumb = Image.fromarray(np.ascontiguousarray(pixels)).convert("L")
    t = np.asarray(thumb.resize((_DETAIL_SIDE, _DETAIL_SIDE), Image.BOX), dtype=np.float64)
    border = np.concatenate([t[0], t[-1], t[1:-1, 0], t[1:-1, -1]])
    dev = np.abs(t - np.median(border))
    if dev.max() <= _DETAIL_LEVELS:
        return 1.0
    ranked = np.sort(dev.ravel())[::-1]
    cut = ranked[int(np.searchsorted(np.cumsum(ranked), _DETAIL_MASS * ranked.sum()))]
    ys, xs = np.nonzero(dev >= cut)
    return float((np.ptp(ys) + 1) * (np.ptp(xs) + 1) / dev.size)


def _window_hashes(img) -> tuple[tuple[str, str], ...]:
    import imagehash
    from PIL import Image

    w, h = img.size
    scale = _WINDOW_SIDE / max(w, h)
    if scale < 1:  # both hashes shrink to 32x32 or less: cut windows from a smaller copy
        img = img.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.LANCZOS)
        w, h = img.size
    out = []
    for keep, ox, oy in CROP_WINDOWS:
        box = (round(ox * w), round(oy * h), round((ox + keep) * w), round((oy + keep) * h))
        crop = img.crop(box)
        out.append((_to_hex(imagehash.phash(crop).hash), _to_hex(imagehash.dhash(crop).hash)))
    return tuple(out)


def _code(hex_hash: str) -> np.ndarray:
    try:
        raw = bytes.fromhex(hex_hash)
    except ValueError:
        raw = b""
    if len(raw) != _BITS // 8:
        raise KnownImageError(f"hash {hex_hash!r} is not {_BITS // 4} hex digits")
    return np.frombuffer(raw, dtype=np.uint8)


def _window_codes(blob: bytes | None) -> np.ndarray:
    """A record's stored windows as (n, 2, 8) uint8 codes: (pHash, dHash) per window."""
    return np.frombuffer(blob or b"", dtype=np.uint8).reshape(-1, 2, _BITS // 8)


def hash_codes(hexes: Iterable[str]) -> np.ndarray:
    """Hex hashes -> (n, 8) uint8 rows, the form faiss's binary index (and numpy) compare."""
    return np.stack([_code(h) for h in hexes])


def has_structure(hashes: ImageHashes) -> bool:
    """Whether the image's hashes can tell it from other pictures (``plainness`` is None).
    Images without are matched only exactly (same pixels or same file), never as
    near-duplicates: one confirmed blank image, or sticker, must not decide every other one."""
    return plainness(hashes) is None


def plainness(hashes: ImageHashes) -> str | None:
    """Why the image's hashes cannot tell it from other pictures, in words; None if they can.

    pHash thresholds 64 DCT coefficients at their median, so any picture with detail sets 32 of
    its bits; a flat, nearly flat or plain-gradient image (a blank upload, a 1 px image, a
    colour field) has tied coefficients and sets few (0-9 measured), and all such images hash
    alike. A small picture on a plain background sets 32 bits, but they encode mostly where it
    sits: different pictures pasted at one spot are within a few bits of each other. Its
    detail covers little of the frame (``detail_share``), which is what is checked."""
    if int(np.unpackbits(_code(hashes.phash)).sum()) < _MIN_PHASH_BITS:
        return "a flat or plain image"
    if hashes.detail is not None and hashes.detail < _MIN_DETAIL:
        return (
            f"its detail covers {hashes.detail:.1%} of the frame, on a plain background "
            f"(under {_MIN_DETAIL:.0%})"
        )
    return None


def _hamming(a: str, b: str) -> int:
    return int(np.unpackbits(_code(a) ^ _code(b)).sum())


def connect_shared(path: Path) -> sqlite3.Connection:
    """A SQLite connection that several threads (one lock) and processes share: WAL mode, and
    writers wait up to 30 s for each other instead of failing."""
    db = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def connect_own(path: Path, markers: frozenset[str], what: str) -> sqlite3.Connection:
    """``connect_shared`` on one of the project's databases (holding one of the ``markers``
    tables) or on a new, empty file: any other SQLite file is refused before anything is
    written to it (not even its journal mode is changed)."""
    if path.exists() and path.stat().st_size > 0:
        probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in probe.execute("SELECT name FROM sqlite_master")}
        finally:
            probe.close()
        if not tables & markers:
            raise KnownImageError(
                f"{path}: not a synthdetect {what} database (an SQLite file without its "
                "tables); nothing was changed"
            )
    return connect_shared(path)


def _single_threaded(fn, *args):
    """Run a faiss call on one OpenMP thread. One query at a time gains nothing from faiss's
    pool, whose spinning threads cost (a search over 200,000 hashes: 54 ms with the pool on a
    busy 2-core machine, 0.1 ms on one thread). OpenMP's thread count is per calling thread and
    shared with torch (the same libgomp), so it is set for this call only and restored."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return fn(*args)
    finally:
        faiss.omp_set_num_threads(before)


_INSERT = (
    "INSERT INTO known_images (label, phash, dhash, pixel_sha256, file_sha256, confirmed_by, "
    "confirmed_at, note, source, windows) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PRESENT = (
    "SELECT 1 FROM known_images WHERE pixel_sha256 = ? AND label = ? AND confirmed_at = ? LIMIT 1"
)
_COLUMNS = (
    "id, label, phash, dhash, pixel_sha256, file_sha256, confirmed_by, confirmed_at, note, source"
)
_OTHER_LABEL = (
    "SELECT label FROM known_images WHERE pixel_sha256 = ? AND confirmed_at = ? AND label != ? "
    "LIMIT 1"
)
_DECISIONS = "SELECT label, confirmed_at, id FROM known_images WHERE pixel_sha256 = ?"
_SHA256 = frozenset("0123456789abcdef")


def _utc(when: object) -> str:
    """An ISO 8601 time with its zone, as UTC: '2026-12-07T20:00:00+09:00' reads as 11:00 UTC,
    and a time with a fraction keeps its microseconds (two decisions in one second stay two
    moments). One form for every record, stamped here or imported, so that the same moment is
    the same text (which the import's checks compare)."""
    if not isinstance(when, str):
        raise KnownImageError(f"confirmed_at must be an ISO 8601 time as text, got {when!r}")
    try:
        moment = datetime.fromisoformat(when.strip())
    except ValueError:
        raise KnownImageError(f"confirmed_at {when!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise KnownImageError(f"confirmed_at {when!r} has no time zone (add Z or +00:00)")
    try:
        return moment.astimezone(timezone.utc).isoformat()
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is past the last representable time
        raise KnownImageError(f"confirmed_at {when!r} is out of range") from None


def _now() -> str:
    return _utc(datetime.now(timezone.utc).isoformat())


def _moment(when: str) -> datetime:
    """A stored ``confirmed_at`` as a time to order by (schema 1 stored '2026-01-01': UTC)."""
    try:
        moment = datetime.fromisoformat(when)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _latest_first(records: Iterable[KnownImage]) -> list[KnownImage]:
    return sorted(records, key=lambda r: (_moment(r.confirmed_at), r.id), reverse=True)


@dataclass(frozen=True)
class ImportResult:
    """What ``import_jsonl`` did with a file's records."""

    added: int
    present: int  # the store held them already (the same pixels, label and confirmed_at)
    repeated: int  # the file repeated an earlier line of its own


def _text(value: object, name: str) -> str:
    """An optional text field of an imported record: absent or null is empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise KnownImageError(f"{name} must be text, got {value!r}")
    return value


def _digest(value: object, name: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not (isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256):
        raise KnownImageError(f"{name} must be 64 lower-case hex digits, got {value!r}")
    return value


class MemoryStore:
    """Known images in a SQLite file, with a faiss Hamming index over their pHashes.

    Safe to share between threads (one lock) and between processes (SQLite WAL; each process
    catches up on rows written by others before it searches).
    """

    def __init__(
        self, path: str | Path, rule: MatchRule | None = None, read_only: bool | None = None
    ) -> None:
        self.path = Path(path)
        self.rule = rule or MatchRule()
        if self.path.is_dir():
            raise KnownImageError(f"{self.path} is a directory, not a memory database file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        import faiss

        self._index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(_BITS))
        self._seen = 0  # the highest row id in the index
        # ``read_only`` (None: when this process may not write the file, e.g. a reviewed
        # memory shipped read-only): looked up, never changed; writes are refused saying so
        if read_only is None:
            read_only = self.path.exists() and not os.access(self.path, os.W_OK)
        if read_only and not self.path.exists():
            raise KnownImageError(f"no memory database at {self.path}")
        self.read_only = read_only
        try:
            if self.read_only:
                self._db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                self._db = connect_own(self.path, frozenset({"memory_meta"}), "memory")
            self._init_schema()
            with self._lock:
                self._catch_up()
        except sqlite3.DatabaseError as exc:
            raise KnownImageError(f"{self.path}: not a usable memory database ({exc})") from None

    # --- schema and sync -------------------------------------------------------------------

    def _init_schema(self) -> None:
        if self.read_only:
            self._check_schema()
            return
        with self._db:
            self._db.execute(
                """CREATE TABLE IF NOT EXISTS known_images (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    label TEXT NOT NULL CHECK (label IN ('generated', 'camera')),
                    phash TEXT NOT NULL,
                    dhash TEXT NOT NULL,
                    pixel_sha256 TEXT NOT NULL,
                    file_sha256 TEXT,
                    confirmed_by TEXT NOT NULL,
                    confirmed_at TEXT NOT NULL,
                    note TEXT NOT NULL DEFAULT '',
                    source TEXT NOT NULL DEFAULT '',
                    windows BLOB
                )"""
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS known_pixels ON known_images(pixel_sha256)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS known_files ON known_images(file_sha256)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS memory_meta (key TEXT PRIMARY KEY, value TEXT)"
            )
            self._db.execute(
                "INSERT OR IGNORE INTO memory_meta VALUES ('schema', ?)", (str(_SCHEMA),)
            )
        self._check_schema()

    def _check_schema(self) -> None:
        found = self._db.execute("SELECT value FROM memory_meta WHERE key = 'schema'").fetchone()
        if found is None:
            raise KnownImageError(f"{self.path}: not a synthdetect memory database (no schema)")
        (version,) = found
        if version == "1" and not self.read_only:
            # schema 1 had no crop windows: its records match by full frame only. Several
            # processes may open it at once: the version is read again under the write lock,
            # so that one of them upgrades it and the others find it done.
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                (version,) = self._db.execute(
                    "SELECT value FROM memory_meta WHERE key = 'schema'"
                ).fetchone()
                if version == "1":
                    self._db.execute("ALTER TABLE known_images ADD COLUMN windows BLOB")
                    self._db.execute("UPDATE memory_meta SET value = '2' WHERE key = 'schema'")
                    version = "2"
        if version != str(_SCHEMA):
            raise KnownImageError(
                f"{self.path}: memory schema {version}, this version reads {_SCHEMA}"
            )

    def _catch_up(self) -> None:
        """Add rows written since the last look (by this process or another) to the index."""
        rows = self._db.execute(
            "SELECT id, phash, windows FROM known_images WHERE id > ? ORDER BY id", (self._seen,)
        ).fetchall()
        if not rows:
            return
        ids, codes = [], []
        for row_id, phash, windows in rows:
            ids.append(row_id * _WINDOW_IDS)
            codes.append(_code(phash))
            pairs = _window_codes(windows)
            ids += [row_id * _WINDOW_IDS + 1 + i for i in range(len(pairs))]
            codes += list(pairs[:, 0])
        self._index.add_with_ids(np.stack(codes), np.array(ids, dtype=np.int64))
        self._seen = int(rows[-1][0])

    # --- writing ---------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.read_only:
            raise KnownImageError(f"{self.path} is read-only here: records cannot be added")

    def add(
        self,
        hashes: ImageHashes,
        label: str,
        confirmed_by: str,
        note: str = "",
        source: str = "",
        confirmed_at: str | None = None,
    ) -> KnownImage:
        """Record a confirmed image; returns the stored record (see ``add_checked``)."""
        return self.add_checked(hashes, label, confirmed_by, note, source, confirmed_at)[0]

    def add_checked(
        self,
        hashes: ImageHashes,
        label: str,
        confirmed_by: str,
        note: str = "",
        source: str = "",
        confirmed_at: str | None = None,
    ) -> tuple[KnownImage, bool]:
        """Record a confirmed image -> (the record, whether it was added). When the latest
        decision about these pixels has this label already, nothing is added and that record
        is returned: the same file added twice is one record. The other label at the very
        moment of a recorded decision is refused, as by ``import_jsonl``."""
        row = self._row(hashes, label, confirmed_by, note, source, confirmed_at)
        self._writable()
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")  # from the check to the insert
                self._refuse_same_moment(row)
                decisions = self._db.execute(_DECISIONS, (row[3],)).fetchall()
                latest = max(decisions, key=lambda d: (_moment(d[1]), d[2]), default=None)
                row_id = None
                if latest is None or latest[0] != label:
                    row_id = int(self._db.execute(_INSERT, row).lastrowid or 0)
            self._catch_up()
        if row_id is None:
            return self.get(latest[2]), False
        return self.get(row_id), True

    def _refuse_same_moment(self, row: tuple) -> None:
        other = self._db.execute(_OTHER_LABEL, (row[3], row[6], row[0])).fetchone()
        if other is not None:  # two decisions about one picture at one moment: which holds?
            raise KnownImageError(
                f"pixels {row[3][:12]}... were confirmed {other[0]} at {row[6]} already; "
                f"this record says {row[0]} at the same time"
            )

    def add_many(
        self, records: Iterable[tuple[ImageHashes, str, str, str, str, str | None]]
    ) -> int:
        """Record (hashes, label, confirmed_by, note, source, confirmed_at) tuples in one
        transaction: all or none. Returns how many."""
        self._writable()
        rows = [self._row(*rec) for rec in records]
        with self._lock:
            with self._db:
                self._db.executemany(_INSERT, rows)
            self._catch_up()
        return len(rows)

    def import_rows(self, rows: list[tuple]) -> ImportResult:
        """Insert rows checked by ``parse_jsonl`` in one transaction, leaving out a row the
        store holds or that came earlier in ``rows`` (the same pixels, label and
        ``confirmed_at``), under a write lock from the check to the insert, so that two
        imports of one file at once still add each record once."""
        self._writable()
        new, seen, repeated = [], set(), 0
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for row in rows:  # (label, phash, dhash, pixel_sha256, ...): _INSERT's order
                    key = (row[3], row[0], row[6])
                    self._refuse_same_moment(row)
                    if key in seen:
                        repeated += 1
                    elif self._db.execute(_PRESENT, key).fetchone() is None:
                        new.append(row)
                    seen.add(key)
                self._db.executemany(_INSERT, new)
            self._catch_up()
        return ImportResult(len(new), len(rows) - len(new) - repeated, repeated)

    @staticmethod
    def _row(
        hashes: ImageHashes,
        label: str,
        confirmed_by: str,
        note: str = "",
        source: str = "",
        confirmed_at: str | None = None,
    ) -> tuple:
        """A checked row for ``_INSERT``."""
        if label not in LABELS:
            raise KnownImageError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
        if not isinstance(confirmed_by, str) or not confirmed_by.strip():
            raise KnownImageError("who confirmed the image is required")
        _code(hashes.phash), _code(hashes.dhash)
        if hashes.windows and len(hashes.windows) != len(CROP_WINDOWS):
            raise KnownImageError(
                f"{len(hashes.windows)} crop windows; this version uses {len(CROP_WINDOWS)}"
            )
        windows = b"".join(_code(p).tobytes() + _code(d).tobytes() for p, d in hashes.windows)
        when = _utc(confirmed_at) if confirmed_at is not None else _now()
        return (label, hashes.phash, hashes.dhash, hashes.pixel_sha256, hashes.file_sha256,
                confirmed_by.strip(), when, note, source, windows or None)  # fmt: skip

    # --- reading ---------------------------------------------------------------------------

    def get(self, row_id: int) -> KnownImage:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM known_images WHERE id = ?", (row_id,)
            ).fetchone()
        if row is None:
            raise KnownImageError(f"no known image with id {row_id}")
        return KnownImage(*row)

    def find(self, hashes: ImageHashes, k: int = 64) -> list[Match]:
        """Stored images that match ``hashes`` (an upload's full frame) under the store's rule,
        in their full frame or in one of their crop windows, exactly or as near-duplicates
        (only exactly when the upload has no structure: ``has_structure``); the latest
        confirmation first. ``k``: frames looked at (a record has up to 35)."""
        with self._lock:
            self._catch_up()
            matches: dict[int, Match] = {}
            exact = self._db.execute(  # a UNION, so that each side uses its index
                f"SELECT {_COLUMNS} FROM known_images WHERE pixel_sha256 = ? UNION "
                f"SELECT {_COLUMNS} FROM known_images WHERE file_sha256 = ?",
                (hashes.pixel_sha256, hashes.file_sha256),
            ).fetchall()
            for row in exact:
                rec = KnownImage(*row)
                matches[rec.id] = Match(
                    rec, _hamming(rec.phash, hashes.phash), _hamming(rec.dhash, hashes.dhash), True
                )
            if self._index.ntotal and has_structure(hashes):
                dist, ids = _single_threaded(
                    self._index.search, _code(hashes.phash)[None, :], min(k, self._index.ntotal)
                )
                near: dict[int, list[tuple[int, int]]] = {}  # record -> [(frame, pHash dist)]
                for d, i in zip(dist[0].tolist(), ids[0].tolist(), strict=True):
                    record, frame = divmod(int(i), _WINDOW_IDS)
                    if i >= 0 and d <= self.rule.limits(frame)[0] and record not in matches:
                        near.setdefault(record, []).append((frame, int(d)))
                if near:
                    marks = ",".join("?" * len(near))
                    rows = self._db.execute(
                        f"SELECT {_COLUMNS}, windows FROM known_images WHERE id IN ({marks})",
                        list(near),
                    ).fetchall()
                    query = _code(hashes.dhash)
                    for row in rows:
                        rec = KnownImage(*row[:-1])
                        dhashes = [_code(rec.dhash), *_window_codes(row[-1])[:, 1]]
                        best = None
                        for frame, pd in near[rec.id]:
                            dd = int(np.unpackbits(dhashes[frame] ^ query).sum())
                            if dd <= self.rule.limits(frame)[1] and (
                                best is None or pd + dd < best[1] + best[2]
                            ):
                                best = (frame, pd, dd)
                        if best is not None:
                            matches[rec.id] = Match(rec, best[1], best[2], False, best[0])
        # Every match is a decision about this picture: the latest leads (then the latest
        # record), however near. Nearest first let ten older copies confirmed as generated
        # outvote a newer camera decision by hash noise; and an import of an old export must
        # not overturn a newer decision by arriving later.
        order = {r.id: n for n, r in enumerate(_latest_first(m.record for m in matches.values()))}
        return sorted(matches.values(), key=lambda m: order[m.record.id])

    def records(self) -> Iterator[KnownImage]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM known_images ORDER BY id").fetchall()
        for row in rows:
            yield KnownImage(*row)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._catch_up()
            counts = dict(
                self._db.execute("SELECT label, COUNT(*) FROM known_images GROUP BY label")
            )
            last = self._db.execute("SELECT MAX(confirmed_at) FROM known_images").fetchone()[0]
        return {
            "path": str(self.path),
            "records": sum(counts.values()),
            "by_label": {label: counts.get(label, 0) for label in LABELS},
            "indexed": int(self._index.ntotal),
            "last_confirmed_at": last,
            "rule": asdict(self.rule),
        }

    # --- JSONL import / export -------------------------------------------------------------

    def export_jsonl(self, out) -> int:
        n = 0
        for rec, windows in self._records_with_windows():
            d = rec.to_dict()
            d.pop("id")
            if windows:
                d["windows"] = [list(pair) for pair in windows]
            out.write(json.dumps(d, sort_keys=True) + "\n")
            n += 1
        return n

    def _records_with_windows(self) -> Iterator[tuple[KnownImage, tuple[tuple[str, str], ...]]]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS}, windows FROM known_images ORDER BY id"
            ).fetchall()
        for row in rows:
            pairs = tuple((p.tobytes().hex(), d.tobytes().hex()) for p, d in _window_codes(row[-1]))
            yield KnownImage(*row[:-1]), pairs

    def import_jsonl(self, lines: Iterable[str], origin: str = "import") -> ImportResult:
        """Add the records of a JSONL export; all lines are checked before any is written.

        A record the store already holds, or one the file repeats (the same pixels, label and
        ``confirmed_at``: that decision about this picture), is skipped, so importing an export
        again adds nothing; an older decision imported later does not lead ``find``, which
        prefers the latest ``confirmed_at``. A line without ``confirmed_at`` is stamped now."""
        return self.import_rows(parse_jsonl(lines, origin))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_jsonl(lines: Iterable[str], origin: str = "import") -> list[tuple]:
    """The checked rows of a JSONL export, for ``MemoryStore.import_rows``; a bad line raises
    ``KnownImageError`` naming it. Needs no database: a command checks its file first."""
    rows: list[tuple] = []
    decided: dict[tuple, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            windows = d.get("windows", [])
            if not isinstance(windows, list) or not all(
                isinstance(w, list) and len(w) == 2 for w in windows
            ):
                raise ValueError("windows must be a list of [phash, dhash] pairs")
            hashes = ImageHashes(
                str(d["phash"]), str(d["dhash"]), _digest(d["pixel_sha256"], "pixel_sha256"),
                _digest(d.get("file_sha256"), "file_sha256", optional=True),
                tuple((str(p), str(q)) for p, q in windows),
            )  # fmt: skip
            rec = (hashes, d["label"], d["confirmed_by"], _text(d.get("note"), "note"),
                   _text(d.get("source"), "source") or origin, d.get("confirmed_at"))  # fmt: skip
            rows.append(MemoryStore._row(*rec))  # checked here, so that an error names its line
            when = (rows[-1][3], rows[-1][6])  # pixels and moment: one label in a file
            if decided.setdefault(when, rows[-1][0]) != rows[-1][0]:
                raise KnownImageError(
                    f"says {rows[-1][0]}, an earlier line {decided[when]}, for the same "
                    f"pixels at the same time ({rows[-1][6]})"
                )
        except (ValueError, KeyError, TypeError, KnownImageError) as exc:
            missing = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise KnownImageError(f"{origin} line {number}: {missing}") from None
    return rows
