"""Export checks itself against torch; engines and the model method agree with the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detector.checkpoint import load_checkpoint
from detector.engine import load_bundle
from detector.image import decode
from detector.methods import create_method
from detector.preprocess import PreprocessConfig, preprocess
from training import metadata_writers as P
from training.export import ExportError, export_onnx, reduce_precision

pytestmark = pytest.mark.integration


def test_sidecar_describes_the_model(exported_model):
    meta = json.loads((exported_model / "model.json").read_text())
    assert meta["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": [-1, 3, 64, 64]}
    assert meta["outputs"][0]["name"] == "logits"
    assert meta["parity"]["max_abs_logit_diff"] <= meta["parity"]["tolerance"]
    assert meta["calibration"]["threshold"] == 0.6
    assert PreprocessConfig.from_dict(meta["preprocess"]).input_size == 64
    assert meta["training"]["exclude_families"] == []  # what its run held out: nothing here
    assert meta["training"]["exclude_sources"] == []
    assert meta["training"]["config"] == {}  # the fixture's checkpoint records no run config


def test_export_records_the_runs_training_config(untrained_checkpoint, tmp_path):
    import torch

    image = tmp_path / "scene.png"
    image.write_bytes(P.encode(P.synthetic_scene(0, 96, 96), "PNG"))

    ckpt = torch.load(untrained_checkpoint, weights_only=True)
    recipe = {"input_size": 64, "lr": 0.0003, "ema_decay": 0.998, "exclude_families": ["gan"]}
    ckpt["train_config"] = recipe
    torch.save(ckpt, tmp_path / "model.pt")
    meta = export_onnx(tmp_path / "model.pt", tmp_path / "onnx", [image]).sidecar
    assert meta["training"]["config"] == recipe and meta["training"]["exclude_families"] == ["gan"]
    assert (
        json.loads((tmp_path / "onnx" / "model.json").read_text())["training"]["config"] == recipe
    )


def test_onnx_and_torch_engines_agree_on_fresh_inputs(exported_model, untrained_checkpoint):
    onnx = load_bundle(exported_model)
    torch_bundle = load_bundle(untrained_checkpoint)
    tiles = np.random.default_rng(5).normal(size=(7, 3, 64, 64)).astype(np.float32)
    a, b = onnx.logits(tiles, batch_size=3), torch_bundle.logits(tiles)
    assert a.shape == (7,)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_model_method_averages_tiles_and_calibrates(exported_model, untrained_checkpoint):
    method = create_method("model", model_path=exported_model)
    pixels = P.synthetic_scene(9, 100, 130)
    image = decode(P.encode(pixels, "PNG"))
    res = method.score([image])[0]
    model, ckpt = load_checkpoint(untrained_checkpoint)
    tiles = preprocess(pixels, PreprocessConfig.from_dict(ckpt["preprocess"]))
    with torch.no_grad():
        mean = float(model(torch.from_numpy(tiles)).mean())
    assert res.details["tiles"] == len(tiles) == 4
    assert res.probability == pytest.approx(1 / (1 + np.exp(-mean / 1.5)), abs=1e-4)


def test_export_refuses_an_uncalibrated_checkpoint(untrained_checkpoint, tmp_path):
    ckpt = torch.load(untrained_checkpoint, weights_only=True)
    ckpt["calibration"] = None
    path = tmp_path / "raw.pt"
    torch.save(ckpt, path)
    with pytest.raises(ExportError, match="not calibrated"):
        export_onnx(path, tmp_path / "out", [])


def _scenes(folder, n=4, seed=50):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        path.write_bytes(P.encode(P.synthetic_scene(seed + i, 96, 96), "PNG"))
        paths.append(path)
    return paths


def _tampered_copy(exported, copy):
    """The export copied with one bit of its ONNX file flipped (its sidecar sha256 now wrong)."""
    import shutil

    shutil.copytree(exported, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    return copy


def test_tampered_onnx_is_refused(exported_model, tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        load_bundle(_tampered_copy(exported_model, tmp_path / "copy"))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_exports_run_and_stay_close(untrained_checkpoint, tmp_path, precision):
    images = _scenes(tmp_path / "img", n=4, seed=40)
    result = export_onnx(
        untrained_checkpoint, tmp_path / precision, images, precision=precision, calib_images=images
    )
    assert result.sidecar["precision"] == precision
    bundle = load_bundle(tmp_path / precision)
    tiles = np.random.default_rng(1).normal(size=(3, 3, 64, 64)).astype(np.float32)
    assert np.isfinite(bundle.logits(tiles)).all()
    if precision == "fp16":
        assert result.sidecar["parity"]["max_abs_logit_diff"] <= 5e-2


def test_a_triton_export_that_fails_at_the_swap_keeps_the_earlier_one(
    exported_model, tmp_path, monkeypatch
):
    """The earlier export was removed before the new one was renamed into place: a failure
    between the two left the repository without the model."""
    import pathlib

    from training.triton_repo import write_triton_repo

    target = write_triton_repo(exported_model, tmp_path / "repo", max_batch_size=32)
    before = (target / "config.pbtxt").read_text()
    rename = pathlib.Path.rename

    def failing(self, dest):
        if pathlib.Path(dest) == target and "-old-" not in str(self):
            raise OSError(28, "No space left on device")
        return rename(self, dest)

    monkeypatch.setattr(pathlib.Path, "rename", failing)
    with pytest.raises(OSError, match="No space left"):
        write_triton_repo(exported_model, tmp_path / "repo", max_batch_size=8)
    assert (target / "config.pbtxt").read_text() == before
    assert (target / "1" / "model.onnx").is_file()
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [target.name]  # nothing left


def test_triton_repository_parses_with_the_model_config_protobuf(exported_model, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from training.triton_repo import write_triton_repo

    target = write_triton_repo(exported_model, tmp_path / "repo", max_batch_size=32, tensorrt=True)
    assert (target / "1" / "model.onnx").exists()
    config = text_format.Parse(
        (target / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "synthdetect_tiles" and config.backend == "onnxruntime"
    assert config.max_batch_size == 32 and list(config.input[0].dims) == [3, 64, 64]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"


def test_held_out_family_is_scored_against_the_test_reals_of_its_pools(exported_model, tiny_corpus):
    """What leave-one-out scores each family's model on: the family's test and held-out
    generator fakes, and only the test reals of the pools those fakes belong to."""
    from training.datasets import load_samples
    from training.run_eval import score_held_out_family

    samples = load_samples(tiny_corpus / "manifest.csv")
    bundle = load_bundle(exported_model)
    labels, probs = score_held_out_family(bundle, samples, "gan")
    fakes = [s for s in samples if s.family == "gan" and s.split == "test"]
    reals = [s for s in samples if s.label == 0 and s.split == "test" and s.pool == "crops64"]
    assert fakes and reals and {s.pool for s in fakes} == {"crops64"}
    assert labels.tolist() == [1] * len(fakes) + [0] * len(reals)
    assert probs.shape == labels.shape and ((probs >= 0) & (probs <= 1)).all()
    empty_labels, empty_probs = score_held_out_family(bundle, samples, "no-such-family")
    assert len(empty_labels) == 0 and len(empty_probs) == 0


def test_a_sidecar_whose_graph_and_preprocessing_disagree_fails_to_load(exported_model, tmp_path):
    """The tile size lives in the preprocessing; the sidecar's input shape must agree."""
    import json
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(exported_model, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["inputs"][0]["shape"] = [-1, 3, 96, 96]
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="the graph takes 96x96 tiles but its preprocessing"):
        load_bundle(copy)


