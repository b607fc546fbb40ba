"""Hand-built ONNX graphs for the tests: a model folder in milliseconds, without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tile_graph(path: Path, size: int | None) -> Path:
    """A graph with the tile model's interface, (N, 3, size, size) FP32 ``images`` ->
    (N, 1) ``logits`` (each tile's mean); ``size`` None: height and width left dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side: list[int | str] = [size, size] if size else ["height", "width"]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Reshape", ["mean", "shape"], ["logits"]),
        ],
        "tiles",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, *side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
