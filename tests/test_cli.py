"""The command line, end to end through subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import metadata_writers as P

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "detector.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def files(tmp_path_factory, scene):
    d = tmp_path_factory.mktemp("imgs")
    paths = {
        "a1111": d / "x.png",
        "camera": d / "camera.jpg",
        "truncated": d / "broken.jpg",
        "text": d / "notes.txt",
    }
    paths["a1111"].write_bytes(
        P.encode(
            scene, "PNG", png_text={"parameters": P.a1111_parameters(prompt="a secret prompt")}
        )
    )
    paths["camera"].write_bytes(P.encode(scene, "JPEG", exif=P.camera_exif()))
    jpeg = P.encode(scene, "JPEG")
    paths["truncated"].write_bytes(jpeg[: len(jpeg) // 2])
    paths["text"].write_text("not an image")
    return paths


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "synthdetect"
    assert script.exists()
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("synthdetect ")


@pytest.mark.skipif(
    not Path("/dev/full").is_char_device(), reason="needs /dev/full (a disk that is always full)"
)
def test_a_full_disk_under_stdout_is_one_line_and_exit_1(files):
    for extra in ((), ("--json",)):
        with open("/dev/full", "w") as full:
            out = subprocess.run(
                [*CLI, "score", *extra, str(files["a1111"])],
                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
            )  # fmt: skip
        assert out.returncode == 1
        assert out.stderr == "synthdetect: cannot write output: No space left on device\n"


def test_a1111_png_says_generated_and_names_the_tool(files):
    out = run("score", str(files["a1111"]))
    assert out.returncode == 0, out.stderr
    row = out.stdout.splitlines()[1]
    assert "generated" in row
    assert "Stable Diffusion web UI (AUTOMATIC1111)" in row
    assert "PNG text chunk 'parameters'" in row
    assert "a secret prompt" not in out.stdout


def test_camera_jpeg_metadata_methods_abstain(files):
    out = run("score", str(files["camera"]))
    assert out.returncode == 0
    assert "metadata methods abstain" in out.stdout  # the model still judges the pixels
    only_metadata = "c2pa,exif_hints,generator_params,invisible_watermark,iptc_source_type"
    out = run("score", "--methods", only_metadata, str(files["camera"]))
    row = out.stdout.splitlines()[1]
    assert "uncertain" in row and "metadata methods abstain" in row


def test_truncated_file_one_clear_line_and_nonzero_exit(files):
    out = run("score", str(files["truncated"]))
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "broken.jpg" in lines[0] and "truncated" in lines[0]
    assert "Traceback" not in out.stderr


def test_mixed_files_exit_zero_and_report_each(files):
    out = run("score", str(files["a1111"]), str(files["text"]), str(files["camera"]))
    assert out.returncode == 0
    assert "notes.txt: unreadable: not a recognized image" in out.stderr
    assert len(out.stdout.strip().splitlines()) == 3  # header + two rows


def test_json_output(files):
    out = run("score", "--json", "--include-prompt", str(files["a1111"]), str(files["truncated"]))
    assert out.returncode == 0
    records = json.loads(out.stdout)
    assert [Path(r["path"]).name for r in records] == ["x.png", "broken.jpg"]
    verdict = records[0]["verdict"]
    assert verdict["label"] == "generated" and verdict["decided_by"] == "declaration"
    assert verdict["methods"]["generator_params"]["details"]["prompt"] == "a secret prompt"
    assert "verdict" not in records[1] and "truncated" in records[1]["error"]


def test_verbose_lists_every_method(files):
    out = run("score", "-v", str(files["camera"]))
    for name in (
        "c2pa",
        "exif_hints",
        "generator_params",
        "invisible_watermark",
        "iptc_source_type",
    ):
        assert name in out.stdout
    assert "[weak, camera]" in out.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["score", "--methods", "nope", "x.png"], "unknown method 'nope'"),
        (["score", "--methods", ",", "x.png"], "--methods is empty"),
        (["score", "--methods", "", "x.png"], "--methods is empty"),
        (["scan", ".", "--out", "r.jsonl", "--methods", ""], "--methods is empty"),
        (["score", "missing.png"], "no such file"),
        (["score", "--max-pixels", "0", "x.png"], "must be positive"),
        (["score", "--max-tiles", "0", "x.png"], "--max-tiles: must be positive"),
        (["serve", "--max-tiles", "-2"], "--max-tiles: must be positive"),
        (["scan", "missing-dir", "--out", "r.jsonl"], "not a directory"),
        (["score", "--model", "junk.onnx", "x.png"], "ONNX Runtime cannot load"),
        (
            ["score", "--model", "junk.pt", "x.png"],
            "junk.pt cannot be read as a torch checkpoint: not a plain tensor file (Unsupported",
        ),
        (
            ["score", "--model", "empty.pt", "x.png"],
            "empty.pt cannot be read as a torch checkpoint: the file is empty or cut short",
        ),
        (
            ["score", "--model", "sidecar-only", "x.png"],
            "sidecar-only has a model.json but no model.onnx",
        ),
        (["serve", "--port", "99999"], "a port is 0-65535, got 99999"),
        (["serve", "--rate-limit", "-1"], "--rate-limit: must be a positive number"),
        (["serve", "--max-body-mb", "0"], "--max-body-mb: must be a positive number"),
        (["serve", "--memory-db", "typo.sqlite"], "no memory database at typo.sqlite"),
        (["train", "--config", "bad.yaml", "epochs=abc"], "config.epochs must be a whole number"),
        (["bench", "accuracy", "--data", "m.csv", "--limit", "0"], "--limit: must be positive"),
        (["bench", "load", "--url", "http://127.0.0.1:9", "--seconds", "1"], "nothing answers"),
        (["bench", "load", "--serve", "--port 1"], "leave out --port/--host"),
        (
            ["evaluate", "--model", "m", "--data", "d.csv", "--out", "."],
            "argument --out: . is a directory; give a file path",
        ),
        (["corpus", "merge", "a", "b", "--out", "junk.pt"], "File exists: junk.pt"),
        (
            [
                "bench",
                "accuracy",
                "--data",
                "a/manifest.csv",
                "--split",
                "train",
                "--methods",
                "nosuch",
            ],
            "synthdetect: unknown method 'nosuch' (known: ",
        ),
        (["train", "device=tpu"], "device must be auto, cpu or cuda, got 'tpu'"),
        (["bench", "compare", "a", "b", "--accuracy-tol", "-1"], "must be within 0..1: -1"),
        (
            ["evaluate", "--model", "m", "--data", "d.csv", "--held-out", "gan"],
            "--held-out not used by a plain evaluation",
        ),
        (
            ["evaluate", "--model", "m", "--data", "d.csv", "--leave-one-out", "--generalisation"],
            "--generalisation not used by --leave-one-out",
        ),
        (
            ["corpus", "build", "--size", "tiny", "--wild-dir", "bad.yaml", "--out", "c"],
            "--wild-dir bad.yaml is a file, not a folder",
        ),
        (
            ["export", "sidecar-only/..", "--fp16", "--out", "x16"],
            "is neither a run folder (no checkpoints/best.pt) nor an ONNX export",
        ),
        (["train", "epochs=2", "--config", "bad.yaml", "lr=abc"], "config.lr must be a number"),
        (["train", "--config", "bad.yaml", "--bogus", "lr=1"], "unrecognized arguments: --bogus"),
        ([], "usage"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, message, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")  # damaged model files
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, src in (("a", "s1"), ("b", "s2")):  # two tiny corpora to merge
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.csv").write_text(
            f"path,label,split,source_id\n{name}.png,real,train,{src}\n"
        )
    (tmp_path / "sidecar-only").mkdir()
    (tmp_path / "sidecar-only" / "model.json").write_text("{}")
    (tmp_path / "bad.yaml").write_text("epochs: 3\n")
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in (out.stderr + out.stdout)
    assert "Traceback" not in out.stderr
    assert "weights_only" not in out.stderr  # never torch's advice to unpickle untrusted code


def test_methods_command():
    out = run("methods", "--json")
    names = {m["name"] for m in json.loads(out.stdout)}
    assert {
        "c2pa",
        "iptc_source_type",
        "generator_params",
        "invisible_watermark",
        "exif_hints",
    } <= names


def _tree(root: Path, scene, n: int) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(n):
        where = root / ("sub/deeper" if i % 3 == 0 else "sub" if i % 3 == 1 else "")
        where.joinpath(f"img{i:03d}.png").write_bytes(
            P.encode(
                scene[i % 50 :, :],
                "PNG",
                png_text={"parameters": P.a1111_parameters(seed=i)} if i % 2 else None,
            )
        )
    (root / "sub" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "readme.txt").write_text("skipped: not an image extension")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scan_is_recursive_and_resumable(tmp_path, scene):
    root, out = tmp_path / "tree", tmp_path / "results.jsonl"
    _tree(root, scene, 12)
    first = run("scan", str(root), "--out", str(out), "--no-progress", "--batch-size", "4")
    assert first.returncode == 0, first.stderr
    recs = _lines(out)
    assert len(recs) == 13  # 12 images + the unreadable one; readme.txt is not an image
    assert {r["path"] for r in recs} >= {"sub/deeper/img000.png", "sub/img001.png", "img002.png"}
    errors = [r for r in recs if "error" in r]
    assert [r["path"] for r in errors] == ["sub/bad.jpg"]
    generated = [r for r in recs if "verdict" in r and r["verdict"]["label"] == "generated"]
    assert len(generated) == 6
    assert "12 scored" in first.stderr and "0 unreadable, 1 undecodable" in first.stderr

    again = run("scan", str(root), "--out", str(out), "--no-progress")
    assert again.returncode == 0 and "13 already in the results" in again.stderr
    assert len(_lines(out)) == 13

    (root / "img002.png").write_bytes(P.encode(scene, "JPEG"))  # changed file: scored again
    with open(out, "a") as fh:
        fh.write('{"path": "sub/img0')  # a line cut off by a crash
    third = run("scan", str(root), "--out", str(out), "--no-progress")
    assert third.returncode == 0, third.stderr
    recs = _lines(out)
    assert len(recs) == 14 and recs[-1]["path"] == "img002.png"


def test_scan_and_score_on_special_files_never_hang_nor_abort(tmp_path, scene):
    """A FIFO named like an image, a symlink to an endless device, a symlink loop and a file
    name that is not UTF-8: one error line each (or a scored image), never a hang or an abort;
    unchanged failures are not reported again on a re-run."""
    root, out = tmp_path / "tree", tmp_path / "results.jsonl"
    root.mkdir()
    (root / "good.png").write_bytes(P.encode(scene, "PNG"))
    os.mkfifo(root / "fifo.jpg")
    (root / "random.jpg").symlink_to("/dev/urandom")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    os.close(os.open(os.fsencode(root) + b"/latin\xe9.png", os.O_CREAT | os.O_WRONLY))
    with open(os.fsencode(root) + b"/latin\xe9.png", "wb") as fh:
        fh.write(P.encode(scene, "PNG"))
    first = subprocess.run(
        [sys.executable, "-m", "detector.cli", "scan", str(root), "--out", str(out),
         "--no-progress"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    recs = {r["path"]: r for r in _lines(out)}
    assert set(recs) == {"good.png", "fifo.jpg", "random.jpg", "loop.jpg", "latin\\xe9.png"}
    assert "not a regular file (a FIFO)" in recs["fifo.jpg"]["error"]
    assert "not a regular file (a character device)" in recs["random.jpg"]["error"]
    assert "symbolic links" in recs["loop.jpg"]["error"]
    assert "verdict" in recs["good.png"] and "verdict" in recs["latin\\xe9.png"]
    again = run("scan", str(root), "--out", str(out), "--no-progress")
    assert again.returncode == 0 and "5 already in the results" in again.stderr
    assert len(_lines(out)) == 5
    for name, reason in (("fifo.jpg", "a FIFO"), ("random.jpg", "character device")):
        res = subprocess.run(
            [sys.executable, "-m", "detector.cli", "score", str(root / name)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode != 0 and reason in res.stderr and "Traceback" not in res.stderr


def test_scan_reports_a_folder_it_cannot_list(tmp_path, scene, monkeypatch):
    """One error line for a folder os.walk cannot list (as root, permissions cannot make one:
    the listing itself fails here), and the rest of the tree is scanned."""
    from detector.pipeline import Detector
    from detector.scan import scan_directory

    root = tmp_path / "tree"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "a.png").write_bytes(P.encode(scene, "PNG"))
    (root / "b.png").write_bytes(P.encode(scene, "PNG"))
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "r.jsonl"
    stats = scan_directory(root, out, Detector(["c2pa"]), progress=False)
    recs = {r["path"]: r for r in _lines(out)}
    assert set(recs) == {"locked/", "b.png"} and stats.errors == 1
    assert recs["locked/"]["error"] == "cannot list folder (Permission denied)"
    assert scan_directory(root, out, Detector(["c2pa"]), progress=False).skipped == 2


def test_scan_follows_symlinked_folders_once_and_keeps_odd_names_apart(tmp_path, scene):
    from detector.pipeline import Detector
    from detector.scan import scan_directory

    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(P.encode(scene, "PNG"))
    (root / "photos").symlink_to(root / "sub")  # a second way to the same folder
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "loop").symlink_to(root / "elsewhere")  # a loop
    (root / "elsewhere" / "b.png").write_bytes(P.encode(scene, "PNG"))
    with open(os.fsencode(root) + b"/\xff.png", "wb") as fh:  # the byte 0xff
        fh.write(P.encode(scene[:64], "PNG"))
    (root / "\\xff.png").write_bytes(P.encode(scene[:96], "PNG"))  # the text \xff
    out = tmp_path / "r.jsonl"
    stats = scan_directory(root, out, Detector(["c2pa"]), progress=False)
    recs = {r["path"]: r for r in _lines(out)}
    assert set(recs) == {"elsewhere/b.png", "elsewhere/loop/", "photos/", "sub/a.png",
                         "\\xff.png", "\\\\xff.png"}  # fmt: skip
    assert recs["elsewhere/loop/"]["error"] == "links to a folder scanned already: not again"
    assert sum(stats.labels.values()) == 4 and stats.errors == 2 and len(_lines(out)) == 6
    again = scan_directory(root, out, Detector(["c2pa"]), progress=False)
    assert again.skipped == 6 and len(_lines(out)) == 6  # nothing scored twice on a resume


def test_scan_skips_hidden_names_and_reads_the_phone_formats_it_decodes(tmp_path, scene):
    """macOS's ._x.png resource forks, hidden files and folders and __MACOSX/ were scanned (an
    "unreadable" line each); .heic/.heif/.avif, which the decoder reads, were left out."""
    from PIL import Image

    from detector.image import SUPPORTED_FORMATS
    from detector.pipeline import Detector
    from detector.scan import scan_directory

    root = tmp_path / "tree"
    for hidden in (".ipynb_checkpoints", "__MACOSX"):
        (root / hidden).mkdir(parents=True)
        (root / hidden / "a.png").write_bytes(P.encode(scene, "PNG"))
    (root / "a.png").write_bytes(P.encode(scene, "PNG"))
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / ".hidden.png").write_bytes(P.encode(scene, "PNG"))
    phone = {"HEIF": ["p.heic", "p.heif"], "AVIF": ["p.avif"]}
    expected = {"a.png", *(n for fmt in SUPPORTED_FORMATS for n in phone.get(fmt, []))}
    for name in expected - {"a.png"}:
        Image.fromarray(scene).save(root / name, "AVIF" if name.endswith(".avif") else "HEIF")
    out = tmp_path / "r.jsonl"
    stats = scan_directory(root, out, Detector(["c2pa"]), progress=False)
    assert {r["path"] for r in _lines(out)} == expected and stats.errors == 0
    stats = scan_directory(root, tmp_path / "all.jsonl", Detector(["c2pa"]), all_files=True,
                           progress=False)  # fmt: skip
    assert {r["path"] for r in _lines(tmp_path / "all.jsonl")} == expected


@pytest.mark.parametrize(
    ("text", "bad_line"),
    [
        ("this is somebody's notes file\n", 1),
        ("[1, 2]\n", 1),
        ('"x"\n', 1),
        ("5\n", 1),
        ("My thesis, final draft", 1),  # no final newline: not mistaken for a cut-off record
        ("name,score\nalice,10\nbob,12", 1),
        ('{"path": "a.png", "sha256": "00", "error": "x"}\nbob,12', 2),  # results, then not
        # JSON with a path but no verdict or error: somebody's manifest, not results
        ('{"path": "a.png", "size": 3}\n', 1),
        ('{"path": "/etc/foo", "other": 1}', 1),  # a whole JSON file without a final newline
    ],
)
def test_scan_refuses_a_foreign_output_file(tmp_path, scene, text, bad_line):
    """Text, or JSON that is not a record: the same one-line refusal, the file untouched (its
    last line too, when the file does not end in a newline)."""
    root = tmp_path / "tree"
    _tree(root, scene, 2)
    out = tmp_path / "other.jsonl"
    out.write_text(text)
    res = run("scan", str(root), "--out", str(out), "--no-progress")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    refusal = f"{out} line {bad_line} is not a synthdetect result; choose another --out"
    assert res.stderr == f"synthdetect: {refusal}\n"
    assert out.read_text() == text


def test_scan_refuses_an_output_that_is_not_a_regular_file(tmp_path, scene):
    """A device or a FIFO as --out is refused unread (reading /dev/zero never ends)."""
    root = tmp_path / "tree"
    _tree(root, scene, 2)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for out in ("/dev/zero", str(fifo)):
        res = subprocess.run(
            [sys.executable, "-m", "detector.cli", "scan", str(root), "--out", out,
             "--no-progress"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert res.stderr == (
            f"synthdetect: {out} is not a regular file; --out takes a file path\n"
        )


def test_plain_scan_refuses_parquet_output(tmp_path, scene):
    """JSON lines under a .parquet name would be refused by the next `scan --ray`."""
    root = tmp_path / "tree"
    _tree(root, scene, 2)
    out = tmp_path / "r.parquet"
    res = run("scan", str(root), "--out", str(out), "--no-progress")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr == (
        f"synthdetect: --out {out}: Parquet output needs --ray; plain scan writes JSONL\n"
    )
    assert not out.exists()
    assert ".parquet needs --ray" in run("scan", "--help").stdout


def test_score_and_scan_refuse_a_missing_memory_database(tmp_path, files):
    """A mistyped --memory-db is refused, not created empty (an empty memory never matches)."""
    db = tmp_path / "nosuch.sqlite"
    for args in (["score", str(files["camera"])], ["scan", str(tmp_path), "--out", "r.jsonl"]):
        res = run(*args, "--memory-db", str(db), cwd=tmp_path)
        assert res.returncode == 2 and res.stderr == f"synthdetect: no memory database at {db}\n"
        assert not db.exists()


def test_json_records_the_sha256_of_a_file_read_but_not_decoded(files):
    """As `scan` does: null only for a file that could not be read."""
    import hashlib

    out = run("score", "--json", str(files["truncated"]), str(files["text"]), "missing.png")
    records = json.loads(out.stdout)
    assert [r["sha256"] for r in records] == [
        hashlib.sha256(files["truncated"].read_bytes()).hexdigest(),
        hashlib.sha256(files["text"].read_bytes()).hexdigest(),
        None,
    ]
    assert all("error" in r for r in records)


def test_a_bad_model_folder_is_one_line_for_every_command(tmp_path):
    """A folder whose graph takes other tiles than its preprocessing makes (here: no sidecar,
    so the default 128 px), whose sidecar is malformed, or that is not the precision its flag
    names (an fp32 folder given as --int8): each command that loads a model says
    so in one line naming the folder, exit 2, before any image is scored."""
    from detector.bundled import DEFAULT_MODEL
    from tests.onnxfiles import tile_graph

    (tmp_path / "x.png").write_bytes(P.encode(P.synthetic_scene(1, 64, 64), "PNG"))
    tile_graph(tmp_path / "bare" / "model.onnx", 192)
    tile_graph(tmp_path / "bad" / "model.onnx", 128)
    (tmp_path / "bad" / "model.json").write_text('{"preprocess": {"input_size": "abc"}}')
    (tmp_path / "int8").mkdir()  # an int8 copy given as --model and as --int8: two rows alike
    (tmp_path / "int8" / "model.onnx").symlink_to(DEFAULT_MODEL / "model.onnx")
    sidecar = json.loads((DEFAULT_MODEL / "model.json").read_text())
    (tmp_path / "int8" / "model.json").write_text(json.dumps({**sidecar, "precision": "int8"}))
    bare = "bare: model.onnx takes 3x192x192 tiles but its preprocessing"
    bad = "bad/model.json: preprocess.input_size must be an integer, got 'abc'"
    for args, message in [
        (["score", "--model", "bare", "x.png"], bare),
        (["score", "--model", "bad", "x.png"], bad),
        (["scan", ".", "--out", "r.jsonl", "--model", "bare"], bare),
        (["bench", "latency", "--model", "bare", "--seconds", "1"], bare),
        (
            ["bench", "latency", "--model", str(DEFAULT_MODEL), "--int8", str(DEFAULT_MODEL)],
            f"--int8 {DEFAULT_MODEL}: its model.json says precision fp32, not int8",
        ),
        (
            ["bench", "latency", "--model", "int8", "--int8", "int8"],
            "--model int8 is int8 too (its model.json); give the fp32 folder as --model",
        ),
        (["serve", "--model", "bare", "--port", "0"], bare),
        (["serve", "--model", "bad", "--port", "0"], bad),
        (["export", "bad", "--triton-repo", "repo"], "preprocess.input_size must be an integer"),
    ]:
        out = run(*args, cwd=tmp_path)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)
        assert last.startswith("synthdetect: ") and message in last, (args, out.stderr)
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_scan_killed_midway_loses_no_finished_result(tmp_path, scene):
    root, out = tmp_path / "tree", tmp_path / "results.jsonl"
    _tree(root, scene, 60)
    proc = subprocess.Popen(
        [
            *CLI,
            "scan",
            str(root),
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "1",
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 5:
            break
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = out.read_text().count("\n")
    assert before >= 5
    done = subprocess.run(
        [*CLI, "scan", str(root), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    recs = _lines(out)
    assert len({r["path"] for r in recs}) == 61
    assert len(recs) == 61, "finished results were kept and not scored twice"
    assert f"{before} already in the results" in done.stderr


def test_bench_load_fails_when_every_request_fails(tmp_path):
    """A server that answers but rejects every request gives exit 1 and no results file."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # http.server answers POST with 501: a server, but not one that scores
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        out_file = tmp_path / "load.json"
        url = f"http://127.0.0.1:{port}"
        out = run("bench", "load", "--url", url, "--concurrency", "1", "--seconds", "1",
                  "--requests", "20", "--out", str(out_file))  # fmt: skip
    finally:
        srv.kill()
        srv.wait(10)
    assert out.returncode == 1
    assert "no request succeeded at concurrency 1" in out.stderr and "'501'" in out.stderr
    assert not out_file.exists()


