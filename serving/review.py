"""The review queue: verdicts that need a person, users' reports, and an audit trail.

Trust-and-safety teams act on what reviewers confirm, not on a score alone. The server records
every verdict whose label is ``uncertain`` (and any verdict a client asks for) as an open review
item; users' reports of an image enter the same queue. A reviewer decides ``generated``,
``camera`` or ``skip``; a decision is written to the known-image memory (``detector.memory``),
so that the image and its re-uploads are decided at once from then on.

Storage, in the same SQLite file as the known-image memory (WAL: several server processes):

- ``review_items``: one row per image under review (its verdict, hashes, status, decision);
  an image seen again while its item is open joins that item instead of opening another;
- ``review_reports``: who reported an item, when and why;
- ``review_audit``: every change (created, seen again, reported, decided, skipped, image
  removed), append-only: triggers refuse UPDATE and DELETE on it;
- ``review_images``: the images kept for reviewers, in a content-addressed folder beside the
  database (``<db>.images/ab/<sha256>``, the sha256 of the uploaded file). The folder is capped
  in bytes (the oldest images of decided items go first, then the oldest of open ones) and
  images expire after a set number of days; an item outlives its image (verdict, hashes and
  decision stay).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from detector.memory import LABELS, ImageHashes, KnownImageError, MemoryStore, connect_own

__all__ = ["DECISIONS", "ReviewConfig", "ReviewError", "ReviewQueue"]

DECISIONS = (*LABELS, "skip")
STATUSES = ("open", "decided")
REASONS = ("uncertain", "requested", "report")
_SCHEMA = 1


class ReviewError(Exception):
    """A request the queue cannot serve; ``status`` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ReviewConfig:
    max_image_bytes: int = 2 * 1024**3  # the image folder's cap
    expiry_days: float = 30.0  # images older than this are removed (items stay)
    max_note_chars: int = 2000
    max_name_chars: int = 200

    def __post_init__(self) -> None:
        if self.max_image_bytes < 0 or self.expiry_days <= 0:
            raise ValueError("max_image_bytes must be >= 0 and expiry_days > 0")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


_ITEM_COLUMNS = (
    "id, status, reason, created_at, updated_at, image_sha256, filename, media_format, width, "
    "height, label, probability, verdict, phash, dhash, pixel_sha256, windows, seen, skips, "
    "decision, "
    "decided_by, decided_at, note, memory_id"
)


