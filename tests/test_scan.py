"""``detector.scan``: resuming, the settings kept beside the results, degraded verdicts, the
walk (links, the results file itself) and bounded memory. Tiny trees, metadata methods only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from detector.pipeline import Detector
from detector.scan import ScanError, _load_done, scan_directory, settings_path
from training import metadata_writers as P

pytestmark = pytest.mark.integration


def _lines(path: Path) -> list[dict]:
    # lines end at "\n" alone: a record may hold U+2028 unescaped
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


def _scan(root: Path, out: Path, methods=("c2pa",), **kwargs):
    return scan_directory(root, out, Detector(list(methods)), progress=False, **kwargs)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "detector.cli", "scan", *args, "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def tree(tmp_path, scene) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(P.encode(scene, "PNG"))
    (root / "sub" / "b.png").write_bytes(P.encode(scene[:200], "PNG"))
    return root


def test_records_holding_unicode_line_separators_resume(tmp_path, scene):
    """U+2028, U+2029 and U+0085 are written raw (ensure_ascii=False); str.splitlines() cut
    the record there and the next resume refused the file ("line 1 is not a result")."""
    root, out = tmp_path / "tree", tmp_path / "r.jsonl"
    root.mkdir()
    text = "a castle\u2028at dusk\u2029Steps: 20, Sampler: Euler a, Seed: 1\x85, Model: sd15"
    (root / "prompt.png").write_bytes(P.encode(scene, "PNG", png_text={"parameters": text}))
    (root / "name\u2028with\u2029breaks\x85.png").write_bytes(P.encode(scene[:100], "PNG"))
    methods = ("c2pa", "generator_params")
    first = scan_directory(root, out, Detector(list(methods), include_prompt=True), progress=False)
    assert sum(first.labels.values()) == 2
    assert "\u2028".encode() in out.read_bytes()  # the case that broke: written raw
    again = scan_directory(root, out, Detector(list(methods), include_prompt=True), progress=False)
    assert again.skipped == 2 and len(_lines(out)) == 2


def test_a_resume_with_other_settings_is_refused_naming_each_field(tmp_path, tree, scene):
    out = tmp_path / "r.jsonl"
    _scan(tree, out)
    settings = json.loads(settings_path(out).read_text())
    assert settings["root"] == str(tree.resolve()) and settings["methods"] == ["c2pa"]
    before = out.read_bytes()
    with pytest.raises(ScanError) as exc:
        _scan(tree, out, methods=("c2pa", "exif_hints"))
    assert "methods: ['c2pa'] there, ['c2pa', 'exif_hints'] now" in str(exc.value)
    assert "choose another --out" in str(exc.value) and f"delete {out}" in str(exc.value)
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.png").write_bytes(P.encode(scene, "PNG"))
    with pytest.raises(ScanError, match=r"root: '.*tree' there, '.*other' now"):
        _scan(other, out)
    with pytest.raises(ScanError, match="include_prompt: False there, True now"):
        scan_directory(tree, out, Detector(["generator_params"], include_prompt=True),
                       progress=False)  # fmt: skip
    assert out.read_bytes() == before  # nothing mixed in
    assert _scan(tree, out).skipped == 2  # the same settings resume
    out.unlink()  # the old results deleted, as the refusal says: the new settings are taken
    assert sum(_scan(tree, out, methods=("c2pa", "exif_hints")).labels.values()) == 2
    assert json.loads(settings_path(out).read_text())["methods"] == ["c2pa", "exif_hints"]


def test_the_command_line_refuses_other_methods_in_one_line(tmp_path, tree):
    out = tmp_path / "r.jsonl"
    assert _cli(str(tree), "--out", str(out), "--methods", "c2pa").returncode == 0
    res = _cli(str(tree), "--out", str(out), "--methods", "exif_hints")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith(f"synthdetect: {out} holds results of a scan with other settings (methods: ")
    )
    assert len(_lines(out)) == 2


def test_results_from_before_the_settings_file_resume_with_a_note(tmp_path, tree):
    out = tmp_path / "r.jsonl"
    _scan(tree, out)
    settings_path(out).unlink()  # as written by an older synthdetect
    again = _scan(tree, out)
    assert again.skipped == 2 and len(again.notes) == 1
    assert "written before scans recorded their settings" in again.notes[0]
    assert settings_path(out).exists() and not _scan(tree, out).notes


def test_the_settings_record_the_models_identity(tmp_path, tree):
    pytest.importorskip("onnxruntime")
    from detector.bundled import DEFAULT_MODEL
    from detector.scan import scan_config

    if not (DEFAULT_MODEL / "model.onnx").exists():
        pytest.skip("no bundled model")
    meta = json.loads((DEFAULT_MODEL / "model.json").read_text())
    detector = Detector(["model"], max_tiles=1)
    config = scan_config(str(tree), detector)
    assert config["model_sha256"] == meta["onnx_sha256"] and config["model"] == meta["name"]
    assert config["max_tiles"] == 1 and config["model_threshold"] == detector.methods[0].threshold


def test_degraded_verdicts_are_scored_again_on_a_resume(tmp_path, tree):
    """A method that failed on the batch (CUDA out of memory, an engine error) made degraded
    verdicts that counted as done: never retried."""
    out = tmp_path / "r.jsonl"
    detector = Detector(["c2pa", "exif_hints"])
    method = detector.methods[1]

    def fail(images):
        raise RuntimeError("engine lost")

    method.score = fail
    first = scan_directory(tree, out, detector, progress=False)
    assert first.degraded == 2 and "2 degraded" in first.summary()
    del method.score  # the engine is back
    again = scan_directory(tree, out, detector, progress=False)
    assert again.skipped == 0 and sum(again.labels.values()) == 2 and again.degraded == 0
    last = {r["path"]: r for r in _lines(out)}  # readers take the last line per path
    assert len(_lines(out)) == 4 and not any(r["verdict"]["degraded"] for r in last.values())
    assert scan_directory(tree, out, detector, progress=False).skipped == 2


def test_a_real_folder_keeps_its_path_before_a_shallower_link(tmp_path, scene):
    """s/a_link -> z/real: a_link/img.png was scored and z/real/ was the one "scanned
    already"."""
    root, out = tmp_path / "s", tmp_path / "r.jsonl"
    (root / "z" / "real").mkdir(parents=True)
    (root / "z" / "real" / "img.png").write_bytes(P.encode(scene, "PNG"))
    (root / "a_link").symlink_to(root / "z" / "real")
    outside = tmp_path / "outside"  # a link out of the tree is still followed
    outside.mkdir()
    (outside / "o.png").write_bytes(P.encode(scene, "PNG"))
    (root / "b_out").symlink_to(outside)
    stats = _scan(root, out)
    recs = {r["path"]: r for r in _lines(out)}
    assert set(recs) == {"z/real/img.png", "a_link/", "b_out/o.png"}
    assert recs["a_link/"]["error"] == "links to a folder scanned already: not again"
    assert stats.links == 1 and stats.unreadable == 0 and "1 folder link" in stats.summary()


