"""The review queue: storage (items, reports, audit, images) and its HTTP routes with roles."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import struct
from datetime import datetime, timedelta, timezone

import pytest

from detector.image import decode
from detector.memory import MemoryStore, hash_pixels
from serving.app import HttpConfig
from serving.review import ReviewConfig, ReviewError, ReviewQueue
from tests.serving.test_server import jpeg, request, tiny_png
from training import metadata_writers as P


def _scored(seed: int, size: int = 96) -> tuple[bytes, object, dict]:
    data = jpeg(seed, size)
    img = decode(data)
    verdict = {"label": "uncertain", "probability": 0.5, "summary": f"image {seed}",
               "image": {"format": "JPEG", "width": img.width, "height": img.height}}  # fmt: skip
    return data, hash_pixels(img.pixels, data), verdict


@pytest.fixture
def queue(tmp_path):
    db = tmp_path / "review.sqlite"
    memory = MemoryStore(db)
    q = ReviewQueue(db, memory)
    yield q
    q.close()
    memory.close()


@pytest.mark.unit
def test_submit_decide_writes_memory_and_audit(queue):
    data, hashes, verdict = _scored(1)
    item_id = queue.submit(data, hashes, verdict, "uncertain", "key0", "a.jpg")
    # the same file while its item is open joins it
    assert queue.submit(data, hashes, verdict, "requested", "key1") == item_id
    item = queue.get(item_id)
    assert item["status"] == "open" and item["seen"] == 2 and item["image_kept"]
    assert queue.image(item_id) == (data, "JPEG")
    done = queue.decide(item_id, "generated", "alice", "seen on a forum", "reviewer0")
    assert done["status"] == "decided" and done["decided_by"] == "alice"
    record = queue.memory.get(done["memory_id"])
    assert record.label == "generated" and record.confirmed_by == "alice"
    assert record.source == f"review:{item_id}" and record.note == "seen on a forum"
    # the memory now finds it, and the item shows the match
    assert queue.get(item_id)["known_matches"][0]["id"] == record.id
    assert [a["action"] for a in queue.audit(item_id)] == ["created", "seen_again", "decided"]
    assert queue.audit(item_id)[-1]["actor"] == "reviewer0"
    with pytest.raises(ReviewError, match="already decided") as err:
        queue.decide(item_id, "camera", "bob", "", "reviewer1")
    assert err.value.status == 409
    # decided: a new upload of the same file opens a new item
    assert queue.submit(data, hashes, verdict, "requested", "key0") != item_id


@pytest.mark.unit
def test_byte_different_copies_of_one_picture_are_one_item_decided_once(queue):
    data, hashes, verdict = _scored(11)
    first = queue.submit(data, hashes, verdict, "uncertain", "key0")
    for junk in (b"x", b"yy"):  # the same pixels, other bytes (junk after the JPEG's end)
        copy = data + junk
        again = hash_pixels(decode(copy).pixels, copy)
        assert again.file_sha256 != hashes.file_sha256
        assert queue.submit(copy, again, verdict, "requested", "key1") == first
    queue.decide(first, "camera", "dana", "", "key9")
    assert queue.memory.stats()["records"] == 1


@pytest.mark.unit
def test_a_second_process_cannot_decide_what_the_first_did(queue, tmp_path):
    """Two server processes share the database; each has its own thread lock. The second
    read the item as open just before the first decided it: its claim fails (409) and the
    memory holds one decision, not two opposite ones."""
    item_id = queue.submit(*_scored(12)[:3], "uncertain", "key0")
    other = ReviewQueue(tmp_path / "review.sqlite", queue.memory)
    stale = other.get(item_id)  # open, as the second process saw it
    queue.decide(item_id, "generated", "alice", "", "key1")
    now = datetime.now(timezone.utc).isoformat()
    with pytest.raises(ReviewError, match="already decided \\(generated\\) by alice") as err:
        other._decide_locked(stale, "camera", "bob", "", "key2", now)
    assert err.value.status == 409
    assert queue.memory.stats()["by_label"] == {"generated": 1, "camera": 0}
    other.close()


@pytest.mark.unit
def test_a_cursor_lists_every_open_item_while_others_skip_and_decide(queue):
    ids = [queue.submit(*_scored(20 + i)[:3], "uncertain", "key0") for i in range(8)]
    page = queue.items("open", limit=3)
    listed = [item["id"] for item in page["items"]]
    assert listed == ids[:3] and page["next"] == f"0:{ids[2]}"
    queue.decide(ids[0], "skip", "ann", "", "key1")  # another reviewer meanwhile
    queue.decide(ids[3], "camera", "ann", "", "key1")
    while page["next"]:
        page = queue.items("open", limit=3, after=page["next"])
        listed += [item["id"] for item in page["items"]]
    assert set(ids) - {ids[3]} <= set(listed)  # none left out (the skipped one comes again)
    with pytest.raises(ReviewError, match="after must be SKIPS:ID"):
        queue.items("open", after="7")
    with pytest.raises(ReviewError, match="after or offset, not both"):
        queue.items("open", offset=3, after="0:1")
    decided = queue.items("decided", limit=1)
    assert (
        decided["next"] == str(ids[3]) and queue.items("decided", after=str(ids[3]))["items"] == []
    )


@pytest.mark.unit
def test_audit_is_append_only(queue):
    data, hashes, verdict = _scored(2)
    queue.submit(data, hashes, verdict, "uncertain", "key0")
    db = sqlite3.connect(queue.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE review_audit SET actor = 'someone else'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM review_audit")
    db.close()


@pytest.mark.unit
def test_skip_keeps_open_behind_the_others(queue):
    ids = [queue.submit(*_scored(s)[:3], "uncertain", "key0") for s in (3, 4, 5)]
    queue.decide(ids[0], "skip", "alice", "", "reviewer0")
    order = [i["id"] for i in queue.items("open")["items"]]
    assert order == [ids[1], ids[2], ids[0]]
    assert queue.get(ids[0])["skips"] == 1 and queue.items("decided")["items"] == []
    assert queue.items("all", limit=2, offset=1)["counts"] == {"open": 3, "decided": 0}


@pytest.mark.unit
def test_reports_by_upload_and_by_sha(queue):
    data, hashes, verdict = _scored(6)
    first = queue.report("user1", "looks generated", "key0", scored=(data, hashes, verdict))
    # a second report of the same image joins the open item
    again = queue.report("user2", "same", "key1", sha256=hashes.file_sha256.upper())
    assert again == first
    item = queue.get(first)
    assert item["reason"] == "report" and [r["reporter"] for r in item["reports"]] == [
        "user1",
        "user2",
    ]
    with pytest.raises(ReviewError, match="no image with sha256") as err:
        queue.report("user3", "?", "key0", sha256="ab" * 32)
    assert err.value.status == 404
    with pytest.raises(ReviewError, match="64 hex digits"):
        queue.report("user3", "?", "key0", sha256="xyz")
    with pytest.raises(ReviewError, match="reporter is required"):
        queue.report(" ", "?", "key0", sha256=hashes.file_sha256)


@pytest.mark.unit
def test_bad_decisions_are_refused(queue):
    item_id = queue.submit(*_scored(7)[:3], "uncertain", "key0")
    for decision, reviewer, note, match in [
        ("maybe", "alice", "", "decision must be one of"),
        ("camera", "", "", "reviewer is required"),
        ("camera", "alice", "x" * 2001, "note is 2001 characters long"),
        ("camera", 7, "", "reviewer must be a string"),
        ("camera", "al\x00ice", "", "control characters"),
    ]:
        with pytest.raises(ReviewError, match=match):
            queue.decide(item_id, decision, reviewer, note, "reviewer0")
    with pytest.raises(ReviewError, match="no review with id 999") as err:
        queue.decide(999, "camera", "alice", "", "reviewer0")
    assert err.value.status == 404
    assert queue.get(item_id)["status"] == "open"


@pytest.mark.unit
def test_image_folder_cap_and_expiry(tmp_path):
    db = tmp_path / "review.sqlite"
    memory = MemoryStore(db)
    files = [_scored(s, 128) for s in (8, 9, 10)]
    cap = len(files[0][0]) + len(files[1][0]) + 10
    q = ReviewQueue(db, memory, ReviewConfig(max_image_bytes=cap, expiry_days=1))
    ids = [q.submit(d, h, v, "uncertain", "key0") for d, h, v in files[:2]]
    q.decide(ids[1], "camera", "alice", "", "reviewer0")
    # over the cap: the decided item's image goes first, though it is newer
    ids.append(q.submit(*files[2], "uncertain", "key0"))
    assert [q.get(i)["image_kept"] for i in ids] == [True, False, True]
    with pytest.raises(ReviewError, match="no longer kept") as err:
        q.image(ids[1])
    assert err.value.status == 404
    assert q.get(ids[1])["decision"] == "camera"  # the item outlives its image
    removed = [a for a in q.audit() if a["action"] == "image_removed"]
    assert len(removed) == 1 and "cap" in removed[0]["detail"]["why"]
    # another server process (--processes) chose the same image: removed, and logged, once
    other = ReviewQueue(db, memory, ReviewConfig(max_image_bytes=cap, expiry_days=1))
    other._drop_images([q.get(ids[1])["image_sha256"]], "image folder over its cap")
    other.close()
    assert len([a for a in q.audit() if a["action"] == "image_removed"]) == 1
    # expiry: images stored more than a day ago are removed when the queue opens
    old = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat(timespec="seconds")
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE review_images SET stored_at = ?", (old,))
    q.close()
    q = ReviewQueue(db, memory, ReviewConfig(expiry_days=1))
    assert not any(q.get(i)["image_kept"] for i in ids) and q.stats()["images"] == 0
    assert not any(p.is_file() for p in q.images.rglob("*"))
    q.close()
    memory.close()


# --- through the server ---------------------------------------------------------------------


def _post_json(live, path, payload, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return request(live.url, path, json.dumps(payload).encode(), headers)


def _get(live, path, key=None):
    return request(live.url, path, headers={"Authorization": f"Bearer {key}"} if key else {})


@pytest.mark.integration
def test_review_flow_through_the_api_with_roles(make_server, tmp_path):
    db = tmp_path / "review.sqlite"
    http = HttpConfig(access_log=False, api_keys=("score-key",), reviewer_keys=("review-key",))
    live = make_server(http, review_db=db)
    auth = {"Authorization": "Bearer score-key"}
    photo = jpeg(41, 160)
    # every method abstains on a plain JPEG when only c2pa runs: uncertain -> queued
    status, _, body = request(live.url, "/v1/score?methods=c2pa", photo, auth)
    rec = json.loads(body)
    assert status == 200 and rec["verdict"]["label"] == "uncertain" and "review_id" in rec
    item_id = rec["review_id"]
    # a confident verdict is not queued unless asked
    other = json.loads(request(live.url, "/v1/score", jpeg(42, 160), auth)[2])
    assert ("review_id" in other) == (other["verdict"]["label"] == "uncertain")
    status, _, body = request(live.url, "/v1/score?review=true", jpeg(43, 160), auth)
    requested = json.loads(body)["review_id"]
    # scoring keys may not read or decide the queue; reviewer keys may
    for path in ("/v1/reviews", f"/v1/reviews/{item_id}", f"/v1/reviews/{item_id}/image"):
        status, _, body = _get(live, path, "score-key")
        assert status == 403 and "reviewer key" in json.loads(body)["error"]
        assert _get(live, path)[0] == 401
        status, _, body = _get(live, path, "wrong-key")
        assert status == 401 and json.loads(body)["error"] == "missing or invalid API key"
    status, _, body = _post_json(
        live, f"/v1/reviews/{item_id}", {"decision": "camera", "reviewer": "x"}, "score-key"
    )
    assert status == 403
    status, _, body = _get(live, "/v1/reviews?status=open", "review-key")
    listed = json.loads(body)
    assert status == 200 and {i["id"] for i in listed["items"]} >= {item_id, requested}
    status, headers, image = _get(live, f"/v1/reviews/{item_id}/image", "review-key")
    assert status == 200 and image == photo and headers["Content-Type"] == "image/jpeg"
    status, _, body = _get(live, f"/v1/reviews/{item_id}/heatmap", "review-key")
    assert status == 200 and len(json.loads(body)["tiles"]) == 9
    # a user reports the same image by its sha256: it joins the item
    sha = json.loads(_get(live, f"/v1/reviews/{item_id}", "review-key")[2])["image_sha256"]
    status, _, body = _post_json(
        live, "/v1/reports", {"sha256": sha, "reason": "fake", "reporter": "u1"}, "score-key"
    )
    assert status == 201 and json.loads(body)["review_id"] == item_id
    # the decision reaches the memory: the photo is now decided by it
    status, _, body = _post_json(
        live,
        f"/v1/reviews/{item_id}",
        {"decision": "camera", "reviewer": "alice", "note": "my own photo"},
        "review-key",
    )
    item = json.loads(body)
    assert status == 200 and item["status"] == "decided" and item["memory_id"]
    assert [a["action"] for a in item["audit"]] == ["created", "reported", "decided"]
    assert item["audit"][-1]["actor"] == "reviewer0" and item["reports"][0]["reporter"] == "u1"
    _, _, body = request(live.url, "/v1/score", photo, auth)
    verdict = json.loads(body)["verdict"]
    assert verdict["decided_by"] == "known_image" and "by alice" in verdict["summary"]
    with MemoryStore(db) as store:
        assert store.stats()["by_label"]["camera"] == 1
    # a report with the image itself (multipart), scored on arrival
    boundary = "b0undary"
    parts = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="reason"\r\n\r\nspam\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="reporter"\r\n\r\nu2\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="r.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg(44, 160)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, body = request(
        live.url,
        "/v1/reports",
        parts,
        {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    out = json.loads(body)
    assert status == 201 and out["verdict"]["label"] in ("generated", "camera", "uncertain")
    status, _, body = _get(live, f"/v1/reviews/{out['review_id']}", "review-key")
    assert json.loads(body)["filename"] == "r.jpg" and json.loads(body)["reason"] == "report"


@pytest.mark.integration
def test_bad_input_to_review_endpoints_is_4xx_and_the_server_keeps_serving(
    make_server, tmp_path, caplog
):
    live = make_server(review_db=tmp_path / "review.sqlite")
    _, _, body = request(live.url, "/v1/score?review=true", jpeg(51, 128))
    item_id = json.loads(body)["review_id"]
    cases = [
        (_get(live, "/v1/reviews/999"), 404, "no review with id 999"),
        (_get(live, "/v1/reviews/abc"), 400, "positive integer"),
        (_get(live, "/v1/reviews/%C2%B2"), 400, "positive integer"),  # superscript 2: isdigit()
        (_get(live, "/v1/reviews/%D9%A3/image"), 400, "positive integer"),  # Arabic-Indic 3
        (_get(live, "/v1/reviews?status=closed"), 400, "status must be one of"),
        (_get(live, "/v1/reviews?limit=0"), 400, "limit must be within"),
        (_get(live, "/v1/reviews?limit=x"), 400, "integers"),
        (_get(live, f"/v1/reviews?offset={2**63}"), 400, "offset within 0.."),
        (_post_json(live, f"/v1/reviews/{item_id}", {"decision": "fake", "reviewer": "a"}), 400,
         "decision must be one of"),
        (_post_json(live, f"/v1/reviews/{item_id}", {"decision": "camera"}), 400,
         "reviewer is required"),
        (_post_json(live, f"/v1/reviews/{item_id}",
                    {"decision": "camera", "reviewer": "a", "note": "n" * 5000}), 400,
         "note is 5000 characters long"),
        (_post_json(live, f"/v1/reviews/{item_id}", {"decision": "camera", "who": "a"}), 400,
         "unknown fields"),
        (_post_json(live, f"/v1/reviews/{item_id}", ["camera"]), 400, "JSON object"),
        (request(live.url, f"/v1/reviews/{item_id}", b"{not json",
                 {"Content-Type": "application/json"}), 400, "not valid JSON"),
        (request(live.url, f"/v1/reviews/{item_id}", b"[" * 100_000,
                 {"Content-Type": "application/json"}), 413, "exceeds"),
        (_post_json(live, "/v1/reports", {"reason": "x", "reporter": "y"}), 400, "needs sha256"),
        (_post_json(live, "/v1/reports", {"sha256": "ab" * 32, "reason": "x", "reporter": "y"}),
         404, "no image with sha256"),
        (_post_json(live, "/v1/reports", {"sha256": "ab" * 32, "reporter": "y"}), 400,
         "needs reason"),
        (request(live.url, "/v1/reports?reason=x&reporter=y", b"not an image"), 422, ""),
        (request(live.url, "/v1/reports?reason=x&reporter=y", b""), 400, "empty body"),
        (_get(live, "/review/secret.txt"), 404, "no such file"),
        # compressed bodies: refused before they are read (and inflated)
        (request(live.url, "/v1/reports?reason=x&reporter=y", b"not gzip",
                 {"Content-Encoding": "gzip"}), 415, "Content-Encoding gzip is not accepted"),
        (request(live.url, "/v1/reports", b"not br",
                 {"Content-Type": "application/json", "Content-Encoding": "br"}), 415,
         "Content-Encoding br is not accepted"),
        (request(live.url, "/v1/reports", b"--x\r\n",
                 {"Content-Type": "multipart/form-data; boundary=x", "Content-Encoding": "deflate"}),
         415, "Content-Encoding deflate is not accepted"),
        (request(live.url, f"/v1/reviews/{item_id}",
                 gzip.compress(json.dumps({"decision": "camera", "reviewer": "a"}).encode()),
                 {"Content-Type": "application/json", "Content-Encoding": "gzip"}), 415,
         "Content-Encoding gzip is not accepted"),
    ]  # fmt: skip
    for (status, _, body), expected, reason in cases:
        assert status == expected, body
        assert reason in json.loads(body)["error"]
    # nothing inflated a refused body behind the handler's back (a bad stream logged a traceback)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 40]
    assert _get(live, f"/v1/reviews/{item_id}")[0] == 200
    # the queue off: its routes say how to turn it on; scoring with review=true is a 400
    plain = make_server()
    status, _, body = _get(plain, "/v1/reviews")
    assert status == 404 and "--review-db" in json.loads(body)["error"]
    status, _, body = request(plain.url, "/v1/score?review=true", jpeg(52, 128))
    assert status == 400 and "--review-db" in json.loads(body)["error"]
    status, headers, page = _get(plain, "/review")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"review.js" in page and b"http" not in page.replace(b"http-equiv", b"")


def _bytes_batch(live, images: list[bytes], **extra) -> tuple[int, dict]:
    """A Triton BYTES batch ([N, 1], binary) to the synthdetect model."""
    blob = b"".join(struct.pack("<I", len(b)) + b for b in images)
    image = {"name": "image", "shape": [len(images), 1], "datatype": "BYTES",
             "parameters": {"binary_data_size": len(blob)}}  # fmt: skip
    head = json.dumps({"inputs": [image], **extra}).encode()
    status, _, body = request(live.url, "/v2/models/synthdetect/infer", head + blob,
                              {"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
    return status, json.loads(body)


@pytest.mark.integration
def test_a_refused_infer_request_leaves_the_queue_as_it_was(make_server, tmp_path):
    """An uncertain image in a BYTES batch is queued only once the whole request succeeds:
    a bad image after it, or an unknown output, changes nothing, however often retried."""
    live = make_server(review_db=tmp_path / "review.sqlite")
    for _ in range(2):
        status, out = _bytes_batch(live, [tiny_png(), b"garbage"])
        assert status == 422 and out["error"].startswith("image 1: not a recognized image")
        status, out = _bytes_batch(live, [tiny_png()], outputs=[{"name": "nope"}])
        assert status == 400 and "unknown outputs" in out["error"]
    assert json.loads(_get(live, "/v1/reviews?status=all")[2])["items"] == []
    status, out = _bytes_batch(live, [tiny_png()])
    assert status == 200 and out["outputs"][1]["data"] == ["uncertain"]
    (item,) = json.loads(_get(live, "/v1/reviews?status=all")[2])["items"]
    assert item["seen"] == 1 and item["reason"] == "uncertain"


@pytest.mark.integration
def test_an_image_too_small_for_a_heatmap_is_a_422(make_server, tmp_path):
    live = make_server(review_db=tmp_path / "review.sqlite")
    status, _, body = request(live.url, "/v1/score?review=true", tiny_png())
    item_id = json.loads(body)["review_id"]
    status, headers, body = _get(live, f"/v1/reviews/{item_id}/heatmap")
    assert status == 422 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"error": "too small for the model"}


@pytest.mark.integration
def test_two_server_processes_share_one_queue(make_server, tmp_path):
    """Two servers on one review database (as ``serve --processes`` would run): an item
    queued by one is decided through the other, and both see the memory write."""
    db = tmp_path / "review.sqlite"
    one, two = make_server(review_db=db), make_server(review_db=db)
    photo = jpeg(61, 128)
    item_id = json.loads(request(one.url, "/v1/score?review=true", photo)[2])["review_id"]
    status, _, body = _post_json(
        two, f"/v1/reviews/{item_id}", {"decision": "generated", "reviewer": "bob"}
    )
    assert status == 200, body
    verdict = json.loads(request(one.url, "/v1/score", photo)[2])["verdict"]
    assert verdict["label"] == "generated" and verdict["decided_by"] == "known_image"
    assert os.path.exists(f"{db}.images")
    assert json.loads(_get(one, f"/v1/reviews/{item_id}")[2])["status"] == "decided"


@pytest.mark.integration
def test_review_reads_take_a_slot_and_health_probes_never_do(make_server, tmp_path):
    """GETs were never admitted: a review heatmap runs the model over every tile of an image
    with no bound. Now every request takes a slot once its work starts; the health probes
    are still answered with every slot taken."""
    live = make_server(review_db=tmp_path / "review.sqlite", max_inflight=1)
    _, _, body = request(live.url, "/v1/score?review=true", jpeg(52, 128))
    item_id = json.loads(body)["review_id"]
    live.service.inflight = 1  # the one slot taken
    try:
        status, _, body = _get(live, f"/v1/reviews/{item_id}/heatmap")
        assert status == 503 and "overloaded" in json.loads(body)["error"]
        assert request(live.url, "/v2/health/live")[0] == 200
        assert request(live.url, "/v2/health/ready")[0] == 200
    finally:
        live.service.inflight = 0
    assert _get(live, f"/v1/reviews/{item_id}/heatmap")[0] == 200


@pytest.mark.unit
def test_a_memory_that_cannot_be_written_reopens_the_review(queue):
    """A locked memory database (a long `memory import`, another process) failed the write
    with sqlite3.OperationalError: the item stayed decided with no memory record, and a
    retry got 409. The review is open again and the answer a 503 to retry."""
    item_id = queue.submit(*_scored(30)[:3], "uncertain", "key0")
    add = queue.memory.add

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    queue.memory.add = locked
    with pytest.raises(ReviewError, match="the review is open again: retry") as err:
        queue.decide(item_id, "generated", "alice", "", "reviewer0")
    assert err.value.status == 503
    assert queue.get(item_id)["status"] == "open"
    queue.memory.add = add
    assert queue.decide(item_id, "generated", "alice", "", "reviewer0")["memory_id"]


@pytest.mark.unit
def test_the_image_just_queued_is_not_the_first_evicted(tmp_path):
    """Over the folder's cap, the new image (its item not yet written) counted as needed by
    no open item and was dropped first, instead of the oldest open item's."""
    db = tmp_path / "review.sqlite"
    memory = MemoryStore(db)
    files = [_scored(s, 128) for s in (20, 21, 22)]
    cap = len(files[0][0]) + len(files[1][0]) + 10
    q = ReviewQueue(db, memory, ReviewConfig(max_image_bytes=cap))
    ids = [q.submit(d, h, v, "uncertain", "key0") for d, h, v in files]
    assert [q.get(i)["image_kept"] for i in ids] == [False, True, True]  # the oldest goes
    q.close()
    memory.close()