def test_asking_for_a_gpu_where_there_is_none_is_refused(tmp_path):
    """--device cuda used to run on the CPU after a log line: a deployment asking for a GPU
    would not notice it had none. Every command that loads the model now says so, exit 2.
    (`bench latency` alone runs its ONNX rows on the CPU then, labelled by their provider, so
    that a GPU machine with the CPU wheel still times torch on CUDA beside them.)"""
    from detector.bundled import DEFAULT_MODEL
    from detector.engine import ort_has_gpu

    if ort_has_gpu():
        pytest.skip("this ONNX Runtime has a GPU provider")

    (tmp_path / "x.png").write_bytes(P.encode(P.synthetic_scene(1, 64, 64), "PNG"))
    for args in (
        ["score", "x.png", "--device", "cuda"],
        ["scan", ".", "--out", "r.jsonl", "--device", "cuda"],
        ["serve", "--port", "0", "--device", "tensorrt"],
        ["bench", "peers", "--model", str(DEFAULT_MODEL), "--device", "cuda"],
    ):
        out = run(*args, cwd=tmp_path)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)
        assert last.startswith(f"synthdetect: --device {args[-1]}: this ONNX Runtime has no GPU")
        # the recipe that works: [gpu] alone keeps the CPU wheel (a core dependency) beside it
        assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in last
    assert not (tmp_path / "r.jsonl").exists()


