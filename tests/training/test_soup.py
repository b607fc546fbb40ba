"""Model soups: the average of two runs' weights, calibrated, is a run like any other."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from detector.checkpoint import load_checkpoint, read_checkpoint
from tests.training.test_train import FAST as TRAIN_FAST
from training.config import load_config
from training.soup import SoupError, average_state_dicts, make_soup
from training.train import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = [*TRAIN_FAST, "max_steps=3", "val_max_images=10", "eval_test=false"]


@pytest.fixture(scope="module")
def two_runs(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    data = f"data={tiny_corpus / 'manifest.csv'}"
    with (tiny_corpus / "manifest.csv").open() as fh:
        fake = sorted({r["family"] for r in csv.DictReader(fh) if r["label"] == "fake"})[0]
    runs = []
    for seed in (0, 1):
        out = root / f"run{seed}"
        train(load_config(None, [data, f"out={out}", f"seed={seed}", f"exclude_families=[{fake}]", *FAST]))  # fmt: skip
        runs.append(out)
    return runs, fake, tiny_corpus / "manifest.csv"


def test_soup_is_the_calibrated_mean_of_its_runs(two_runs, tmp_path):
    runs, fake, _ = two_runs
    a, b = (read_checkpoint(r / "checkpoints" / "best.pt")["state_dict"] for r in runs)
    record = make_soup(runs, tmp_path / "soup")
    model, ckpt = load_checkpoint(tmp_path / "soup" / "checkpoints" / "best.pt")
    soup = model.state_dict()
    floats = [k for k, v in a.items() if v.is_floating_point()]
    assert floats and any(not torch.equal(a[k], b[k]) for k in floats)  # the runs differ
    for k in floats:
        torch.testing.assert_close(soup[k], (a[k] + b[k]) / 2, rtol=1e-6, atol=1e-7)
    steps = [k for k in a if k.endswith("num_batches_tracked")]
    assert steps and all(torch.equal(soup[k], a[k]) for k in steps)
    calib = ckpt["calibration"]
    assert calib["temperature"] > 0 and 0 < calib["threshold"] < 1
    assert "val split of" in calib["fitted_on"]
    assert ckpt["train_config"]["exclude_families"] == [fake]
    assert [i["weight"] for i in ckpt["soup"]] == [0.5, 0.5]
    assert 0 <= record["best_val_ap"] <= 1
    final = json.loads((tmp_path / "soup" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["final"] and final["calibration"] == calib


def test_weights_one_and_zero_give_the_first_run(two_runs, tmp_path):
    runs, _, _ = two_runs
    make_soup(runs, tmp_path / "soup", weights=[3, 0])
    first = read_checkpoint(runs[0] / "checkpoints" / "best.pt")["state_dict"]
    soup = read_checkpoint(tmp_path / "soup" / "checkpoints" / "best.pt")["state_dict"]
    for k, v in first.items():
        torch.testing.assert_close(soup[k], v, rtol=0, atol=0)


def test_held_out_families_are_those_no_run_saw(two_runs, tmp_path):
    runs, fake, data = two_runs
    first, path = tmp_path / "first.pt", tmp_path / "other.pt"
    ckpt = read_checkpoint(runs[0] / "checkpoints" / "best.pt")
    ckpt["train_config"]["exclude_sources"] = ["twins", "both"]
    torch.save(ckpt, first)
    other = read_checkpoint(runs[1] / "checkpoints" / "best.pt")
    other["train_config"]["exclude_families"] = []
    other["train_config"]["exclude_sources"] = ["both"]
    torch.save(other, path)
    make_soup([first, path], tmp_path / "soup", data=data)
    ckpt = read_checkpoint(tmp_path / "soup" / "checkpoints" / "best.pt")
    assert ckpt["train_config"]["exclude_families"] == []
    assert ckpt["train_config"]["exclude_sources"] == ["both"]
    assert [i["exclude_families"] for i in ckpt["soup"]] == [[fake], []]
    assert [i["exclude_sources"] for i in ckpt["soup"]] == [["twins", "both"], ["both"]]


def test_runs_that_cannot_be_averaged(two_runs, tmp_path):
    runs, _, _ = two_runs
    ckpt = read_checkpoint(runs[1] / "checkpoints" / "best.pt")
    other = dict(ckpt, model_spec={**ckpt["model_spec"], "name": "efficientnet_lite0"})
    torch.save(other, tmp_path / "arch.pt")
    with pytest.raises(SoupError, match="only one architecture"):
        make_soup([runs[0], tmp_path / "arch.pt"], tmp_path / "s1")
    other = dict(ckpt, preprocess={**ckpt["preprocess"], "max_tiles": 4})
    torch.save(other, tmp_path / "prep.pt")
    with pytest.raises(SoupError, match="preprocesses differently"):
        make_soup([runs[0], tmp_path / "prep.pt"], tmp_path / "s2")
    with pytest.raises(SoupError, match="at least two"):
        make_soup(runs[:1], tmp_path / "s3")
    with pytest.raises(SoupError, match="2 weights for 3 runs"):
        make_soup([*runs, runs[0]], tmp_path / "s4", weights=[1, 1])
    with pytest.raises(SoupError, match="not all zero"):
        make_soup(runs, tmp_path / "s5", weights=[0, 0])
    with pytest.raises(SoupError, match=r"no checkpoints/best\.pt"):
        make_soup([runs[0], tmp_path], tmp_path / "s6")
    with pytest.raises(SoupError, match="calibration data"):
        make_soup(runs, tmp_path / "s7", data=tmp_path / "missing.csv")
    torch.save(dict(ckpt, calibration=None), tmp_path / "training.pt")  # a run still training
    with pytest.raises(SoupError, match=r"training\.pt has not finished training"):
        make_soup([runs[0], tmp_path / "training.pt"], tmp_path / "s9")
    assert not any((tmp_path / f"s{i}").exists() for i in range(1, 10))  # nothing half-written
    make_soup(runs, tmp_path / "done")
    with pytest.raises(SoupError, match=r"already holds a training run \(checkpoints/\)"):
        make_soup(runs, tmp_path / "done")
    # an ONNX model folder too: score --model would keep reading its model.onnx
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "model.json").write_text("{}")
    with pytest.raises(SoupError, match="already holds an ONNX model"):
        make_soup(runs, onnx)
    with pytest.raises(SoupError, match="finite"):
        make_soup(runs, tmp_path / "s8", weights=[float("nan"), 1])


def test_shapes_must_match():
    a = {"w": torch.zeros(2, 3), "n": torch.tensor(5)}
    b = {"w": torch.ones(2, 3), "n": torch.tensor(7)}
    mean = average_state_dicts([a, b], [0.25, 0.75])
    assert np.allclose(mean["w"].numpy(), 0.75) and int(mean["n"]) == 5
    with pytest.raises(SoupError, match=r"w is \(3, 2\)"):
        average_state_dicts([a, {"w": torch.ones(3, 2), "n": torch.tensor(1)}], [0.5, 0.5])
    with pytest.raises(SoupError, match="other parameters"):
        average_state_dicts([a, {"w": torch.ones(2, 3)}], [0.5, 0.5])


def test_cli_soup_and_its_errors(two_runs, tmp_path):
    runs, _, _ = two_runs
    cli = [sys.executable, "-m", "detector.cli", "soup"]
    done = subprocess.run(
        [*cli, *map(str, runs), "--out", str(tmp_path / "soup"), "--weights", "1,1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "soup of 2 runs" in done.stdout and "validation AP" in done.stdout
    for extra, message in (
        (["--weights", "1,x"], "numbers separated by commas"),
        (["--weights", "1"], "1 weights for 2 runs"),
    ):
        bad = subprocess.run(
            [*cli, *map(str, runs), "--out", str(tmp_path / "bad"), *extra],
            capture_output=True,
            text=True,
        )
        assert bad.returncode == 2 and message in bad.stderr
        assert "Traceback" not in bad.stderr
    bad = subprocess.run(
        [*cli, str(runs[0]), str(tmp_path / "nothing"), "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no checkpoints/best.pt" in bad.stderr
    assert "Traceback" not in bad.stderr
