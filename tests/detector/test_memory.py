"""Known-image memory: store, lookups under re-encoding, restarts, two writing processes, the
``known_image`` method's override in fusion, and the ``synthdetect memory`` commands."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detector.fusion import FusionConfig, fuse
from detector.image import decode
from detector.memory import ImportResult, KnownImageError, MatchRule, MemoryStore, hash_pixels
from detector.methods import Kind, MethodResult, MethodUnavailable, create_method, method_names
from training import metadata_writers as P

pytestmark = pytest.mark.unit


def _scene(seed: int, size: int = 256) -> np.ndarray:
    return P.synthetic_scene(seed, size, size)


def _jpeg(px: np.ndarray, quality: int = 90, scale: float = 1.0) -> bytes:
    img = Image.fromarray(px)
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _hashes(blob: bytes, windows: bool = False):
    img = decode(blob)
    return hash_pixels(img.pixels, img.data, windows)


def _crop(px: np.ndarray, left: float, top: float, right: float, bottom: float) -> bytes:
    h, w = px.shape[:2]
    box = px[round(top * h) : h - round(bottom * h), round(left * w) : w - round(right * w)]
    return _jpeg(np.ascontiguousarray(box), 90)


def test_crop_windows_find_cropped_re_uploads(tmp_path):
    """A 3-10% crop is found through the stored crop windows, and no other picture is."""
    store = MemoryStore(tmp_path / "m.sqlite")
    scenes = [_scene(s, 320) for s in range(20, 24)]
    with_windows = [
        store.add(_hashes(_jpeg(px), windows=True), "generated", "al") for px in scenes[:2]
    ]
    for px in scenes[2:]:
        store.add(_hashes(_jpeg(px)), "generated", "al")  # full frame only
    crops = [(0.1, 0.0, 0.0, 0.1), (0.03, 0.04, 0.03, 0.02), (0.0, 0.07, 0.05, 0.0)]
    for i, px in enumerate(scenes):
        for crop in crops:
            matches = store.find(_hashes(_crop(px, *crop)))
            assert all(m.record.id == i + 1 for m in matches), (i, crop)  # no other picture
            if i < 2:
                assert matches and matches[0].window > 0 and matches[0].to_dict()["cropped"]
    # an uncropped re-upload still matches the full frame (window 0)
    best = store.find(_hashes(_jpeg(scenes[0], 60)))[0]
    assert best.record.id == with_windows[0].id and best.window == 0
    assert store.stats()["indexed"] == 2 * 35 + 2


def test_stored_hashes_are_imagehash_of_the_colour_frame_and_windows():
    """The hashes a database holds stay what imagehash gives for the colour image and for each
    crop window cut from its colour copy scaled to 256 px: a change here would orphan every
    record stored before it (so a faster hash_pixels must not change a bit of them)."""
    import imagehash

    from detector.memory import CROP_WINDOWS

    for seed, (h, w) in ((3, (300, 700)), (4, (180, 120))):
        px = np.ascontiguousarray(P.synthetic_scene(seed, h, w))
        got = hash_pixels(px, windows=True)
        img = Image.fromarray(px)
        assert got.phash == str(imagehash.phash(img)) and got.dhash == str(imagehash.dhash(img))
        scale = 256 / max(w, h)
        if scale < 1:
            img = img.resize((round(w * scale), round(h * scale)), Image.LANCZOS)
        want = []
        for keep, ox, oy in CROP_WINDOWS:
            sw, sh = img.size
            crop = img.crop(
                (round(ox * sw), round(oy * sh), round((ox + keep) * sw), round((oy + keep) * sh))
            )
            want.append((str(imagehash.phash(crop)), str(imagehash.dhash(crop))))
        assert list(got.windows) == want


def test_schema_1_databases_are_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    h = _hashes(_jpeg(_scene(30)))
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE known_images (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL, "
        "phash TEXT NOT NULL, dhash TEXT NOT NULL, pixel_sha256 TEXT NOT NULL, file_sha256 TEXT, "
        "confirmed_by TEXT NOT NULL, confirmed_at TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', "
        "source TEXT NOT NULL DEFAULT '');"
        "CREATE TABLE memory_meta (key TEXT PRIMARY KEY, value TEXT);"
        "INSERT INTO memory_meta VALUES ('schema', '1');"
    )
    db.execute(
        "INSERT INTO known_images (label, phash, dhash, pixel_sha256, confirmed_by, confirmed_at)"
        " VALUES ('camera', ?, ?, ?, 'old', '2026-01-01')",
        (h.phash, h.dhash, h.pixel_sha256),
    )
    db.commit()
    db.close()
    with MemoryStore(path) as store:
        assert store.find(h)[0].record.confirmed_by == "old"
        store.add(_hashes(_jpeg(_scene(31)), windows=True), "generated", "new")
        assert store.stats()["indexed"] == 1 + 35


def test_finds_re_encoded_and_rescaled_uploads_and_not_other_images(tmp_path):
    store = MemoryStore(tmp_path / "m.sqlite")
    originals = [_jpeg(_scene(s)) for s in range(6)]
    for i, blob in enumerate(originals[:3]):
        store.add(_hashes(blob), "generated", "alice", note=f"n{i}")
    for i, blob in enumerate(originals[:3]):
        px = decode(blob).pixels
        for variant in (_jpeg(px, 50), _jpeg(px, 95, 0.5), _jpeg(px, 80, 1.5)):
            matches = store.find(_hashes(variant))
            assert matches and matches[0].record.note == f"n{i}", (i, matches)
            assert matches[0].phash_distance <= store.rule.max_phash and not matches[0].exact
        exact = store.find(_hashes(blob))
        assert exact[0].exact and exact[0].distance == 0
    for blob in originals[3:]:  # different pictures
        assert store.find(_hashes(blob)) == []
    assert store.stats()["by_label"] == {"generated": 3, "camera": 0}


def test_plain_images_match_only_exactly(tmp_path):
    """A blank, flat or plain-gradient image hashes like every other one (pHash 0): confirming
    one must not decide the others. They match their own pixels only; pictures with detail set
    32 pHash bits and match as near-duplicates as before."""
    from detector.memory import has_structure

    flat = np.full((64, 64, 3), (20, 40, 200), np.uint8)
    others = [
        np.full((600, 800, 3), (0, 0, 255), np.uint8),
        np.zeros((300, 300, 3), np.uint8),
        np.full((1, 1, 3), 7, np.uint8),
        np.repeat(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], 300, 0).repeat(3, 2),
    ]
    store = MemoryStore(tmp_path / "m.sqlite")
    blob = _jpeg(flat)
    store.add(_hashes(blob, windows=True), "generated", "alice")
    assert not has_structure(_hashes(blob))
    assert store.find(_hashes(blob))[0].exact  # the same file still matches
    for px in others:
        hashes = _hashes(_jpeg(np.ascontiguousarray(px)))
        assert not has_structure(hashes) and store.find(hashes) == []
    scene = _scene(3)
    assert has_structure(_hashes(_jpeg(scene)))
    store.add(_hashes(_jpeg(scene), windows=True), "generated", "alice")
    assert store.find(_hashes(_jpeg(scene, 60, 0.5)))  # near-duplicates of a picture still do


def test_records_survive_a_restart_and_are_checked(tmp_path):
    path = tmp_path / "m.sqlite"
    blob = _jpeg(_scene(1))
    with MemoryStore(path) as store:
        rec = store.add(_hashes(blob), "camera", "bob", note="beach photo", source="review")
        with pytest.raises(KnownImageError, match="label must be one of"):
            store.add(_hashes(blob), "fake", "bob")
        with pytest.raises(KnownImageError, match="who confirmed"):
            store.add(_hashes(blob), "camera", "  ")
    with MemoryStore(path) as again:
        (m,) = again.find(_hashes(_jpeg(decode(blob).pixels, 60)))
        assert m.record == rec and m.record.confirmed_by == "bob"
        assert again.stats()["indexed"] == 1
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(KnownImageError, match="not a usable memory database"):
        MemoryStore(tmp_path / "junk.sqlite")
    with pytest.raises(KnownImageError, match="is a directory"):
        MemoryStore(tmp_path)
    with pytest.raises(ValueError):
        MatchRule(max_phash=65)


def _writer(path: str, seed: int, n: int, queue) -> None:
    store = MemoryStore(path)
    for i in range(n):
        store.add(_hashes(_jpeg(_scene(seed * 1000 + i, 96))), "generated", f"writer{seed}")
    queue.put(seed)


def test_two_processes_write_at_once_and_each_reader_sees_all(tmp_path):
    path = tmp_path / "m.sqlite"
    reader = MemoryStore(path)  # opened before any write: must catch up from the database
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), s, 15, queue)) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(queue.get(timeout=5) for _ in procs) == [1, 2]
    assert reader.stats()["records"] == 30 and reader.stats()["indexed"] == 30
    probe = _hashes(_jpeg(_scene(2 * 1000 + 7, 96), 70))
    assert reader.find(probe)[0].record.confirmed_by == "writer2"


def test_export_import_round_trip_is_all_or_nothing(tmp_path):
    a = MemoryStore(tmp_path / "a.sqlite")
    for s in range(3):
        a.add(_hashes(_jpeg(_scene(s)), s == 1), "generated" if s else "camera", "carol", str(s))
    buf = io.StringIO()
    assert a.export_jsonl(buf) == 3
    lines = buf.getvalue().splitlines()
    b = MemoryStore(tmp_path / "b.sqlite")
    assert b.import_jsonl(lines) == ImportResult(3, 0, 0)
    assert [(r.label, r.note, r.phash) for r in b.records()] == [
        (r.label, r.note, r.phash) for r in a.records()
    ]
    assert [len(json.loads(line).get("windows", [])) for line in lines] == [0, 34, 0]
    assert b.stats()["indexed"] == a.stats()["indexed"] == 3 + 34
    bad = [*lines, json.dumps({**json.loads(lines[0]), "phash": "xyz"})]
    with pytest.raises(KnownImageError, match="line 4"):
        b.import_jsonl(bad)
    assert b.stats()["records"] == 3  # nothing of the bad file was written


def test_importing_an_export_again_adds_nothing(tmp_path):
    """A record the store holds (the same pixels, the same label) is skipped: an import is
    idempotent. The same picture with the other label is a new decision and is added."""
    a = MemoryStore(tmp_path / "a.sqlite")
    a.add(_hashes(_jpeg(_scene(1)), True), "generated", "carol")
    a.add(_hashes(_jpeg(_scene(2))), "camera", "dave")
    buf = io.StringIO()
    a.export_jsonl(buf)
    lines = buf.getvalue().splitlines()
    b = MemoryStore(tmp_path / "b.sqlite")
    assert b.import_jsonl(lines) == ImportResult(2, 0, 0)
    assert b.import_jsonl(lines) == ImportResult(0, 2, 0)
    assert a.import_jsonl(lines) == ImportResult(0, 2, 0)
    assert b.stats()["records"] == 2 and b.stats()["indexed"] == 2 + 34
    assert len(b.find(_hashes(_jpeg(_scene(1))))) == 1
    later = {**json.loads(lines[1]), "label": "generated", "confirmed_at": "2099-01-01T00:00:00Z"}
    assert b.import_jsonl([*lines, json.dumps(later)]) == ImportResult(1, 2, 0)
    assert b.stats()["by_label"] == {"generated": 2, "camera": 1}
    # the other label at the very moment of the recorded decision: which one holds? refused
    same_time = json.dumps({**json.loads(lines[1]), "label": "generated"})
    with pytest.raises(KnownImageError, match=r"confirmed camera at .* says generated at the same"):
        b.import_jsonl([same_time])
    with pytest.raises(KnownImageError, match="line 2: says generated, an earlier line camera"):
        MemoryStore(tmp_path / "c.sqlite").import_jsonl([lines[1], same_time])
    assert b.stats()["records"] == 3  # nothing of a refused file is written


def test_a_file_repeating_a_record_adds_it_once_and_an_old_decision_does_not_overturn_a_new(
    tmp_path,
):
    a = MemoryStore(tmp_path / "a.sqlite")
    a.add(_hashes(_jpeg(_scene(2))), "generated", "erin", confirmed_at="2026-01-01T00:00:00+00:00")
    buf = io.StringIO()
    a.export_jsonl(buf)
    old = buf.getvalue().splitlines()
    b = MemoryStore(tmp_path / "b.sqlite")
    assert b.import_jsonl(old + old) == ImportResult(
        1, 0, 1
    )  # the repeat within the file is skipped too
    photo = _hashes(_jpeg(_scene(2)))
    c = MemoryStore(tmp_path / "c.sqlite")
    c.add(photo, "camera", "frank", confirmed_at="2026-12-01T00:00:00+00:00")
    assert c.import_jsonl(old) == ImportResult(1, 0, 0)  # kept: a decision on record, not hidden
    assert c.find(photo)[0].record.label == "camera"  # but the newer one leads
    newer = json.dumps({**json.loads(old[0]), "confirmed_at": "2026-12-05T00:00:00+00:00"})
    c.import_jsonl([newer])
    assert c.find(photo)[0].record.label == "generated"


def test_known_image_method_decides_over_model_and_declarations(tmp_path):
    assert "known_image" not in method_names(available_only=True)  # needs a database
    with pytest.raises(MethodUnavailable, match="--memory-db"):
        create_method("known_image")
    db = tmp_path / "m.sqlite"
    gen, photo, other = (_jpeg(_scene(s)) for s in (1, 2, 3))
    with MemoryStore(db) as store:
        store.add(_hashes(gen), "generated", "alice")
        store.add(_hashes(photo), "camera", "bob", note="our photographer")
    method = create_method("known_image", memory_db=str(db))
    assert method.kind is Kind.MEMORY
    images = [decode(_jpeg(decode(b).pixels, 70, 0.75)) for b in (gen, photo, other)]
    r_gen, r_photo, r_other = method.score(images)
    assert r_gen.confirmed and r_gen.probability > 0.99
    assert "confirmed as generated" in r_gen.evidence[0].message and "by alice" in (
        r_gen.evidence[0].message
    )
    assert r_other.abstained and not r_other.confirmed
    # The model flags the confirmed photo and a declaration claims generation: the
    # reviewer's decision wins, and says so first.
    model = MethodResult("model", Kind.MODEL, 0.97)
    declared = MethodResult("c2pa", Kind.METADATA, 0.99, decisive=True)
    v = fuse([model, declared, r_photo], FusionConfig(threshold=0.9, camera_threshold=0.45))
    assert v.label == "camera" and v.decided_by == "known_image"
    assert v.evidence[0][0] == "known_image" and "our photographer" in v.summary
    v = fuse([MethodResult("model", Kind.MODEL, 0.1), r_gen], FusionConfig(0.9, 0.45))
    assert v.label == "generated" and v.decided_by == "known_image"
    v = fuse([model, r_other], FusionConfig(0.9, 0.45))
    assert v.decided_by == "fusion" and v.label == "generated"


def _cli(*args: str, env_db: str | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "SYNTHDETECT_MEMORY_DB"}
    if env_db:
        env["SYNTHDETECT_MEMORY_DB"] = env_db
    return subprocess.run(
        [sys.executable, "-m", "detector.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.slow
def test_memory_commands(tmp_path):
    db = str(tmp_path / "m.sqlite")
    img, again, other = tmp_path / "a.jpg", tmp_path / "a-small.jpg", tmp_path / "b.jpg"
    img.write_bytes(_jpeg(_scene(4)))
    again.write_bytes(_jpeg(decode(img.read_bytes()).pixels, 60, 0.5))
    other.write_bytes(_jpeg(_scene(5)))
    out = _cli("memory", "add", "--label", "generated", "--by", "dana", str(img), "--db", db)
    assert out.returncode == 0 and "recorded #1 as generated" in out.stdout
    out = _cli("memory", "find", "--json", str(again), str(other), env_db=db)
    found = json.loads(out.stdout)
    assert out.returncode == 0 and found[0]["matches"][0]["confirmed_by"] == "dana"
    assert found[1]["matches"] == []
    out = _cli("score", "--json", "--methods", "known_image", "--memory-db", db, str(again))
    verdict = json.loads(out.stdout)[0]["verdict"]
    assert verdict["label"] == "generated" and verdict["decided_by"] == "known_image"
    export = tmp_path / "mem.jsonl"
    mine = tmp_path / "mem.jsonl.partial"  # a file of the user's that the export replaced
    mine.write_text("mine")
    assert _cli("memory", "export", "--out", str(export), "--db", db).returncode == 0
    assert mine.read_text() == "mine" and export.stat().st_mode & 0o044  # readable as before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mem.jsonl-")]
    db2 = str(tmp_path / "m2.sqlite")
    assert _cli("memory", "import", str(export), "--db", db2).returncode == 0
    out = _cli("memory", "import", str(export), "--db", db2)  # again: nothing new
    assert out.returncode == 0
    assert out.stdout == "imported 0 records, skipped 1 already in the memory\n"
    stats = json.loads(_cli("memory", "stats", "--db", db2).stdout)
    assert stats["records"] == 1 and stats["by_label"]["generated"] == 1
    # Bad input: a clear message and exit 2, never a traceback; nothing half-recorded.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"label": "generated"}) + "\n")
    for args, message in [
        (("memory", "stats"), "no memory database"),
        (("memory", "stats", "--db", str(tmp_path / "none.sqlite")), "no memory database at"),
        (("memory", "add", "--label", "generated", str(img), str(tmp_path / "x.jpg"), "--db", db),
         "nothing recorded"),
        (("memory", "add", "--label", "maybe", str(img), "--db", db), "invalid choice"),
        (("memory", "import", str(bad), "--db", db), "line 1: missing field 'phash'; nothing imported"),
        (("memory", "import", str(img), "--db", db), "cannot read"),
        (("score", "--memory-db", str(tmp_path), str(img)), "is a directory"),
        (("memory", "stats", "--db", str(tmp_path)), "is a directory"),
        (("memory", "export", "--out", str(tmp_path), "--db", db), f"--out {tmp_path} is a directory"),
        (("memory", "export", "--out", "/dev/null", "--db", db), "--out /dev/null is not a regular file"),
        (("memory", "export", "--out", str(tmp_path / "no" / "e.jsonl"), "--db", db),
         f"cannot write {tmp_path / 'no' / 'e.jsonl'}: No such file or directory"),
        (("score", "--memory-db", str(tmp_path / "none.sqlite"), str(img)), "no memory database at"),
        # the export written over the database it read (it said "exported 1 records")
        (("memory", "export", "--out", db, "--db", db), "an input of this command"),
    ]:  # fmt: skip
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert json.loads(_cli("memory", "stats", "--db", db).stdout)["records"] == 1


def test_imported_times_are_utc_and_fields_are_checked(tmp_path):
    a = MemoryStore(tmp_path / "a.sqlite")
    a.add(_hashes(_jpeg(_scene(3))), "generated", "alice", confirmed_at="2026-12-07T13:46:00Z")
    buf = io.StringIO()
    a.export_jsonl(buf)
    (line,) = buf.getvalue().splitlines()
    record = json.loads(line)
    assert record["confirmed_at"] == "2026-12-07T13:46:00+00:00"
    # 20:00 in Tokyo is 11:00 UTC: earlier than alice's decision, so hers still leads
    tokyo = {**record, "label": "camera", "confirmed_by": "mallory",
             "confirmed_at": "2026-12-07T20:00:00+09:00"}  # fmt: skip
    assert a.import_jsonl([json.dumps(tokyo)]) == ImportResult(1, 0, 0)
    (first, *_) = a.find(_hashes(_jpeg(_scene(3))))
    assert first.record.label == "generated"
    stored = {
        m.record.confirmed_by: m.record.confirmed_at for m in a.find(_hashes(_jpeg(_scene(3))))
    }
    assert stored["mallory"] == "2026-12-07T11:00:00+00:00"
    for change, message in [
        ({"confirmed_at": "n/a"}, "is not an ISO 8601 time"),
        ({"confirmed_at": 12345}, "must be an ISO 8601 time as text"),
        ({"confirmed_at": [1]}, "must be an ISO 8601 time as text"),
        ({"confirmed_at": "2026-12-07T20:00:00"}, "has no time zone"),
        ({"confirmed_at": "9999-12-31T23:59:59-05:00"}, "is out of range"),  # was a traceback
        ({"file_sha256": [1]}, "file_sha256 must be 64 lower-case hex digits"),
        ({"pixel_sha256": ""}, "pixel_sha256 must be 64 lower-case hex digits"),
        ({"confirmed_by": None}, "who confirmed the image is required"),
        ({"note": {"a": 1}}, "note must be text"),
    ]:
        with pytest.raises(KnownImageError, match=f"line 1: .*{message}"):
            a.import_jsonl([json.dumps({**record, **change})])


def test_another_sqlite_file_is_refused_and_left_unchanged(tmp_path):
    """Opening any SQLite file as the memory added the memory's tables to it and switched it
    to WAL, even for `memory stats`."""
    import sqlite3

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    before = path.read_bytes()
    with pytest.raises(KnownImageError, match="not a synthdetect memory database"):
        MemoryStore(path)
    assert path.read_bytes() == before
    res = _cli("memory", "stats", "--db", str(path))
    assert res.returncode == 2 and "not a synthdetect memory database" in res.stderr
    assert path.read_bytes() == before and not (tmp_path / "app.db-wal").exists()


def test_a_read_only_memory_is_looked_up_and_refuses_writes(tmp_path):
    """A memory file this process may not write was 'not a usable memory database (attempt to
    write a readonly database)', even for lookups."""
    import os

    path = tmp_path / "m.sqlite"
    with MemoryStore(path) as store:
        store.add(_hashes(_jpeg(_scene(5))), "generated", "alice")
    path.chmod(0o444)
    # as root every file is writable: then the mode is asked for, as os.access would choose it
    with MemoryStore(path, read_only=None if os.access(path, os.W_OK) is False else True) as store:
        assert store.read_only and store.stats()["records"] == 1
        assert store.find(_hashes(_jpeg(_scene(5), quality=80)))[0].record.label == "generated"
        with pytest.raises(KnownImageError, match="read-only here"):
            store.add(_hashes(_jpeg(_scene(6))), "camera", "bob")