@pytest.mark.unit
def test_reports_from_two_processes_at_once_join_one_item(queue, tmp_path):
    """The open-item check ran before the write transaction: processes reporting one image
    at once each opened an item (5 of 10 images twice, as measured on a 2-process server).
    Each queue here is a process of its own (its own connection and lock), slowed between
    the check and the insert so that they overlap."""
    import threading
    import time

    item_id = queue.submit(*_scored(40)[:3], "uncertain", "key0")
    queue.decide(item_id, "generated", "alice", "", "reviewer0")
    sha = queue.get(item_id)["image_sha256"]
    others = [ReviewQueue(tmp_path / "review.sqlite", queue.memory) for _ in range(3)]
    for q in others:
        check = q._open_item
        q._open_item = lambda *a, check=check: (check(*a), time.sleep(0.3))[0]
    start, got = threading.Barrier(len(others)), []

    def report(q, n):
        start.wait()
        got.append(q.report(f"user{n}", "looks fake", "key0", sha256=sha))

    threads = [threading.Thread(target=report, args=(q, n)) for n, q in enumerate(others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == len(others) and len(set(got)) == 1, got
    for q in others:
        q.close()


@pytest.mark.unit
def test_another_sqlite_file_is_refused_as_the_review_database(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    before = path.read_bytes()
    memory = MemoryStore(tmp_path / "memory.sqlite")
    with pytest.raises(ReviewError, match="not a synthdetect review database"):
        ReviewQueue(path, memory)
    assert path.read_bytes() == before
    memory.close()


@pytest.mark.unit
@pytest.mark.parametrize("after", ["99999999999999999999999:1", "-1:1", "1:99999999999999999999"])
def test_a_cursor_past_sqlites_integers_is_refused(queue, after):
    with pytest.raises(ReviewError, match="after must be SKIPS:ID"):
        queue.items("open", after=after)


def _multipart(filename_header: str, data: bytes, boundary: str = "b0undary") -> tuple:
    """One file part named ``image`` whose Content-Disposition ends with ``filename_header``
    (sent as Latin-1: one byte per character, UTF-8 or not)."""
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; {filename_header}\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode("latin-1")
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.integration
def test_text_fields_refuse_every_control_character_and_keep_line_breaks(make_server, tmp_path):
    """DEL and the C1 controls (\\x85 next line, \\x9b CSI: a terminal showing the audit trail
    acts on it) were accepted while \\r was refused; a browser's textarea sends \\r\\n."""
    live = make_server(review_db=tmp_path / "review.sqlite")
    item_id = json.loads(request(live.url, "/v1/score?review=true", jpeg(81, 128))[2])["review_id"]
    sha = json.loads(_get(live, f"/v1/reviews/{item_id}")[2])["image_sha256"]
    path = f"/v1/reviews/{item_id}"
    for reviewer, note in [("al\x7fice", ""), ("alice", "a\x85b"), ("alice", "red \x9b31m"),
                           ("al\x00ice", ""), ("alice", "a\x1bb")]:  # fmt: skip
        status, _, body = _post_json(live, path, {"decision": "camera", "reviewer": reviewer,
                                                  "note": note})  # fmt: skip
        assert status == 400 and "contains control characters" in json.loads(body)["error"]
    for reporter, reason in [("u\x7f1", "fake"), ("u1", "fake\x9b"), ("u1", "fa\x85ke")]:
        status, _, body = _post_json(
            live, "/v1/reports", {"sha256": sha, "reason": reason, "reporter": reporter}
        )
        assert status == 400 and "contains control characters" in json.loads(body)["error"]
    # a lone surrogate (JSON's "\ud800") has no UTF-8 form: refused, not a 500 from SQLite
    status, _, body = request(live.url, path, b'{"decision": "skip", "reviewer": "a\\ud800"}',
                              {"Content-Type": "application/json"})  # fmt: skip
    assert status == 400 and "not valid Unicode" in json.loads(body)["error"]
    status, _, body = _post_json(
        live, "/v1/reports", {"sha256": sha, "reason": "one\r\ntwo\rthree", "reporter": "u1"}
    )
    assert status == 201
    status, _, body = _post_json(
        live, path, {"decision": "camera", "reviewer": "alice", "note": "line\r\nnext\r\tend"}
    )
    item = json.loads(body)
    assert status == 200 and item["note"] == "line\nnext\n\tend"
    assert item["reports"] == [{"reporter": "u1", "reason": "one\ntwo\nthree",
                                "at": item["reports"][0]["at"]}]  # fmt: skip
    assert [a["action"] for a in item["audit"]] == ["created", "reported", "decided"]


@pytest.mark.integration
def test_an_uploaded_files_name_is_kept_readable_and_bounded(make_server, tmp_path):
    live = make_server(review_db=tmp_path / "review.sqlite")
    cases = [
        # RFC 5987 lets a client send any character; each control one becomes a space
        ("filename*=UTF-8''a%01b%0Ac%7Fd%C2%85e%09.jpg", "a b c d e .jpg"),
        (f'filename="{"x" * 300}.jpeg"', "x" * 192 + "....jpeg"),
        ("filename*=UTF-8''%01%02", None),  # nothing left to show: the queue shows the sha256
        ('filename="\xe9t\xe9.jpg"', "\ufffdt\ufffd.jpg"),  # Latin-1 bytes, not UTF-8
        ('filename="\xc3\xa9t\xc3\xa9 \xf0\x9f\x8c\x85.jpg"', "\xe9t\xe9 \U0001f305.jpg"),  # UTF-8
    ]
    for seed, (header, stored) in enumerate(cases, 90):
        body, headers = _multipart(header, jpeg(seed, 128))
        status, _, out = request(live.url, "/v1/score?review=true", body, headers)
        assert status == 200, out
        item_id = json.loads(out)["results"][0]["review_id"]
        item = json.loads(_get(live, f"/v1/reviews/{item_id}")[2])
        assert item["filename"] == stored, (header, item["filename"])
        assert stored is None or len(stored) <= 200
    # a report's image is named the same way
    body = (
        b'--b\r\nContent-Disposition: form-data; name="reason"\r\n\r\nfake\r\n'
        b'--b\r\nContent-Disposition: form-data; name="reporter"\r\n\r\nu1\r\n'
        b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename*=UTF-8''r%0D%0A.jpg"
        b"\r\n\r\n" + jpeg(99, 128) + b"\r\n--b--\r\n"
    )
    status, _, out = request(live.url, "/v1/reports", body,
                             {"Content-Type": "multipart/form-data; boundary=b"})  # fmt: skip
    assert status == 201, out
    item = json.loads(_get(live, f"/v1/reviews/{json.loads(out)['review_id']}")[2])
    assert item["filename"] == "r  .jpg"


@pytest.mark.integration
def test_a_kept_file_that_no_longer_decodes_is_a_422(make_server, tmp_path):
    """The kept file decoded when it was queued; damaged on disk since, the image (a PNG
    rendition for a TIFF) and the heatmap answer 422 with a reason, not a 500."""
    db = tmp_path / "review.sqlite"
    live = make_server(review_db=db)
    tiff = P.encode(P.synthetic_scene(95, 96, 112), "TIFF")
    ids = [json.loads(request(live.url, "/v1/score?review=true", blob)[2])["review_id"]
           for blob in (jpeg(96, 128), tiff)]  # fmt: skip
    for item_id in ids:
        sha = json.loads(_get(live, f"/v1/reviews/{item_id}")[2])["image_sha256"]
        kept = tmp_path / "review.sqlite.images" / sha[:2] / sha
        kept.write_bytes(kept.read_bytes()[:200])  # truncated
    jpeg_id, tiff_id = ids
    for path in (f"/v1/reviews/{jpeg_id}/heatmap", f"/v1/reviews/{tiff_id}/heatmap",
                 f"/v1/reviews/{tiff_id}/image"):  # fmt: skip
        status, headers, body = _get(live, path)
        assert status == 422 and headers["Content-Type"].startswith("application/json"), body
        item_id = path.split("/")[3]
        assert json.loads(body)["error"].startswith(
            f"the kept image of review {item_id} no longer decodes: "
        )
    # a JPEG goes to the browser as kept (the page says when it cannot show it)
    status, _, body = _get(live, f"/v1/reviews/{jpeg_id}/image")
    assert status == 200 and len(body) == 200
    assert _get(live, f"/v1/reviews/{jpeg_id}")[0] == 200