def test_a_hard_link_to_the_results_file_is_never_scanned(tmp_path, scene):
    root = tmp_path / "o1"
    root.mkdir()
    (root / "a.png").write_bytes(P.encode(scene, "PNG"))
    out = root / "res.jsonl"
    out.touch()
    os.link(out, root / "hard.png")
    for _ in range(2):
        stats = _scan(root, out, all_files=True)
        assert stats.errors == 0
    assert [r["path"] for r in _lines(out)] == ["a.png"]


def test_a_resume_keeps_only_each_paths_key_in_memory(tmp_path):
    """The whole file, its text and its lines were held at once (~3x the file)."""
    out = tmp_path / "big.jsonl"
    pad = "x" * 2000
    with open(out, "w") as fh:
        for i in range(5000):
            verdict = {"label": "camera", "summary": pad, "degraded": False}
            fh.write(json.dumps({"path": f"d/{i}.png", "sha256": f"{i:064x}", "verdict": verdict}))
            fh.write("\n")
    size = out.stat().st_size  # ~10 MB
    tracemalloc.start()
    try:
        done = _load_done(out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(done) == 5000 and done["d/7.png"] == f"{7:064x}"
    assert peak < size / 4, (peak, size)


def test_decoded_images_in_flight_are_bounded_by_pixels(tmp_path, scene, monkeypatch):
    """Batches were cut by count alone (--batch-size 32 of 4 MP images: 1 GB): a batch is
    scored once its pixels reach CHUNK_PIXELS, and decoding ahead stops near that much."""
    import detector.scan as scan

    root = tmp_path / "tree"
    root.mkdir()
    for i in range(24):
        (root / f"img{i:02d}.png").write_bytes(P.encode(scene, "PNG"))
    per_image = scene.shape[0] * scene.shape[1]
    monkeypatch.setattr(scan, "CHUNK_PIXELS", 3 * per_image, raising=False)
    alive = peak = 0
    real_decode = scan.decode

    def decode(data, limits):
        nonlocal alive, peak
        image = real_decode(data, limits)
        alive += 1
        peak = max(peak, alive)
        return image

    monkeypatch.setattr(scan, "decode", decode)
    detector = Detector(["c2pa"])
    sizes = []
    real_score = detector.score

    def score(images):
        nonlocal alive
        sizes.append(len(images))
        alive -= len(images)
        return real_score(images)

    monkeypatch.setattr(detector, "score", score)
    stats = scan_directory(root, tmp_path / "r.jsonl", detector, workers=2, batch_size=32,
                           progress=False)  # fmt: skip
    assert sum(stats.labels.values()) == 24
    assert max(sizes) == 3  # flushed at the pixel budget, not at 32 images
    assert peak <= 8, peak  # the batch (3) and about as many decoded ahead; it was all 24


def test_the_summary_names_each_kind_of_failure(tmp_path, tree, scene):
    (tree / "empty.png").write_bytes(b"")
    (tree / "notes.txt").write_text("not an image")
    (tree / "link").symlink_to(tree / "sub")
    stats = _scan(tree, tmp_path / "r.jsonl", all_files=True)
    assert (stats.unreadable, stats.undecodable, stats.links, stats.errors) == (0, 2, 1, 3)
    assert "0 unreadable, 2 undecodable, 1 folder link to a folder scanned already" in (
        stats.summary()
    )


@pytest.mark.parametrize("layout", ["empty files", "no images", "empty folder"])
def test_scan_exits_2_when_nothing_could_be_read(tmp_path, layout):
    root, out = tmp_path / "tree", tmp_path / "r.jsonl"
    root.mkdir()
    if layout == "empty files":
        (root / "a.png").write_bytes(b"")
        (root / "b.jpg").write_bytes(b"")
    elif layout == "no images":
        (root / "notes.txt").write_text("text")
    for _ in range(2):  # and again on a resume, where the failures are skipped
        res = _cli(str(root), "--out", str(out))
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert f"synthdetect: no image could be read under {root}" in res.stderr


def test_scan_exits_0_on_a_resume_with_nothing_left_to_do(tmp_path, tree):
    out = tmp_path / "r.jsonl"
    assert _cli(str(tree), "--out", str(out), "--methods", "c2pa").returncode == 0
    res = _cli(str(tree), "--out", str(out), "--methods", "c2pa")
    assert res.returncode == 0 and "2 already in the results" in res.stderr


def test_an_unlistable_root_reads_nothing(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    root.mkdir()
    real = os.scandir

    def scandir(path="."):
        if Path(path) == root:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    stats = _scan(root, tmp_path / "r.jsonl")
    assert stats.unreadable == 1 and not stats.readable