def test_fp16_copy_of_an_onnx_export_keeps_its_record_and_stays_close(exported_model, tmp_path):
    from training.export import reduce_precision

    images = _scenes(tmp_path / "img")
    source = json.loads((exported_model / "model.json").read_text())
    result = reduce_precision(exported_model, tmp_path / "fp16", images, precision="fp16")
    meta = json.loads((tmp_path / "fp16" / "model.json").read_text())
    assert meta == result.sidecar and meta["precision"] == "fp16"
    assert meta["converted_from"]["onnx_sha256"] == source["onnx_sha256"] != meta["onnx_sha256"]
    assert meta["parity"]["against"] == "fp32 ONNX" and meta["parity"]["tiles"] > 0
    assert meta["parity"]["max_abs_logit_diff"] <= 5e-2
    for key in ("calibration", "preprocess", "training", "model_spec"):
        assert meta[key] == source[key]
    tiles = np.random.default_rng(3).normal(size=(5, 3, 64, 64)).astype(np.float32)
    fp32, fp16 = load_bundle(exported_model).logits(tiles), load_bundle(tmp_path / "fp16")
    np.testing.assert_allclose(fp16.logits(tiles), fp32, atol=5e-2)


@pytest.mark.slow
def test_int8_copy_of_an_onnx_export_runs_and_says_what_it_came_from(exported_model, tmp_path):
    from training.export import reduce_precision

    images = _scenes(tmp_path / "img")
    result = reduce_precision(
        exported_model, tmp_path / "int8", images, precision="int8", calib_images=images
    )
    assert result.sidecar["precision"] == "int8" and result.sidecar["parity"]["tolerance"] is None
    source = json.loads((exported_model / "model.json").read_text())
    assert result.sidecar["name"] == source["name"] + "-int8"
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    bundle = load_bundle(tmp_path / "int8")  # the recorded sha256 matches the quantised file
    tiles = np.random.default_rng(4).normal(size=(3, 3, 64, 64)).astype(np.float32)
    assert np.isfinite(bundle.logits(tiles)).all()


