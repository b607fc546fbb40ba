"""An ONNX model folder is checked when it loads: a malformed ``model.json`` or a graph that
takes other tiles than its preprocessing makes is a ValueError naming the file, never a
TypeError later nor a model that fails on every image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.calibration import Calibration
from detector.engine import load_bundle
from detector.model_io import tensor_model
from detector.preprocess import PreprocessConfig
from tests.onnxfiles import tile_graph

pytestmark = pytest.mark.unit


def test_a_bare_graph_that_takes_the_default_tiles_loads(tmp_path):
    """No sidecar: the default preprocessing, uncalibrated; a file or its folder."""
    graph = tile_graph(tmp_path / "m" / "model.onnx", PreprocessConfig().input_size)
    for path in (graph, graph.parent):
        bundle = load_bundle(path)
        assert bundle.preprocess == PreprocessConfig() and bundle.calibration == Calibration()
        assert bundle.logits(np.ones((2, 3, 128, 128), np.float32)).tolist() == [1.0, 1.0]


def test_a_graph_that_takes_other_tiles_than_its_preprocessing_is_refused(tmp_path):
    folder = tmp_path / "m"
    tile_graph(folder / "model.onnx", 192)
    cases = [
        (None, "(the default: no model.json beside it) makes 3x128x128"),
        ({}, "(the default: model.json sets none) makes 3x128x128"),
        ({"preprocess": {"input_size": 96}}, "(model.json) makes 3x96x96"),
    ]
    for sidecar, made in cases:
        if sidecar is not None:
            (folder / "model.json").write_text(json.dumps(sidecar))
        with pytest.raises(ValueError) as err:
            load_bundle(folder)
        assert str(err.value) == f"{folder}: model.onnx takes 3x192x192 tiles but its " + (
            f"preprocessing {made}"
        )
    (folder / "model.json").write_text(json.dumps({"preprocess": {"input_size": 192}}))
    assert load_bundle(folder).preprocess.input_size == 192


def test_a_graph_with_dynamic_sides_takes_the_tiles_its_sidecar_names(tmp_path):
    folder = tmp_path / "m"
    tile_graph(folder / "model.onnx", None)
    (folder / "model.json").write_text(json.dumps({"preprocess": {"input_size": 96}}))
    bundle = load_bundle(folder)
    assert bundle.logits(np.zeros((1, 3, 96, 96), np.float32)).shape == (1,)
    # a sidecar declaring the sides dynamic, as KServe writes them (-1), says nothing against it
    inputs = [{"name": "images", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    (folder / "model.json").write_text(
        json.dumps({"preprocess": {"input_size": 96}, "inputs": inputs})
    )
    assert load_bundle(folder).preprocess.input_size == 96


@pytest.mark.parametrize(
    "text,message",
    [
        ("[]", "expected a JSON object, got list"),
        ('{"inputs": 5}', "inputs must be a list of tensors, got 5"),
        ('{"inputs": [{"name": "images", "datatype": "FP32", "shape": "x"}]}',
         "inputs[0].shape must be a list of integers, got 'x'"),
        ('{"outputs": [7]}', "outputs[0] must be an object, got 7"),
        ('{"preprocess": 5}', "preprocess must be an object, got 5"),
        ('{"preprocess": {"input_size": "abc"}}',
         "preprocess.input_size must be an integer, got 'abc'"),
        ('{"preprocess": {"input_size": 8}}', "preprocess.input_size must be >= 16, got 8"),
        ('{"preprocess": {"mean": [0.5, "x", 0.5]}}',
         "preprocess.mean must be a list of numbers, got [0.5, 'x', 0.5]"),
        ('{"preprocess": {"size": 3}}', "preprocess.size is an unknown field (known: version,"),
        ('{"calibration": "x"}', "calibration must be an object, got 'x'"),
        ('{"calibration": {"threshold": "x"}}', "calibration.threshold must be a number, got 'x'"),
        ('{"calibration": {"target_fpr": []}}',
         "calibration.target_fpr must be a number or null, got []"),
        ('{"calibration": {"fitted_on": 3}}', "calibration.fitted_on must be a string, got 3"),
        ('{"onnx_sha256": 5}', "onnx_sha256 must be a string, got 5"),
        ('{"model_spec": []}', "model_spec must be an object, got []"),
        ("{x", "not valid JSON (Expecting property name enclosed in double quotes"),
        (b"\xff\xfe", "not valid JSON ("),
    ],
)  # fmt: skip
def test_a_malformed_sidecar_is_a_value_error_naming_the_file_and_the_field(
    tmp_path, text, message
):
    folder = tmp_path / "m"
    tile_graph(folder / "model.onnx", 128)
    sidecar = folder / "model.json"
    sidecar.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as err:
        load_bundle(folder)
    assert str(err.value).startswith(f"{sidecar}: {message}"), str(err.value)


def test_the_tensor_description_checks_the_sidecar_it_is_given():
    """``export --triton-repo`` describes the graph from the sidecar it copies."""
    for sidecar, message in [
        ([], "model sidecar: expected a JSON object, got list"),
        ({"inputs": [{"name": "images"}]}, "model sidecar: inputs[0].datatype must be a string"),
        ({"preprocess": 5}, "model sidecar: preprocess must be an object, got 5"),
    ]:
        with pytest.raises(ValueError, match="^" + message.replace("[", r"\[")):
            tensor_model(sidecar)
    spec = {"name": "images", "datatype": "FP32", "shape": [-1, 3, 64, 64]}
    assert tensor_model({"inputs": [spec]}).inputs[0].shape == (-1, 3, 64, 64)
