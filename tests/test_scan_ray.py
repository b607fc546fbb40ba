"""``scan --ray`` on a local Ray (2 CPUs): the same records as ``scan``, resumable, JSONL or
Parquet, a failed file a row with its error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training import metadata_writers as P

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("ray", reason="scan --ray needs the ray extra (pip install 'synthdetect[ray]')")


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for i in range(6):
        text = {"parameters": P.a1111_parameters(seed=i)} if i % 3 == 0 else None
        where = root / ("sub" if i % 2 else "")
        where.joinpath(f"img{i}.png").write_bytes(
            P.encode(P.synthetic_scene(i, 200, 200), "PNG", png_text=text)
        )
    (root / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")


def _scan(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "detector.cli", "scan", *args, "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out


def test_ray_scan_matches_scan_and_resumes(tmp_path):
    import os

    root = tmp_path / "tree"
    _tree(root)
    os.mkfifo(root / "fifo.jpg")  # never readable: keyed by its stat, reported once
    _scan(str(root), "--out", str(tmp_path / "plain.jsonl"))
    first = _scan(str(root), "--out", str(tmp_path / "ray.jsonl"), "--ray", "--ray-workers", "2")
    assert "6 scored" in first.stderr and "1 unreadable, 1 undecodable" in first.stderr
    plain = {
        r["path"]: r for r in map(json.loads, (tmp_path / "plain.jsonl").read_text().splitlines())
    }
    ray = {r["path"]: r for r in map(json.loads, (tmp_path / "ray.jsonl").read_text().splitlines())}
    assert set(plain) == set(ray) == {"bad.jpg", "fifo.jpg", "img0.png", "sub/img1.png",
                                      "img2.png", "sub/img3.png", "img4.png", "sub/img5.png"}  # fmt: skip
    assert "not a recognized image" in ray["bad.jpg"]["error"]
    assert "a FIFO" in ray["fifo.jpg"]["error"] and ray["fifo.jpg"]["sha256"] is None
    for path, rec in plain.items():
        assert ray[path]["sha256"] == rec["sha256"]
        if "verdict" in rec:
            a, b = rec["verdict"], ray[path]["verdict"]
            assert a["label"] == b["label"] and a["decided_by"] == b["decided_by"]
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
            assert set(a["methods"]) == set(b["methods"])
    again = _scan(str(root), "--out", str(tmp_path / "ray.jsonl"), "--ray")
    assert "8 already in the results" in again.stderr  # the bad file and the FIFO too
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 8


def _readme_ray_job() -> list[str]:
    """The synthdetect command of the README's `ray job submit` example."""
    import shlex

    from tests.test_readme import README, _blocks

    blocks = [b for b in _blocks(README, "text") if b.startswith("ray job submit ")]
    assert len(blocks) == 1, "the README shows one `ray job submit` example"
    words = shlex.split(blocks[0].replace("\\\n", " "))
    return words[words.index("--") + 1 :]


def test_the_readmes_ray_job_is_a_valid_scan():
    import pyarrow.fs

    from detector.cli import build_parser
    from detector.scan_ray import _is_uri

    cmd = _readme_ray_job()
    assert cmd[:2] == ["synthdetect", "scan"]
    args = build_parser().parse_args(cmd[1:])
    assert args.ray == "auto" and args.out.endswith(".parquet") and args.ray_workers > 1
    assert _is_uri(args.directory) and args.directory.startswith("s3://")
    assert pyarrow.fs.S3FileSystem  # this pyarrow reads s3:// URIs


def test_ray_scan_writes_parquet_and_resumes(tmp_path):
    """The README's cluster command, run here: a local folder, a local Ray, 2 model actors."""
    pq = pytest.importorskip("pyarrow.parquet")
    root = tmp_path / "tree"
    _tree(root)
    (root / "gone.png").symlink_to(root / "nothing.png")  # unreadable, known by its stat
    out = tmp_path / "results.parquet"
    cmd = _readme_ray_job()[2:]
    local = {cmd[0]: str(root), "/shared/results.parquet": str(out), "8": "2"}
    _scan(*(local.get(w, w) for w in cmd if w != "auto"))
    table = pq.read_table(out).to_pylist()
    assert {r["path"] for r in table} >= {"img0.png", "bad.jpg", "gone.png"} and len(table) == 8
    row = next(r for r in table if r["path"] == "img0.png")
    assert row["label"] == "generated" and json.loads(row["verdict"])["decided_by"] == "declaration"
    assert not (tmp_path / "results.parquet.partial.jsonl").exists()
    (root / "img2.png").write_bytes(P.encode(P.synthetic_scene(9, 180, 180), "JPEG"))  # changed
    again = _scan(str(root), "--out", str(out), "--ray")
    # the unchanged unreadable link is not reported again (it was on every resume)
    assert "7 already in the results" in again.stderr and "1 scored" in again.stderr
    assert "0 unreadable" in again.stderr or "unreadable" not in again.stderr
    table = pq.read_table(out).to_pylist()
    assert len(table) == 8 and len({r["path"] for r in table}) == 8
    # a result of an older scan (no "stat" column) is resumed, and written whole: built from
    # rows alone, the table took its columns from the first kept row
    pq.write_table(pq.read_table(out).drop(["stat"]), out)
    (root / "img4.png").write_bytes(P.encode(P.synthetic_scene(11, 180, 180), "JPEG"))
    _scan(str(root), "--out", str(out), "--ray")
    table = pq.read_table(out)
    assert "stat" in table.column_names and table.num_rows == 8
    assert json.loads(next(r for r in table.to_pylist() if r["path"] == "img4.png")["verdict"])