def test_reduced_precision_copy_refuses_what_it_cannot_convert(exported_model, tmp_path):

    from training.export import reduce_precision

    images = _scenes(tmp_path / "img", n=1)
    with pytest.raises(ExportError, match="fp16 or int8"):
        reduce_precision(exported_model, tmp_path / "a", images, precision="fp32")
    with pytest.raises(ExportError, match="not an ONNX export"):
        reduce_precision(tmp_path / "img", tmp_path / "b", images, precision="fp16")
    with pytest.raises(ExportError, match="calibration images"):
        reduce_precision(exported_model, tmp_path / "c", images, precision="int8")
    with pytest.raises(ExportError, match="another folder"):
        reduce_precision(exported_model, exported_model, images, precision="fp16")
    reduce_precision(exported_model, tmp_path / "half", images, precision="fp16")
    with pytest.raises(ExportError, match="already fp16"):
        reduce_precision(tmp_path / "half", tmp_path / "d", images, precision="fp16")
    tampered = _tampered_copy(exported_model, tmp_path / "tampered")
    with pytest.raises(ExportError, match="sha256"):
        reduce_precision(tampered, tmp_path / "e", images, precision="fp16")
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_a_copy_that_fails_its_parity_check_leaves_nothing_behind(
    exported_model, tmp_path, monkeypatch
):
    from training import export

    images = _scenes(tmp_path / "img", n=1)
    monkeypatch.setitem(export.TOLERANCE, "fp16", 0.0)
    with pytest.raises(ExportError, match="differs from the fp32 ONNX"):
        export.reduce_precision(exported_model, tmp_path / "out" / "half", images, precision="fp16")
    assert list((tmp_path / "out").iterdir()) == []  # neither the folder nor its staging copy


def test_a_failed_export_from_a_checkpoint_leaves_an_existing_export_as_it_was(
    untrained_checkpoint, tmp_path, monkeypatch
):
    """No images, int8 without calibration images, a failed parity check: nothing is written
    (a lone model.onnx would be loaded with default preprocessing and threshold 0.5), and a
    good export already in --out still loads and is byte for byte the same."""
    from training import export

    images = _scenes(tmp_path / "img", n=1)
    out = tmp_path / "models" / "m"
    export_onnx(untrained_checkpoint, out, images)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(ExportError, match="no images for the parity check"):
        export_onnx(untrained_checkpoint, out, [])
    with pytest.raises(ExportError, match="int8 needs calibration images"):
        export_onnx(untrained_checkpoint, out, images, precision="int8")
    monkeypatch.setitem(export.TOLERANCE, "fp16", 0.0)
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(untrained_checkpoint, out, images, precision="fp16")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m"]  # no staging left
    load_bundle(out)
    with pytest.raises(ExportError, match="no images for the parity check"):
        export_onnx(untrained_checkpoint, tmp_path / "fresh", [])
    assert not (tmp_path / "fresh").exists()