def test_both_onnx_runtime_wheels_installed_are_named(monkeypatch):
    """The CPU wheel and onnxruntime-gpu share one folder: with both, the refusal says so."""
    import importlib.metadata

    from detector import engine

    if engine.ort_has_gpu():
        pytest.skip("this ONNX Runtime has a GPU provider")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.20.0")
    assert engine.ort_wheels() == ["onnxruntime 1.20.0", "onnxruntime-gpu 1.20.0"]
    with pytest.raises(
        ValueError, match=r"\(onnxruntime 1\.20\.0 and onnxruntime-gpu 1\.20\.0 are both"
    ):
        engine.OnnxEngine("unused.onnx", device="cuda")


def test_weights_c_values_and_out_folders_are_checked_before_the_work(tmp_path):
    """nan or inf weights reached the calibration, which then blamed the data's logits."""
    for args in (
        ["soup", "a", "b", "--out", "s", "--weights", "nan,1"],
        ["ensemble", "a", "b", "--out", "e", "--data", "m.csv", "--weights", "1,inf"],
        ["probe", "--data", "m.csv", "--out", "p", "--c", "0.1,nan"],
    ):
        out = run(*args, cwd=tmp_path)
        assert out.returncode == 2 and "finite numbers separated by commas" in out.stderr, args
        assert "Traceback" not in out.stderr
    # an --out that cannot take the result is found before the work (feature extraction ran
    # for minutes, then "File exists")
    (tmp_path / "taken").write_text("")
    for command in (["probe", "--data", "m.csv"], ["soup", "a", "b"]):
        out = run(*command, "--out", "taken", cwd=tmp_path)
        assert out.returncode == 2 and "taken is a file; give a folder" in out.stderr, command