def test_ray_scan_refuses_a_parquet_file_that_is_not_its_results(tmp_path):
    """Someone's inventory.parquet was merged into: its rows kept, the scan's rows cut to
    their paths (no verdicts), exit 0."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    root = tmp_path / "tree"
    _tree(root)
    out = tmp_path / "inventory.parquet"
    pq.write_table(pa.table({"path": ["a", "b"], "owner": ["me", "you"], "size": [1, 2]}), out)
    before = out.read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "detector.cli", "scan", str(root), "--out", str(out), "--ray",
         "--no-progress"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "without the columns of scan results" in done.stderr
    assert out.read_bytes() == before and "Traceback" not in done.stderr


def test_ray_scan_refuses_bad_output_and_source(tmp_path):
    root = tmp_path / "tree"
    _tree(root)
    for args, message in (
        (["--out", str(tmp_path / "x.csv")], "must end in .jsonl or .parquet"),
        (["--out", str(tmp_path / "x.jsonl")], None),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "detector.cli", "scan", str(tmp_path / "missing"), *args,
             "--ray", "--no-progress"], capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert (message or "not a directory") in out.stderr


def test_ray_scan_resumes_a_partial_file_with_a_blank_line_and_never_scans_it(tmp_path):
    """An interrupted Parquet scan's partial file with a blank line was a JSONDecodeError
    traceback; with --all-files and --out inside the folder, the partial file itself was
    scanned (a row for a file the run then deletes)."""
    pq = pytest.importorskip("pyarrow.parquet")
    root = tmp_path / "tree"
    _tree(root)
    _scan(str(root), "--out", str(tmp_path / "plain.jsonl"))
    first, second = (tmp_path / "plain.jsonl").read_text().splitlines()[:2]
    out = root / "x.parquet"
    (root / "x.parquet.partial.jsonl").write_text(f"{first}\n\n{second}\n")
    again = _scan(str(root), "--out", str(out), "--ray", "--all-files")
    assert "2 already in the results" in again.stderr
    paths = [r["path"] for r in pq.read_table(out).to_pylist()]
    assert sorted(paths) == sorted({*paths} - {"x.parquet.partial.jsonl"}) and len(paths) == 7
    assert not (root / "x.parquet.partial.jsonl").exists()


def test_ray_scan_resumes_records_with_line_separators_and_refuses_other_settings(tmp_path):
    """A record holding U+2028 (written raw) was two lines to the partial file's reader; a
    resume with other methods was mixed into the same results."""
    pq = pytest.importorskip("pyarrow.parquet")
    root = tmp_path / "tree"
    _tree(root)
    (root / "odd\u2028name.png").write_bytes(P.encode(P.synthetic_scene(3, 120, 120), "PNG"))
    _scan(str(root), "--out", str(tmp_path / "plain.jsonl"), "--methods", "c2pa")
    lines = (tmp_path / "plain.jsonl").read_bytes().split(b"\n")
    odd = next(line for line in lines if "\u2028".encode() in line)
    out = tmp_path / "r.parquet"
    (tmp_path / "r.parquet.partial.jsonl").write_bytes(odd + b"\n")
    again = _scan(str(root), "--out", str(out), "--ray", "--methods", "c2pa")
    assert "1 already in the results" in again.stderr and "before scans recorded" in again.stderr
    assert len(pq.read_table(out)) == 8
    refused = subprocess.run(
        [sys.executable, "-m", "detector.cli", "scan", str(root), "--out", str(out), "--ray",
         "--methods", "exif_hints", "--no-progress"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "other settings (methods: ['c2pa'] there, ['exif_hints'] now)" in refused.stderr
    assert len(pq.read_table(out)) == 8