class ReviewQueue:
    """Review items, reports and the audit trail in one SQLite file, images beside it.

    Safe to share between threads (one lock) and between processes (SQLite WAL; image files
    are written under a temporary name and renamed)."""

    def __init__(
        self, path: str | Path, memory: MemoryStore, config: ReviewConfig | None = None
    ) -> None:
        self.path = Path(path)
        self.memory = memory
        self.config = config or ReviewConfig()
        if self.path.is_dir():
            raise ReviewError(f"{self.path} is a directory, not a review database file")
        self.images = self.path.with_name(self.path.name + ".images")
        self.images.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # a review database, or the memory's when they share one file (no --memory-db)
            self._db = connect_own(
                self.path, frozenset({"review_items", "review_meta", "memory_meta"}), "review"
            )
            self._init_schema()
        except KnownImageError as exc:
            raise ReviewError(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise ReviewError(f"{self.path}: not a usable review database ({exc})") from None
        with self._lock:
            self._expire()

    def _init_schema(self) -> None:
        with self._db:
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS review_items (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    status TEXT NOT NULL CHECK (status IN ('open', 'decided')),
                    reason TEXT NOT NULL CHECK (reason IN ('uncertain', 'requested', 'report')),
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL,
                    image_sha256 TEXT NOT NULL,
                    filename TEXT,
                    media_format TEXT,
                    width INTEGER,
                    height INTEGER,
                    label TEXT,
                    probability REAL,
                    verdict TEXT NOT NULL,
                    phash TEXT NOT NULL,
                    dhash TEXT NOT NULL,
                    pixel_sha256 TEXT NOT NULL,
                    windows TEXT NOT NULL DEFAULT '[]',
                    seen INTEGER NOT NULL DEFAULT 1,
                    skips INTEGER NOT NULL DEFAULT 0,
                    decision TEXT CHECK (decision IN ('generated', 'camera')),
                    decided_by TEXT,
                    decided_at TEXT,
                    note TEXT NOT NULL DEFAULT '',
                    memory_id INTEGER
                );
                CREATE INDEX IF NOT EXISTS review_open ON review_items(status, skips, id);
                CREATE INDEX IF NOT EXISTS review_image ON review_items(image_sha256, status);
                CREATE TABLE IF NOT EXISTS review_reports (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    item_id INTEGER NOT NULL REFERENCES review_items(id),
                    reporter TEXT NOT NULL,
                    reason TEXT NOT NULL,
                    at TEXT NOT NULL
                );
                CREATE INDEX IF NOT EXISTS review_report_item ON review_reports(item_id);
                CREATE TABLE IF NOT EXISTS review_audit (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at TEXT NOT NULL,
                    item_id INTEGER,
                    actor TEXT NOT NULL,
                    action TEXT NOT NULL,
                    detail TEXT NOT NULL DEFAULT '{}'
                );
                CREATE INDEX IF NOT EXISTS review_audit_item ON review_audit(item_id);
                CREATE TRIGGER IF NOT EXISTS review_audit_no_update BEFORE UPDATE ON review_audit
                BEGIN SELECT RAISE(ABORT, 'review_audit is append-only'); END;
                CREATE TRIGGER IF NOT EXISTS review_audit_no_delete BEFORE DELETE ON review_audit
                BEGIN SELECT RAISE(ABORT, 'review_audit is append-only'); END;
                CREATE TABLE IF NOT EXISTS review_images (
                    sha256 TEXT PRIMARY KEY,
                    bytes INTEGER NOT NULL,
                    stored_at TEXT NOT NULL
                );
                CREATE INDEX IF NOT EXISTS review_image_age ON review_images(stored_at);
                CREATE TABLE IF NOT EXISTS review_meta (key TEXT PRIMARY KEY, value TEXT);
                """
            )
            self._db.execute(
                "INSERT OR IGNORE INTO review_meta VALUES ('schema', ?)", (str(_SCHEMA),)
            )
        (version,) = self._db.execute(
            "SELECT value FROM review_meta WHERE key = 'schema'"
        ).fetchone()
        if version != str(_SCHEMA):
            raise ReviewError(f"{self.path}: review schema {version}, this version reads {_SCHEMA}")

    # --- checks ----------------------------------------------------------------------------

    def _text(self, value: Any, what: str, limit: int, required: bool = True) -> str:
        r"""A reviewer's or reporter's text: line breaks as ``\n`` (a browser's textarea sends
        ``\r\n``), no other control character than ``\n`` and ``\t``: C0, DEL and C1 (``\x85``,
        ``\x9b``: a terminal reading the audit trail acts on them) are refused."""
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ReviewError(f"{what} must be a string")
        value = value.replace("\r\n", "\n").replace("\r", "\n").strip()
        if required and not value:
            raise ReviewError(f"{what} is required")
        if len(value) > limit:
            raise ReviewError(f"{what} is {len(value)} characters long; the limit is {limit}")
        if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value):
            raise ReviewError(f"{what} contains control characters")
        if any(unicodedata.category(c) == "Cs" for c in value):  # JSON's "\ud800": no UTF-8
            raise ReviewError(f"{what} is not valid Unicode (a lone surrogate)")
        return value

    def _filename(self, value: str | None) -> str | None:
        """An uploaded file's name as the client sent it, kept for people to read: every
        control character (line breaks and tabs too) becomes a space, a byte that was not
        UTF-8 (a lone surrogate from the header's decoding) becomes U+FFFD, and a name over
        ``max_name_chars`` keeps its first characters, "..." and its extension. Never
        refused: the name is a label, and the upload is queued whatever it is called."""
        if value is None:
            return None
        clean = {"Cc": " ", "Cs": "\ufffd"}
        name = "".join(clean.get(unicodedata.category(c), c) for c in value).strip()
        limit = self.config.max_name_chars
        if len(name) > limit:
            stem, dot, ext = name.rpartition(".")
            ext = dot + ext if stem and len(ext) < 10 and limit >= 20 else ""
            name = name[: max(limit - len(ext) - 3, 0)] + "..." + ext
        return name or None

    # --- images ----------------------------------------------------------------------------

    def image_path(self, sha256: str) -> Path:
        return self.images / sha256[:2] / sha256

    def _store_image(self, sha256: str, data: bytes) -> None:
        """Keep the file (content-addressed), then hold the folder under its cap."""
        if len(data) > self.config.max_image_bytes:
            return  # larger than the whole folder may hold: the item keeps its verdict only
        path = self.image_path(sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        with self._db:
            self._db.execute(
                "INSERT INTO review_images VALUES (?, ?, ?) ON CONFLICT(sha256) DO UPDATE "
                "SET stored_at = excluded.stored_at",
                (sha256, len(data), _iso(_now())),
            )
        self._expire()
        self._hold_cap(keep=sha256)

    def _drop_images(self, shas: list[str], why: str) -> None:
        """Remove the images' rows, then the files of those whose row this call removed: two
        server processes that chose the same image (``--processes``) log its removal once."""
        removed = []
        with self._db:
            for sha in shas:
                cur = self._db.execute("DELETE FROM review_images WHERE sha256 = ?", (sha,))
                if cur.rowcount == 1:
                    removed.append(sha)
                    self._audit(None, "server", "image_removed", {"image_sha256": sha, "why": why})
        for sha in removed:
            self.image_path(sha).unlink(missing_ok=True)

    def _expire(self) -> None:
        cutoff = _iso(_now() - timedelta(days=self.config.expiry_days))
        old = [
            r[0]
            for r in self._db.execute(
                "SELECT sha256 FROM review_images WHERE stored_at < ?", (cutoff,)
            )
        ]
        if old:
            self._drop_images(old, f"older than {self.config.expiry_days:g} days")

    def _hold_cap(self, keep: str | None = None) -> None:
        """Drop images until the folder is under its cap, never ``keep`` (the image just stored,
        whose item may not exist yet: it would count as needed by none and go first)."""
        (total,) = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM review_images").fetchone()
        if total <= self.config.max_image_bytes:
            return
        # Images no open item needs go first, oldest first; then the oldest of the rest.
        rows = self._db.execute(
            "SELECT i.sha256, i.bytes, EXISTS (SELECT 1 FROM review_items r WHERE "
            "r.image_sha256 = i.sha256 AND r.status = 'open') AS needed FROM review_images i "
            "ORDER BY needed, i.stored_at"
        ).fetchall()
        drop = []
        for sha, size, _ in rows:
            if total <= self.config.max_image_bytes:
                break
            if sha == keep:
                continue
            drop.append(sha)
            total -= size
        self._drop_images(drop, f"image folder over its cap of {self.config.max_image_bytes} bytes")

    def image(self, item_id: int) -> tuple[bytes, str]:
        """The item's image file and its format name; 404 when it was never kept or expired."""
        item = self._item(item_id)
        path = self.image_path(item["image_sha256"])
        try:
            return path.read_bytes(), item["media_format"] or ""
        except FileNotFoundError:
            raise ReviewError(
                f"the image of review {item_id} is no longer kept (expired or over the cap)", 404
            ) from None

    # --- audit -----------------------------------------------------------------------------

    def _audit(self, item_id: int | None, actor: str, action: str, detail: dict) -> None:
        self._db.execute(
            "INSERT INTO review_audit (at, item_id, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
            (_iso(_now()), item_id, actor, action, json.dumps(detail, sort_keys=True)),
        )

    def audit(self, item_id: int | None = None, limit: int = 1000) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, item_id, actor, action, detail FROM review_audit "
                + ("WHERE item_id = ? " if item_id is not None else "")
                + "ORDER BY id LIMIT ?",
                ((item_id, limit) if item_id is not None else (limit,)),
            ).fetchall()
        return [
            {"id": r[0], "at": r[1], "item_id": r[2], "actor": r[3], "action": r[4],
             "detail": json.loads(r[5])}
            for r in rows
        ]  # fmt: skip

    # --- writing ---------------------------------------------------------------------------

    def submit(
        self,
        data: bytes,
        hashes: ImageHashes,
        verdict: dict,
        reason: str,
        actor: str,
        filename: str | None = None,
    ) -> int:
        """Queue a scored image (``reason``: uncertain or requested); returns the item id. An
        image already open in the queue joins its item (``seen`` counts the uploads)."""
        if reason not in REASONS:
            raise ReviewError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")
        sha = hashes.file_sha256 or ""
        filename = self._filename(filename)
        with self._lock:
            self._store_image(sha, data)
            with self._db:
                # the check and the insert in one write transaction: another server process
                # queueing the same picture at once joins this item instead of opening a twin
                self._db.execute("BEGIN IMMEDIATE")
                row = self._open_item(sha, hashes.pixel_sha256)
                if row is not None:
                    self._db.execute(
                        "UPDATE review_items SET seen = seen + 1, updated_at = ? WHERE id = ?",
                        (_iso(_now()), row),
                    )
                    self._audit(row, actor, "seen_again", {"reason": reason})
                    return row
                return self._insert(hashes, verdict, reason, actor, filename)

    def _open_item(self, sha: str, pixels: str | None = None) -> int | None:
        """The open item of this file, or of a byte-different copy of the same pixels (junk
        appended, metadata changed): one picture, one item."""
        row = self._db.execute(
            "SELECT id FROM review_items WHERE (image_sha256 = ? OR pixel_sha256 = ?) "
            "AND status = 'open' ORDER BY id DESC LIMIT 1",
            (sha, pixels or sha),
        ).fetchone()
        return None if row is None else int(row[0])

    def _insert(
        self, hashes: ImageHashes, verdict: dict, reason: str, actor: str, filename: str | None
    ) -> int:
        image = verdict.get("image") or {}
        now = _iso(_now())
        cur = self._db.execute(
            "INSERT INTO review_items (status, reason, created_at, updated_at, image_sha256, "
            "filename, media_format, width, height, label, probability, verdict, phash, dhash, "
            "pixel_sha256, windows) VALUES ('open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (reason, now, now, hashes.file_sha256, filename, image.get("format"),
             image.get("width"), image.get("height"), verdict.get("label"),
             verdict.get("probability"), json.dumps(verdict), hashes.phash, hashes.dhash,
             hashes.pixel_sha256, json.dumps(hashes.windows)),
        )  # fmt: skip
        item_id = int(cur.lastrowid or 0)
        self._audit(item_id, actor, "created", {"reason": reason, "label": verdict.get("label")})
        return item_id

    def report(
        self,
        reporter: str,
        reason: str,
        actor: str,
        sha256: str | None = None,
        scored: tuple[bytes, ImageHashes, dict] | None = None,
        filename: str | None = None,
    ) -> int:
        """A user's report of an image: a new upload (``scored``: file, hashes, verdict) or
        the sha256 of one the server kept. Joins the image's open item, or opens one."""
        reporter = self._text(reporter, "reporter", self.config.max_name_chars)
        reason = self._text(reason, "reason", self.config.max_note_chars)
        filename = self._filename(filename)
        with self._lock:
            if scored is not None:
                data, hashes, verdict = scored
                sha = hashes.file_sha256 or ""
                self._store_image(sha, data)
            else:
                sha = (sha256 or "").strip().lower()
                if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                    raise ReviewError("sha256 must be 64 hex digits")
                last = self._db.execute(
                    f"SELECT {_ITEM_COLUMNS} FROM review_items WHERE image_sha256 = ? "
                    "ORDER BY id DESC LIMIT 1",
                    (sha,),
                ).fetchone()
                if last is None:
                    raise ReviewError(
                        f"no image with sha256 {sha} was kept for review; send the image", 404
                    )
                item = self._row_dict(last)
                hashes = self._hashes(item)
                verdict, filename = item["verdict"], filename or item["filename"]
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")  # as in submit: one open item per picture
                row = self._open_item(sha, hashes.pixel_sha256)
                item_id = (
                    row
                    if row is not None
                    else self._insert(hashes, verdict, "report", actor, filename)
                )
                now = _iso(_now())
                self._db.execute(
                    "INSERT INTO review_reports (item_id, reporter, reason, at) VALUES (?, ?, ?, ?)",
                    (item_id, reporter, reason, now),
                )
                self._db.execute(
                    "UPDATE review_items SET updated_at = ? WHERE id = ?", (now, item_id)
                )
                self._audit(item_id, actor, "reported", {"reporter": reporter, "reason": reason})
        return item_id

    def decide(self, item_id: int, decision: Any, reviewer: Any, note: Any, actor: str) -> dict:
        """A reviewer's decision: ``generated``/``camera`` close the item and write the image
        to the known-image memory; ``skip`` leaves it open, behind the items not skipped."""
        if decision not in DECISIONS:
            raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        reviewer = self._text(reviewer, "reviewer", self.config.max_name_chars)
        note = self._text(note, "note", self.config.max_note_chars, required=False)
        with self._lock:
            item = self._item_locked(item_id)
            if item["status"] != "open":
                raise ReviewError(
                    f"review {item_id} was already decided ({item['decision']}) by "
                    f"{item['decided_by']} on {item['decided_at']}",
                    409,
                )
            now = _iso(_now())
            if decision == "skip":
                with self._db:
                    cur = self._db.execute(
                        "UPDATE review_items SET skips = skips + 1, updated_at = ? "
                        "WHERE id = ? AND status = 'open'",
                        (now, item_id),
                    )
                    if cur.rowcount != 1:  # decided meanwhile by another server process
                        raise self._decided_already(item_id)
                    self._audit(item_id, actor, "skipped", {"reviewer": reviewer, "note": note})
            else:
                self._decide_locked(item, decision, reviewer, note, actor, now)
        return self.get(item_id)

    def _decided_already(self, item_id: int) -> ReviewError:
        item = self._item_locked(item_id)
        return ReviewError(
            f"review {item_id} was already decided ({item['decision']}) by "
            f"{item['decided_by']} on {item['decided_at']}",
            409,
        )

    def _decide_locked(
        self, item: dict, decision: str, reviewer: str, note: str, actor: str, now: str
    ) -> None:
        """Close the item, and every other open item of the same pixels (a byte-different copy
        of one picture), then record the decision in the memory once. The item is claimed
        first with a conditional update, so that two server processes sharing the database
        cannot both decide it (the thread lock holds within one process only)."""
        item_id = item["id"]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                "UPDATE review_items SET status = 'decided', decision = ?, decided_by = ?, "
                "decided_at = ?, note = ?, updated_at = ? WHERE id = ? AND status = 'open'",
                (decision, reviewer, now, note, now, item_id),
            )
            if cur.rowcount != 1:
                raise self._decided_already(item_id)
            notes = {  # id -> note of the other open items of these pixels
                int(row[0]): row[1]
                for row in self._db.execute(
                    "SELECT id, note FROM review_items WHERE pixel_sha256 = ? AND status = 'open' "
                    "AND id != ?",
                    (item["pixel_sha256"], item_id),
                )
            }
            copies = sorted(notes)
            for other in copies:
                self._db.execute(
                    "UPDATE review_items SET status = 'decided', decision = ?, decided_by = ?, "
                    "decided_at = ?, note = ?, updated_at = ? WHERE id = ?",
                    (decision, reviewer, now, f"the same pixels as review {item_id}", now, other),
                )
        try:
            record = self.memory.add(
                self._hashes(item), decision, reviewer, note=note, source=f"review:{item_id}"
            )
        except (KnownImageError, sqlite3.Error, OSError) as exc:  # back to the queue as they were
            with self._db:
                for row_id in (item_id, *copies):
                    self._db.execute(
                        "UPDATE review_items SET status = 'open', decision = NULL, "
                        "decided_by = NULL, decided_at = NULL, note = ?, updated_at = ? "
                        "WHERE id = ?",
                        (notes.get(row_id, item["note"]), now, row_id),
                    )
            if isinstance(exc, KnownImageError):
                raise ReviewError(str(exc)) from None
            raise ReviewError(  # a busy or failing memory database: the decision can be retried
                f"decision not saved, the known-image memory could not be written ({exc}); "
                "the review is open again: retry",
                503,
            ) from None
        with self._db:
            for row_id in (item_id, *copies):
                self._db.execute(
                    "UPDATE review_items SET memory_id = ? WHERE id = ?", (record.id, row_id)
                )
            self._audit(item_id, actor, "decided",
                        {"decision": decision, "reviewer": reviewer, "note": note,
                         "memory_id": record.id})  # fmt: skip
            for other in copies:
                self._audit(other, actor, "decided_with",
                            {"decision": decision, "reviewer": reviewer, "item": item_id,
                             "memory_id": record.id})  # fmt: skip

    # --- reading ---------------------------------------------------------------------------

    def _row_dict(self, row: tuple) -> dict:
        d = dict(zip([c.strip() for c in _ITEM_COLUMNS.split(",")], row, strict=True))
        d["verdict"] = json.loads(d["verdict"])
        d["windows"] = tuple(tuple(pair) for pair in json.loads(d["windows"]))
        return d

    @staticmethod
    def _hashes(item: dict) -> ImageHashes:
        return ImageHashes(
            item["phash"], item["dhash"], item["pixel_sha256"], item["image_sha256"],
            item["windows"],
        )  # fmt: skip

    def _item_locked(self, item_id: int) -> dict:
        row = self._db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM review_items WHERE id = ?", (item_id,)
        ).fetchone()
        if row is None:
            raise ReviewError(f"no review with id {item_id}", 404)
        return self._row_dict(row)

    def _item(self, item_id: int) -> dict:
        with self._lock:
            return self._item_locked(item_id)

    def get(self, item_id: int) -> dict:
        """One item in full: verdict, reports, audit trail, whether its image is kept, and the
        known-image memory's matches for it now."""
        with self._lock:
            item = self._item_locked(item_id)
            reports = [
                {"reporter": r[0], "reason": r[1], "at": r[2]}
                for r in self._db.execute(
                    "SELECT reporter, reason, at FROM review_reports WHERE item_id = ? ORDER BY id",
                    (item_id,),
                )
            ]
        item["image_kept"] = self.image_path(item["image_sha256"]).exists()
        item["reports"] = reports
        item["audit"] = self.audit(item_id)
        item["known_matches"] = [m.to_dict() for m in self.memory.find(self._hashes(item))[:5]]
        del item["windows"]  # hashes of crop windows: for the memory, not for people
        return item

    def items(
        self, status: str = "open", limit: int = 50, offset: int = 0, after: str | None = None
    ) -> dict:
        """Items in review order: open ones by fewest skips, then oldest first; the others
        newest first. ``after`` (the ``next`` of the previous page) continues a listing while
        others decide and skip: an offset shifts under them and skips items, a cursor does not
        (an item skipped meanwhile moves later and may be listed again, never left out)."""
        if status not in (*STATUSES, "all"):
            raise ReviewError(f"status must be one of open, decided, all; got {status!r}")
        clauses, args = (["status = ?"], [status]) if status in STATUSES else ([], [])
        order = "skips, id" if status == "open" else "id DESC"
        if after is not None:
            if offset:
                raise ReviewError("give after or offset, not both")
            try:
                key = [int(x) for x in after.split(":")]
            except ValueError:
                key = []
            if any(not 0 <= k < 2**63 for k in key):  # past what SQLite's integers hold
                key = []
            if status == "open" and len(key) == 2:
                clauses.append("(skips > ? OR (skips = ? AND id > ?))")
                args += [key[0], key[0], key[1]]
            elif status != "open" and len(key) == 1:
                clauses.append("id < ?")
                args += key
            else:
                want = "SKIPS:ID" if status == "open" else "ID"
                raise ReviewError(f"after must be {want} (the next of the previous page)")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM review_items {where} ORDER BY {order} "
                "LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            counts = dict(
                self._db.execute("SELECT status, COUNT(*) FROM review_items GROUP BY status")
            )
        items = []
        for row in rows:
            d = self._row_dict(row)
            d["summary"] = d["verdict"].get("summary", "")
            del d["verdict"], d["windows"]
            items.append(d)
        last = items[-1] if len(items) == limit else None
        cursor = None if last is None else (
            f"{last['skips']}:{last['id']}" if status == "open" else str(last["id"])
        )  # fmt: skip
        return {"items": items, "counts": {s: counts.get(s, 0) for s in STATUSES}, "next": cursor}

    def stats(self) -> dict:
        with self._lock:
            counts = dict(
                self._db.execute("SELECT status, COUNT(*) FROM review_items GROUP BY status")
            )
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM review_images"
            ).fetchone()
        return {"items": {s: counts.get(s, 0) for s in STATUSES}, "images": n, "image_bytes": size}

    def close(self) -> None:
        with self._lock:
            self._db.close()
