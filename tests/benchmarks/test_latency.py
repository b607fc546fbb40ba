"""bench latency on a tiny exported model: every row names the network it timed, and a
--checkpoint of another network is said to be one (not passed off as a second engine)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.latency import latency_benchmark, latency_table, network

pytestmark = pytest.mark.unit


def test_network_names():
    assert network({"name": "efficientnet_lite0", "input_size": 192}) == "efficientnet_lite0 192 px"
    spec = {"name": "ensemble", "members": [{"name": "a", "input_size": 64},
                                            {"name": "b", "input_size": 64}]}  # fmt: skip
    assert network(spec) == "ensemble of a 64 px + b 64 px"
    assert network(None) == "unknown network"


def _run(model, checkpoint):
    return latency_benchmark({"fp32": model}, checkpoint=checkpoint, batches=(1,), seconds=0.05)


def test_same_network_rows(exported_model, untrained_checkpoint, capsys):
    result = _run(exported_model, untrained_checkpoint)
    rows = result["model_only"] + result["end_to_end"]
    assert {r["model"] for r in rows} == {"mobilenetv3_small 64 px"}
    assert {r["engine"].split(":")[0] for r in rows} >= {"onnxruntime"} and len(rows) == 4
    assert "note:" not in capsys.readouterr().err
    assert "model" not in latency_table(result).splitlines()[0]


def test_other_network_is_said(exported_model, untrained_checkpoint, tmp_path, capsys):
    ckpt = torch.load(untrained_checkpoint, weights_only=False)
    ckpt["model_spec"]["input_size"] = 96  # the same weights read 96 px tiles: another network
    ckpt["preprocess"]["input_size"] = 96
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    result = _run(exported_model, other)
    err = capsys.readouterr().err
    assert "--checkpoint is mobilenetv3_small 96 px" in err
    assert "ONNX rows time mobilenetv3_small 64 px" in err
    header, *_ = latency_table(result).splitlines()
    assert "model" in header
    assert "mobilenetv3_small 96 px" in latency_table(result)


def test_the_result_names_each_model_it_timed(exported_model, untrained_checkpoint):
    """A latency result named its networks in words only: two results of other weights (the
    same architecture) could not be told apart."""
    import hashlib
    import json

    result = _run(exported_model, untrained_checkpoint)
    onnx, torch_row = result["model"]
    sidecar = json.loads((exported_model / "model.json").read_text())
    assert onnx["sha256"] == sidecar["onnx_sha256"] and onnx["path"] == str(exported_model)
    assert torch_row["sha256"] == hashlib.sha256(untrained_checkpoint.read_bytes()).hexdigest()
    assert torch_row["precision"] == "fp32" and result["requested_device"] == "cpu"