def test_export_never_writes_into_a_run_or_a_folder_of_other_files(
    untrained_checkpoint, exported_model, tmp_path
):
    """--out a training run: its model.onnx then hid the checkpoints from score and evaluate
    (they read the ONNX file first); a folder of other files was written into. An export to
    replace is still replaced."""
    images = _scenes(tmp_path / "img", n=1)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for out, message in ((run, "holds a training run"), (other, r"holds other files \(notes")):
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(ExportError, match=message):
            export_onnx(untrained_checkpoint, out, images)
        with pytest.raises(ExportError, match=message):
            reduce_precision(exported_model, out, images, precision="fp16")
        assert sorted(p.name for p in out.iterdir()) == before
    again = tmp_path / "again"
    export_onnx(untrained_checkpoint, again, images)
    export_onnx(untrained_checkpoint, again, images, precision="fp16")  # replaced
    assert json.loads((again / "model.json").read_text())["precision"] == "fp16"


def test_int8_calibration_takes_tiles_spread_over_every_image(tmp_path):
    from training.export import calibration_tiles

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    big.write_bytes(P.encode(P.synthetic_scene(1, 192, 192), "PNG"))  # a 3x3 grid of 64 px
    small.write_bytes(P.encode(P.synthetic_scene(2, 64, 64), "PNG"))  # one tile
    prep = PreprocessConfig(input_size=64, max_tiles=9)
    grid = preprocess(decode(big.read_bytes()).pixels, prep)
    tiles = calibration_tiles([big, small], prep, per_image=4)
    assert len(tiles) == 5  # 4 of the big image's 9, the small image's only one
    np.testing.assert_array_equal(tiles[0], grid[0])
    np.testing.assert_array_equal(tiles[3], grid[-1])
    with pytest.raises(ExportError, match="calibration images"):
        calibration_tiles([], prep)


def _val_manifest(root, reals, fakes, extra_fakes=()):
    """A manifest of the images under ``root``, all in the val split, in this order."""
    import csv

    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for label, paths in (("real", reals), ("fake", [*fakes, *extra_fakes])):
            w.writerows([p.relative_to(root), label, "val"] for p in paths)
    return manifest


def _export_cli(model, *args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "detector.cli", "export", str(model), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_int8_copy_stops_before_writing_when_a_val_image_is_unreadable(
    exported_model, tmp_path
):
    # 64 readable images calibrate; the 65th, not among them, is only read by the accuracy
    # check. It must stop the export before the copy exists, not leave it unvalidated.
    reals = _scenes(tmp_path / "data" / "real", n=32, seed=80)
    fakes = _scenes(tmp_path / "data" / "fake", n=32, seed=120)
    broken = tmp_path / "data" / "fake" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    manifest = _val_manifest(tmp_path / "data", reals, fakes, extra_fakes=[broken])
    out = tmp_path / "q"
    done = _export_cli(
        exported_model, "--int8", "--calib-data", str(manifest), "--out", str(out),
        "--images", *map(str, reals[:2]),
    )  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert "broken.png" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".q-*"))


@pytest.mark.slow
def test_cli_makes_an_int8_copy_of_an_export_and_measures_its_validation_ap(
    exported_model, tmp_path
):
    reals = _scenes(tmp_path / "data" / "real", n=4, seed=60)
    fakes = _scenes(tmp_path / "data" / "fake", n=4, seed=70)
    manifest = _val_manifest(tmp_path / "data", reals, fakes)

    def cli(*args):
        return _export_cli(exported_model, *args)

    done = cli(
        "--int8",
        "--calib-data",
        str(manifest),
        "--out",
        str(tmp_path / "q"),
        "--images",
        *map(str, reals),
    )
    assert done.returncode == 0, done.stderr
    assert "to the fp32 ONNX" in done.stdout and "int8 on 8 val images" in done.stdout
    meta = json.loads((tmp_path / "q" / "model.json").read_text())
    check = meta["int8_validation"]
    assert check["images"] == 8 and set(check["ap"]) == {"fp32 (onnx)", "int8 (onnx)"}
    assert check["delta"] == pytest.approx(check["ap"]["int8 (onnx)"] - check["ap"]["fp32 (onnx)"])
    for tag in ("fp32 (onnx)", "int8 (onnx)"):
        assert set(check["flagged_at_threshold"][tag]) == {"reals", "fakes"}
        assert all(0 <= v <= 1 for v in check["flagged_at_threshold"][tag].values())
    assert "reals flagged" in done.stdout
    plain = cli("--out", str(tmp_path / "p"))
    assert plain.returncode == 2 and "already an ONNX export" in plain.stderr
    assert "Traceback" not in plain.stderr and not (tmp_path / "p").exists()