def test_a_damaged_memory_is_a_message_not_a_traceback(tmp_path):
    path = tmp_path / "m.sqlite"
    with MemoryStore(path) as store:
        for i in range(40):
            store.add(_hashes(_jpeg(_scene(i, 64))), "generated", "alice")
    data = bytearray(path.read_bytes())
    data[4096:8096] = b"\x07" * 4000  # a page of the table overwritten
    path.write_bytes(bytes(data))
    res = _cli("memory", "stats", "--db", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "malformed" in res.stderr or "not a usable memory database" in res.stderr


def _sticker(seed: int, size: int = 120, at: tuple[int, int] = (620, 40)) -> np.ndarray:
    """A picture pasted small on a white 800x600 canvas (the audit's sticker)."""
    canvas = np.full((600, 800, 3), 255, np.uint8)
    canvas[at[1] : at[1] + size, at[0] : at[0] + size] = _scene(seed, size)
    return canvas


def test_a_small_picture_on_a_plain_background_matches_only_exactly(tmp_path):
    """Two different pictures pasted small at one spot of a plain canvas hashed within 2 bits
    of each other (the hashes encode where they sit): one confirmed sticker decided the other,
    'generated 0.999'. Such an image is matched only exactly, and the evidence says why."""
    store = MemoryStore(tmp_path / "m.sqlite")
    blob = _jpeg(_sticker(1))
    store.add(_hashes(blob, windows=True), "generated", "alice")
    assert store.find(_hashes(blob))[0].exact  # the same file still matches
    for seed in (2, 3, 4):
        assert store.find(_hashes(_jpeg(_sticker(seed)))) == [], seed

    from detector.memory import detail_share, has_structure, plainness

    for seed in (2, 3, 4):
        other = _hashes(_jpeg(_sticker(seed)))
        assert other.detail is not None and other.detail < 0.05
        assert not has_structure(other) and "detail covers" in plainness(other)
    method = create_method("known_image", memory_db=store)
    (r,) = method.score([decode(_jpeg(_sticker(2)))])
    assert r.abstained and "only exact copies are looked up" in r.evidence[0].message
    assert "detail covers" in r.evidence[0].message
    # a photo covers its frame: near-duplicates of a picture still match
    assert detail_share(_scene(3)) == 1.0 and detail_share(np.full((9, 9, 3), 7, np.uint8)) == 1
    store.add(_hashes(_jpeg(_scene(3)), windows=True), "generated", "alice")
    assert store.find(_hashes(_jpeg(_scene(3), 60, 0.5)))


def test_the_latest_decision_decides_and_the_evidence_names_the_others(tmp_path):
    """Ten older copies confirmed as generated outvoted a newer camera decision by hash noise,
    and the camera decision went unmentioned: the latest decision leads whatever the
    distances, and the verdict says who decided otherwise before."""
    store = MemoryStore(tmp_path / "m.sqlite")
    px = _scene(7, 320)
    for i, q in enumerate((60, 70, 80, 90, 95, 65, 75, 85, 92, 97)):
        store.add(_hashes(_jpeg(px, q), True), "generated", "alice",
                  confirmed_at=f"2026-01-{i + 1:02d}T00:00:00Z")  # fmt: skip
    store.add(_hashes(_jpeg(px, 88, 0.9), True), "camera", "bob", note="overturned",
              confirmed_at="2026-06-01T00:00:00Z")  # fmt: skip
    for crop in ((0, 0, 0, 0), (0.03, 0.03, 0.03, 0.03), (0.05, 0.0, 0.0, 0.05)):
        matches = store.find(_hashes(_crop(px, *crop)))
        assert matches[0].record.label == "camera", (crop, matches[0])
    exact = store.find(_hashes(_jpeg(px, 60)))  # the same file as alice's first record
    assert exact[0].record.label == "camera" and any(m.exact for m in exact)
    method = create_method("known_image", memory_db=store)
    (r,) = method.score([decode(_jpeg(px, 60))])
    assert r.probability == pytest.approx(0.001) and "by bob" in r.evidence[0].message
    message = r.evidence[0].message
    assert "also confirmed generated by alice on 2026-01-10" in message and "7 more" in message
    assert len(r.details["conflicts"]) == 10
    # one decision each way: the newer one holds, the older is named
    a = MemoryStore(tmp_path / "a.sqlite")
    a.add(_hashes(_jpeg(px, 95)), "generated", "alice", confirmed_at="2026-03-01T10:00:00Z")
    a.add(_hashes(_jpeg(px, 90)), "camera", "bob", confirmed_at="2026-03-02T10:00:00Z")
    (r,) = create_method("known_image", memory_db=a).score([decode(_jpeg(px, 95))])
    assert r.probability == pytest.approx(0.001)
    assert "also confirmed generated by alice on 2026-03-01" in r.evidence[0].message


def test_two_labels_in_one_second_export_and_import_again(tmp_path):
    """Times were stored to the second: a picture labelled twice within one second exported
    a file that its own import refused ('same pixels at the same time')."""
    a = MemoryStore(tmp_path / "a.sqlite")
    h = _hashes(_jpeg(_scene(8)))
    first = a.add(h, "generated", "alice")
    second = a.add(h, "camera", "bob")
    assert "." in first.confirmed_at and first.confirmed_at != second.confirmed_at
    assert first.confirmed_at.endswith("+00:00")
    buf = io.StringIO()
    a.export_jsonl(buf)
    b = MemoryStore(tmp_path / "b.sqlite")
    assert b.import_jsonl(buf.getvalue().splitlines()) == ImportResult(2, 0, 0)
    assert b.import_jsonl(buf.getvalue().splitlines()) == ImportResult(0, 2, 0)
    assert b.find(h)[0].record.label == "camera"
    # add refuses the other label at the very moment of a decision, as import does
    with pytest.raises(KnownImageError, match="at the same time"):
        a.add(h, "generated", "carol", confirmed_at=second.confirmed_at)
    # records stored to the second are read and ordered with the new ones
    a.add(_hashes(_jpeg(_scene(9))), "camera", "old", confirmed_at="2026-01-01T00:00:00Z")
    assert [r.confirmed_at for r in a.records()][-1] == "2026-01-01T00:00:00+00:00"


def test_the_same_decision_twice_is_one_record(tmp_path):
    """`memory add` of one file twice with one label stored two identical records; an import
    reported a line its file repeated as 'already in the memory'."""
    store = MemoryStore(tmp_path / "m.sqlite")
    h = _hashes(_jpeg(_scene(10)), True)
    assert store.add(h, "generated", "alice") == store.add(h, "generated", "alice")
    assert store.stats()["records"] == 1
    store = MemoryStore(tmp_path / "m2.sqlite")
    rec, added = store.add_checked(h, "generated", "alice")
    assert added
    again, added = store.add_checked(h, "generated", "bob")
    assert not added and again == rec and store.stats()["records"] == 1
    assert store.add_checked(h, "camera", "carol")[1]  # a new decision is recorded
    assert store.add_checked(h, "generated", "dave")[1]  # and so is the one overturning it
    assert store.stats()["records"] == 3
    buf = io.StringIO()
    store.export_jsonl(buf)
    line = buf.getvalue().splitlines()[0]
    fresh = MemoryStore(tmp_path / "fresh.sqlite")
    assert fresh.import_jsonl([line, line, line]) == ImportResult(1, 0, 2)
    assert fresh.import_jsonl([line]) == ImportResult(0, 1, 0)


def _open_old(path: str, barrier, queue) -> None:
    barrier.wait()
    try:
        MemoryStore(path).close()
        queue.put("ok")
    except Exception as exc:  # reported to the test, which names it
        queue.put(f"{type(exc).__name__}: {exc}")


def _schema_1(path) -> None:
    import sqlite3

    with MemoryStore(path) as store:
        store.add(_hashes(_jpeg(_scene(11, 64))), "generated", "old")
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE known_images DROP COLUMN windows")
    db.execute("UPDATE memory_meta SET value = '1'")
    db.commit()
    db.close()


def test_several_processes_upgrade_a_schema_1_memory_at_once(tmp_path):
    """Processes opening an old memory together each added the windows column: 'duplicate
    column name: windows' in 1 of 5 trials with 4 processes."""
    ctx = mp.get_context("fork")
    for trial in range(6):
        path = tmp_path / f"old{trial}.sqlite"
        _schema_1(path)
        barrier, queue = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_old, args=(str(path), barrier, queue)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [queue.get(timeout=5) for _ in procs] == ["ok"] * 6, trial
        with MemoryStore(path) as store:
            assert store.stats()["records"] == 1


@pytest.mark.slow
def test_memory_commands_say_what_they_did_and_leave_nothing_behind(tmp_path):
    """`memory add` of one file twice stored it twice; a sticker was recorded without the
    warning plain images get; a failed import into a new path left an empty memory that
    `score --memory-db` accepted; an import called a line its file repeated 'already in the
    memory'; `memory find` called a crop match just 'distance N'."""
    db = str(tmp_path / "m.sqlite")
    img, sticker, crop = tmp_path / "a.jpg", tmp_path / "s.jpg", tmp_path / "a-crop.jpg"
    px = _scene(12, 320)
    img.write_bytes(_jpeg(px))
    sticker.write_bytes(_jpeg(_sticker(5)))
    crop.write_bytes(_crop(px, 0.06, 0.0, 0.0, 0.04))
    add = ("memory", "add", "--label", "generated", "--by", "dana", "--db", db)
    out = _cli(*add, str(img), str(sticker))
    assert out.returncode == 0 and "recorded #1" in out.stdout, out.stderr
    assert "s.jpg: recorded #2" in out.stdout and "detail covers" in out.stdout
    assert "only this exact image will match" in out.stdout
    out = _cli(*add, str(img))
    assert out.returncode == 0 and "already recorded as generated (#1, by dana" in out.stdout
    assert json.loads(_cli("memory", "stats", "--db", db).stdout)["records"] == 2
    out = _cli("memory", "find", "--db", db, str(crop))
    assert out.returncode == 0 and "a crop of it, distance" in out.stdout, out.stdout
    # a file repeating a line: told apart from records the memory held
    export = tmp_path / "mem.jsonl"
    assert _cli("memory", "export", "--out", str(export), "--db", db).returncode == 0
    first = export.read_text().splitlines()[0]
    export.write_text("\n".join([first, *export.read_text().splitlines()]) + "\n")
    out = _cli("memory", "import", str(export), "--db", str(tmp_path / "new.sqlite"))
    assert out.stdout == (
        "imported 2 records, skipped 0 already in the memory, 1 repeated within the file\n"
    )
    # a failed import into a new path leaves no memory behind, bad line or conflicting record
    bad = tmp_path / "bad.jsonl"
    bad.write_text(first + "\n" + json.dumps({"label": "generated"}) + "\n")
    fresh = tmp_path / "fresh.sqlite"
    out = _cli("memory", "import", str(bad), "--db", str(fresh))
    assert out.returncode == 2 and "line 2: missing field 'phash'" in out.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("fresh")]
    out = _cli("score", "--memory-db", str(fresh), str(img))
    assert out.returncode == 2 and "no memory database at" in out.stderr


def test_an_upgrade_finished_by_another_process_meanwhile_is_not_repeated(tmp_path, monkeypatch):
    """The race of the test above made certain: another process upgrades the memory after this
    one read schema 1 and before it alters the table."""
    import sqlite3

    import detector.memory as memory

    path = tmp_path / "old.sqlite"
    _schema_1(path)
    shared, fired = memory.connect_shared, []

    class Interleaved(sqlite3.Connection):
        def execute(self, sql, *args):
            if not fired and sql.lstrip().upper().startswith(("BEGIN IMMEDIATE", "ALTER")):
                fired.append(sql)
                MemoryStore(path).close()  # the other process, done before this one writes
            return super().execute(sql, *args)

    def connect_once(db_path):  # this store's connection; the other one's is the usual
        monkeypatch.setattr(memory, "connect_shared", shared)
        db = sqlite3.connect(db_path, timeout=30.0, check_same_thread=False, factory=Interleaved)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    monkeypatch.setattr(memory, "connect_shared", connect_once)
    with MemoryStore(path) as store:
        assert fired and store.stats()["records"] == 1