def test_score_decodes_and_scores_in_bounded_chunks(files, monkeypatch, capsys):
    """`score` decoded every file before scoring any: memory grew by each file's pixels (six
    80 MP files peaked at 2.9 GB). It scores chunks and drops their pixels; the records are
    those of one batch, in the files' order, errors kept in place."""
    import detector.cli as cli
    from detector.pipeline import Detector

    order = [files[k] for k in ("camera", "truncated", "a1111", "camera", "text", "a1111")]
    argv = ["score", "--json", "--methods", "generator_params,exif_hints", *map(str, order)]
    assert cli.main(argv) == 0
    whole = json.loads(capsys.readouterr().out)
    sizes = []
    scores = Detector.score

    def spy(self, images):
        sizes.append(len(images))
        return scores(self, images)

    monkeypatch.setattr(Detector, "score", spy)
    monkeypatch.setattr("detector.pipeline.CHUNK_IMAGES", 2)
    assert cli.main(argv) == 0
    assert sizes == [2, 2]  # 4 readable files in chunks of 2
    assert _untimed(json.loads(capsys.readouterr().out)) == _untimed(whole)
    assert [("error" in r) for r in whole] == [False, True, False, False, True, False]


def _untimed(value):
    """A record without its timings (``ms``, ``timings_ms``), which differ run to run."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in ("ms", "timings_ms")}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def test_a_second_scan_of_the_same_output_is_refused(tmp_path, scene):
    """Two scans appending to one --out both scored everything: every file twice."""
    from detector.pipeline import Detector
    from detector.scan import ScanError, open_results, scan_directory

    root, out = tmp_path / "tree", tmp_path / "results.jsonl"
    _tree(root, scene, 3)
    held = open_results(out)  # another scan at work
    try:
        with pytest.raises(ScanError, match="being written by another scan"):
            scan_directory(root, out, Detector(["c2pa"]), progress=False)
        res = run("scan", str(root), "--out", str(out), "--no-progress")
        assert res.returncode == 2 and "being written by another scan" in res.stderr
    finally:
        held.close()
    assert scan_directory(root, out, Detector(["c2pa"]), progress=False).errors == 1  # bad.jpg
    assert len(_lines(out)) == 4


def test_a_record_whose_newline_was_lost_is_kept_and_ended(tmp_path, scene):
    from detector.pipeline import Detector
    from detector.scan import scan_directory

    root, out = tmp_path / "tree", tmp_path / "results.jsonl"
    _tree(root, scene, 3)
    scan_directory(root, out, Detector(["c2pa"]), progress=False)
    out.write_bytes(out.read_bytes()[:-1])  # a crash between the record and its newline
    again = scan_directory(root, out, Detector(["c2pa"]), progress=False)
    assert again.skipped == 4 and len(_lines(out)) == 4  # 3 images and bad.jpg


def test_files_refused_by_a_decode_limit_are_scanned_once_it_is_raised(tmp_path, scene):
    """Undecodable files were known by their sha256 alone: raising --max-pixels left them
    reported as errors for ever. They are decoded again; the same failure is not repeated."""
    from detector.image import DecodeLimits
    from detector.pipeline import Detector
    from detector.scan import scan_directory

    root, out = tmp_path / "tree", tmp_path / "results.jsonl"
    _tree(root, scene, 3)
    strict = Detector(["c2pa"], limits=DecodeLimits(max_pixels=1000))
    assert scan_directory(root, out, strict, progress=False).errors == 4  # 3 + bad.jpg
    assert scan_directory(root, out, strict, progress=False).skipped == 4  # same failures
    assert len(_lines(out)) == 4
    scored = scan_directory(root, out, Detector(["c2pa"]), progress=False)
    assert scored.skipped == 1 and sum(scored.labels.values()) == 3  # bad.jpg: still bad
    assert scan_directory(root, out, Detector(["c2pa"]), progress=False).skipped == 4
    assert len(_lines(out)) == 7


def test_a_source_tree_never_installed_has_every_command(monkeypatch, capsys):
    """`python -m detector.cli` from a checkout that was never pip-installed (a bare GPU
    machine with the tree on PYTHONPATH) had score, scan, methods and memory only: train,
    serve and bench come from entry points, which exist only once installed."""
    from importlib import metadata

    from detector import cli

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    monkeypatch.setattr(metadata, "entry_points", lambda **kw: [])
    found = {ep.name: ep.value for ep in cli._plugin_entry_points()}
    assert found == {"training": "training.cli:register", "serving": "serving.cli:register",
                     "benchmarks": "benchmarks.cli:register"}  # fmt: skip
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    assert all(f"    {name} " in shown for name in ("train", "serve", "bench", "probe"))


def test_a_report_is_never_written_over_an_input(exported_model, tmp_path):
    """evaluate --out MODEL/model.json replaced the model's sidecar (the model then failed to
    load), and --out the manifest replaced the data; both exited 0."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(exported_model, model)
    data = tmp_path / "data"
    data.mkdir()
    rows = ["path,label,split"]
    for i, label in enumerate(["real", "fake"] * 2):
        (data / f"{i}.png").write_bytes(P.encode(P.synthetic_scene(i, 64, 64), "PNG"))
        rows.append(f"{i}.png,{label},test")
    manifest = data / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    before = {p: p.read_bytes() for p in (model / "model.json", manifest)}
    model_json = model / "model.json"
    for command, targets in (
        (["evaluate", "--model", str(model), "--data", str(manifest), "--split", "test"],
         (model_json, manifest)),
        (["bench", "accuracy", "--data", str(manifest), "--model", str(model), "--methods",
          "model"], (model_json, manifest)),
        (["train-artifact", "--data", str(manifest)], (manifest,)),
    ):  # fmt: skip
        for target in targets:
            done = run(*command, "--out", str(target))
            assert done.returncode == 2 and "an input of this command" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
    assert {p: p.read_bytes() for p in before} == before