def test_a_triton_export_replaces_its_own_folder_whole_and_nothing_else(exported_model, tmp_path):
    import shutil

    from training.triton_repo import write_triton_repo

    repo = tmp_path / "repo"
    target = write_triton_repo(exported_model, repo, gpu=False)
    (target / "config.pbtxt").write_text("stale")
    write_triton_repo(exported_model, repo, gpu=False)  # an earlier export: replaced
    assert "KIND_CPU" in (target / "config.pbtxt").read_text()
    (target / "2").mkdir()
    (target / "2" / "model.onnx").write_bytes(b"another version")
    with pytest.raises(ValueError, match=r"holds other files or versions than an export's \(2, "):
        write_triton_repo(exported_model, repo)  # Triton would serve the stale 2/
    assert (target / "2" / "model.onnx").read_bytes() == b"another version"
    broken = tmp_path / "no-onnx"
    broken.mkdir()
    shutil.copy(exported_model / "model.json", broken)
    with pytest.raises(ValueError, match=r"has a model\.json but no model\.onnx"):
        write_triton_repo(broken, tmp_path / "r3")
    assert not (tmp_path / "r3").exists()
    assert sorted(p.name for p in repo.iterdir()) == ["synthdetect_tiles"]  # no staging left


def test_cli_puts_an_existing_onnx_export_in_a_triton_repository(exported_model, tmp_path):
    """The bundled model (an ONNX export, not a checkpoint) reaches Triton without a re-export."""
    repo = tmp_path / "repo"
    done = _export_cli(exported_model, "--triton-repo", str(repo), "--triton-cpu")
    assert done.returncode == 0, done.stderr
    target = repo / "synthdetect_tiles"
    assert (target / "1" / "model.onnx").read_bytes() == (
        exported_model / "model.onnx"
    ).read_bytes()
    assert "KIND_CPU" in (target / "config.pbtxt").read_text()
    both = _export_cli(
        exported_model, "--triton-repo", str(tmp_path / "r2"), "--out", str(tmp_path / "o")
    )
    assert both.returncode == 2 and "without --out" in both.stderr
    assert not (tmp_path / "r2").exists() and not (tmp_path / "o").exists()


def test_a_triton_export_checks_the_graph_against_its_sidecar(exported_model, tmp_path):
    """A graph replaced beside its sidecar, or a sidecar edited to other names, gave a
    config.pbtxt that did not describe the graph Triton would load."""
    import shutil

    from training.triton_repo import write_triton_repo

    swapped = tmp_path / "swapped"
    shutil.copytree(exported_model, swapped)
    (swapped / "model.onnx").write_bytes((swapped / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"does not match the sha256 recorded in model\.json"):
        write_triton_repo(swapped, tmp_path / "r1")
    renamed = tmp_path / "renamed"
    shutil.copytree(exported_model, renamed)
    meta = json.loads((renamed / "model.json").read_text())
    meta["inputs"][0]["name"] = "pixels"
    (renamed / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="names input 'pixels', which the graph does not have"):
        write_triton_repo(renamed, tmp_path / "r2")
    meta["inputs"][0]["name"] = "images"
    meta["outputs"][0]["datatype"] = "FP16"
    (renamed / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"says output 'logits' is FP16 \[1\]; the graph's is "):
        write_triton_repo(renamed, tmp_path / "r3")
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


def test_a_triton_export_refuses_a_symlinked_model_folder(exported_model, tmp_path):
    from training.triton_repo import write_triton_repo

    elsewhere = tmp_path / "elsewhere"
    write_triton_repo(exported_model, elsewhere, gpu=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "synthdetect_tiles").symlink_to(elsewhere / "synthdetect_tiles")
    with pytest.raises(ValueError, match="is a symbolic link"):
        write_triton_repo(exported_model, repo)
    assert (elsewhere / "synthdetect_tiles" / "1" / "model.onnx").exists()
