"""Logit ensembles: exported models merged into one calibrated graph."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from PIL import Image
from torch import nn

from detector.calibration import Calibration
from detector.engine import load_bundle
from detector.preprocess import PreprocessConfig
from training.datasets import load_samples
from training.ensemble import EnsembleError, fp16_storage, make_ensemble
from training.evaluate import predict_logits
from training.export import write_onnx

pytestmark = pytest.mark.integration

SIZE = 32


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def export_tiny(folder: Path, seed: int, temperature: float, excluded: list[str], size=SIZE):
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    write_onnx(Tiny().eval(), folder / "model.onnx", size)
    meta = {
        "format": "synthdetect-onnx/1",
        "name": f"tiny{seed}",
        "model_spec": {"name": "tiny"},
        "preprocess": PreprocessConfig(input_size=size, max_tiles=4).to_dict(),
        "calibration": Calibration(temperature=temperature, threshold=0.5).to_dict(),
        "aggregation": "mean of tile logits, then sigmoid(logit / temperature)",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1]}],
        "precision": "fp32",
        "opset": 18,
        "onnx_sha256": hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest(),
        "training": {"exclude_families": excluded, "exclude_sources": []},
    }
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 2), ("val", 6)):
        for label in ("real", "fake"):
            for i in range(n):
                name = f"{split}-{label}-{i}.png"
                px = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
                if label == "real":  # smoother: something for the members to rank
                    px = (px // 64 * 64).astype(np.uint8)
                Image.fromarray(px).save(root / name)
                fam = "seen" if label == "fake" else ""
                rows.append({"path": name, "label": label, "family": fam, "split": split})
    (root / "val-held-0.png").write_bytes((root / "train-fake-0.png").read_bytes())
    rows.append({"path": "val-held-0.png", "label": "fake", "family": "held", "split": "val"})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "family", "split"])
        w.writeheader()
        w.writerows(rows)
    a = export_tiny(root / "a", 0, 1.5, ["held", "other"])
    b = export_tiny(root / "b", 1, 0.8, ["held"])
    return manifest, a, b


def test_the_merged_graph_is_the_weighted_mean_of_its_members_scaled_logits(setup, tmp_path):
    manifest, a, b = setup
    meta = make_ensemble([a, b], tmp_path / "ens", manifest, weights=[1, 3])
    merged, ma, mb = (load_bundle(p) for p in (tmp_path / "ens", a, b))
    tiles = np.random.default_rng(1).normal(size=(7, 3, SIZE, SIZE)).astype(np.float32)
    want = 0.25 * np.asarray(ma.logits(tiles)) / 1.5 + 0.75 * np.asarray(mb.logits(tiles)) / 0.8
    np.testing.assert_allclose(merged.logits(tiles), want, rtol=1e-5, atol=1e-6)
    # per image too: the mean over an image's tiles commutes with the weighted sum
    val = [s for s in load_samples(manifest) if s.split == "val"]
    img = predict_logits(merged.logits, val, merged.preprocess)
    parts = [predict_logits(m.logits, val, m.preprocess) for m in (ma, mb)]
    np.testing.assert_allclose(img, 0.25 * parts[0] / 1.5 + 0.75 * parts[1] / 0.8, atol=1e-5)
    # calibrated on the validation split without the families every member left out
    cal = meta["calibration"]
    assert (
        "val split of" in cal["fitted_on"] and "12 real / 12 generated" in cal["fitted_on"]
    )  # 6 + 6, twice
    assert cal["temperature"] > 0 and 0 < cal["threshold"] < 1
    assert merged.calibration.to_dict() == cal
    assert meta["training"]["exclude_families"] == ["held"]
    assert [m["weight"] for m in meta["training"]["ensemble"]] == [0.25, 0.75]
    assert meta["parity"]["max_abs_logit_diff"] < 1e-4
    assert meta["model_spec"]["name"] == "ensemble"


def test_models_that_cannot_be_merged_are_refused_before_anything_is_written(setup, tmp_path):
    manifest, a, b = setup
    other = export_tiny(tmp_path / "c", 2, 1.0, ["held"], size=SIZE + 2)
    cases = [
        ([a, other], "preprocesses differently"),
        ([a], "at least two models"),
        ([a, tmp_path / "missing"], "not an exported model folder"),
    ]
    for folders, message in cases:
        with pytest.raises(EnsembleError, match=message):
            make_ensemble(folders, tmp_path / "out", manifest)
        assert not (tmp_path / "out" / "model.onnx").exists()
    with pytest.raises(EnsembleError, match="weights"):
        make_ensemble([a, b], tmp_path / "out", manifest, weights=[1.0])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((a / "model.json").read_text())
    (broken / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(EnsembleError, match=r"cannot read model\.onnx"):
        make_ensemble([a, broken], tmp_path / "out", manifest)
    done = tmp_path / "done"
    make_ensemble([a, b], done, manifest)
    with pytest.raises(EnsembleError, match="already holds an ONNX model"):
        make_ensemble([a, b], done, manifest)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # a training run: export/evaluate read it
    with pytest.raises(EnsembleError, match=r"already holds a training run"):
        make_ensemble([a, b], run, manifest)
    with pytest.raises(EnsembleError, match="finite"):
        make_ensemble([a, b], tmp_path / "inf", manifest, weights=[float("inf"), 1.0])


def test_a_merge_that_fails_while_calibrating_leaves_no_folder(setup, tmp_path):
    manifest, a, b = setup
    rows = manifest.read_text() + "val-broken.png,fake,seen,val\n"
    bad = manifest.parent / "broken-manifest.csv"
    bad.write_text(rows)
    (manifest.parent / "val-broken.png").write_bytes(b"not an image")
    with pytest.raises(Exception, match=r"val-broken\.png"):
        make_ensemble([a, b], tmp_path / "new", bad)
    assert not (tmp_path / "new").exists()  # made here: removed
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    with pytest.raises(Exception, match=r"val-broken\.png"):
        make_ensemble([a, b], mine, bad)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # the user's folder: kept as it was


def test_nothing_is_in_the_output_folder_until_the_merge_is_calibrated(
    setup, tmp_path, monkeypatch
):
    """The graph and a sidecar with the first member's calibration were written into --out
    before calibrating: a merge stopped there (SIGTERM) left a model that loaded and scored
    with the wrong threshold, and a rerun was refused ("already holds an ONNX model")."""
    from training import ensemble

    manifest, a, b = setup
    out = tmp_path / "ens"
    seen = []
    calibrate = ensemble.validation_calibration

    def during(*args, **kwargs):
        seen.append(out.exists())
        return calibrate(*args, **kwargs)

    monkeypatch.setattr(ensemble, "validation_calibration", during)
    meta = make_ensemble([a, b], out, manifest)
    assert seen == [False]
    assert json.loads((out / "model.json").read_text())["calibration"] == meta["calibration"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ens-")) == []


def test_cli_reports_a_bad_model_folder_without_a_traceback(setup, tmp_path):
    manifest, a, _ = setup
    res = subprocess.run(
        [sys.executable, "-m", "detector.cli", "ensemble", str(a), str(tmp_path / "nope"),
         "--out", str(tmp_path / "out"), "--data", str(manifest)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2
    assert "not an exported model folder" in res.stderr and "Traceback" not in res.stderr


def test_fp16_storage_halves_the_weights_and_keeps_float32_compute(setup, tmp_path):
    manifest, a, b = setup
    meta = make_ensemble([a, b], tmp_path / "ens", manifest, store_fp16=True)
    assert meta["weights_storage"] == "fp16" and meta["parity"]["tolerance"] == 5e-2
    assert meta["parity"]["max_abs_logit_diff"] <= 5e-2
    # an fp16-stored member keeps its storage in a merge without the flag: in either order
    # (the key was copied from the first member's sidecar, so it depended on the order)
    for i, members in enumerate(([tmp_path / "ens", a], [a, tmp_path / "ens"])):
        again = make_ensemble(members, tmp_path / f"again{i}", manifest)
        assert again["weights_storage"] == "mixed", members
    assert "weights_storage" not in make_ensemble([a, b], tmp_path / "plain", manifest)
    # every initializer from min_size values on is stored as float16, cast back by a node
    model = onnx.load(str(tmp_path / "ens" / "model.onnx"))
    halved = fp16_storage(model, min_size=1)
    stored = {i.name: i.data_type for i in halved.graph.initializer}
    assert TensorProto.FLOAT not in stored.values()  # (shape constants stay int64)
    assert sum(t == TensorProto.FLOAT16 for t in stored.values()) >= 4  # two convs, two linears
    assert halved.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    full = tmp_path / "full.onnx"
    onnx.save(onnx.load(str(tmp_path / "ens" / "model.onnx")), str(full))
    half = tmp_path / "half.onnx"
    onnx.save(halved, str(half))

    def weight_bytes(m):
        kinds = (TensorProto.FLOAT, TensorProto.FLOAT16)
        return sum(
            numpy_helper.to_array(i).nbytes for i in m.graph.initializer if i.data_type in kinds
        )

    assert weight_bytes(halved) * 2 == weight_bytes(onnx.load(str(full)))
    tiles = np.random.default_rng(2).normal(size=(5, 3, SIZE, SIZE)).astype(np.float32)
    from detector.engine import OnnxEngine

    want, got = OnnxEngine(full).run(tiles), OnnxEngine(half).run(tiles)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=5e-3)
    assert not np.array_equal(got, want)  # the weights really were rounded


def test_fp16_storage_keeps_weights_beyond_float16s_range_in_float32():
    from onnx import helper

    big = numpy_helper.from_array(np.full((2, 2), 1e6, np.float32), "big")
    small = numpy_helper.from_array(np.ones((2, 2), np.float32), "small")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in ("x", "y")]
    nodes = [
        helper.make_node("Add", ["x", "big"], ["t"]),
        helper.make_node("Add", ["t", "small"], ["y"]),
    ]
    model = fp16_storage(
        helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], [big, small])), min_size=1
    )
    stored = {i.name: i.data_type for i in model.graph.initializer}
    assert stored == {"big": TensorProto.FLOAT, "small__fp16": TensorProto.FLOAT16}
