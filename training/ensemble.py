"""Logit ensembles of exported models, as one ONNX graph.

Two models that see different things (a fine-tuned detector and a linear probe on frozen
features, see the model card) can be worth more averaged than either alone. Serving, the
Triton export and the pipeline all take one graph that maps tiles to one logit each, so the
ensemble is built as such a graph: every member's graph reads the same ``images`` input, and
``logits`` is the weighted mean of the members' temperature-scaled tile logits. The image's
logit (the mean over its tiles) is then the same weighted mean of the members' image logits.
The merged model is calibrated on the validation split as training calibrates, and written
as a model folder that ``evaluate``, ``serve`` and ``bench`` take like any other.

Its held-out families are those every member was trained without.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from detector.engine import SIDECAR, load_bundle
from detector.outputs import staging_folder
from detector.preprocess import PreprocessConfig
from training.datasets import load_samples
from training.evaluate import predict_logits
from training.export import TOLERANCE, parity_tiles
from training.metrics import average_precision
from training.soup import left_out_by_all, model_in, normalised_weights
from training.train import split_samples, validation_calibration

__all__ = ["EnsembleError", "fp16_storage", "make_ensemble", "merge_graphs"]


class EnsembleError(ValueError):
    """The models cannot be merged, or the merged model cannot be calibrated."""


def _only(seq, what: str, folder: Path):
    if len(seq) != 1:
        raise EnsembleError(f"{folder}: the graph needs one {what}, it has {len(seq)}")
    return seq[0]


def merge_graphs(models: list[onnx.ModelProto], weights: list[float]) -> onnx.ModelProto:
    """One graph: ``images`` -> sum_i weights[i] * (member i's ``logits``), shape (N, 1)."""
    opsets = {
        next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
        for m in models
    }
    if len(opsets) != 1:
        raise EnsembleError(f"the members use different ONNX opsets: {sorted(map(str, opsets))}")
    nodes, inits, infos, terms = [], [], [], []
    images = models[0].graph.input[0]
    for i, (model, w) in enumerate(zip(models, weights, strict=True)):
        m = compose.add_prefix(model, prefix=f"m{i}_")
        g = m.graph
        src = g.input[0].name
        for node in g.node:
            node.input[:] = ["images" if x == src else x for x in node.input]
        nodes.extend(g.node)
        inits.extend(g.initializer)
        infos.extend(g.value_info)
        scale = f"m{i}_ensemble_weight"
        inits.append(numpy_helper.from_array(np.array(w, np.float32), scale))
        term = f"m{i}_weighted"
        nodes.append(helper.make_node("Mul", [g.output[0].name, scale], [term]))
        terms.append(term)
    nodes.append(helper.make_node("Sum", terms, ["logits"]))
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    inp = helper.make_tensor_value_info(
        "images", images.type.tensor_type.elem_type,
        [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim],
    )  # fmt: skip
    graph = helper.make_graph(nodes, "ensemble", [inp], [out], inits, value_info=infos)
    opset_imports = {o.domain: o.version for m in models for o in m.opset_import}
    merged = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opset_imports.items()]
    )
    merged.ir_version = max(m.ir_version for m in models)
    onnx.checker.check_model(merged)
    return merged


def fp16_storage(model: onnx.ModelProto, min_size: int = 256) -> onnx.ModelProto:
    """Store every float32 initializer of at least ``min_size`` values as float16, cast back to
    float32 by a Cast node under its old name: the file about halves, and the network still
    computes in float32 (ONNX Runtime folds the casts once, when it loads the graph). The
    weights are rounded to float16 (relative error <= 2^-11); the parity check measures what
    that does to the logits."""
    g = model.graph
    kept, halves, casts = [], [], []
    limit = float(np.finfo(np.float16).max)
    for init in g.initializer:
        big = init.data_type == TensorProto.FLOAT and np.prod(init.dims, dtype=np.int64) >= min_size
        full = numpy_helper.to_array(init) if big else None
        if big and np.abs(full).max(initial=0.0) <= limit:  # beyond float16's range: kept
            half = full.astype(np.float16)
            halves.append(numpy_helper.from_array(half, f"{init.name}__fp16"))
            casts.append(
                helper.make_node("Cast", [f"{init.name}__fp16"], [init.name], to=TensorProto.FLOAT)
            )
        else:
            kept.append(init)
    del g.initializer[:]
    g.initializer.extend(kept + halves)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    return model


# Sidecar keys of the first member that do not describe the merged model.
_NOT_INHERITED = ("parity", "training", "model_spec", "weights_storage")


def make_ensemble(
    folders: list[Path],
    out: Path,
    data: Path,
    *,
    weights: list[float] | None = None,
    views: tuple[str, ...] = ("jpeg:90",),
    target_fpr: float = 0.01,
    name: str | None = None,
    store_fp16: bool = False,
) -> dict:
    """Merge the exported models in ``folders`` into one calibrated model folder ``out``.

    ``weights`` (default equal) weigh the members' temperature-scaled logits; they are
    normalised to sum to 1. ``store_fp16`` stores the weights as float16 (``fp16_storage``):
    a file about half the size, computed in float32, its parity tolerance fp16's.
    -> the merged model's sidecar (also written to ``out``)."""
    if len(folders) < 2:
        raise EnsembleError("an ensemble needs at least two models")
    weights = normalised_weights(weights, len(folders), "models", EnsembleError)
    if held := model_in(out):
        raise EnsembleError(f"{out} already holds {held}; choose a new folder")
    metas, graphs = [], []
    for folder in folders:
        sidecar = Path(folder) / SIDECAR
        if not sidecar.is_file() or not (Path(folder) / "model.onnx").is_file():
            raise EnsembleError(f"{folder}: not an exported model folder (model.onnx + {SIDECAR})")
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict) or not {"preprocess", "calibration"} <= set(meta):
            raise EnsembleError(f"{folder}: {SIDECAR} lacks preprocess or calibration")
        if meta.get("precision", "fp32") != "fp32":
            raise EnsembleError(f"{folder}: only fp32 models can be merged")
        try:
            model = onnx.load(str(Path(folder) / "model.onnx"))
        except Exception as exc:  # protobuf's DecodeError and friends
            raise EnsembleError(f"{folder}: cannot read model.onnx ({exc})") from None
        _only(model.graph.input, "input", folder)
        _only(model.graph.output, "output", folder)
        metas.append(meta)
        graphs.append(model)
    first = PreprocessConfig.from_dict(metas[0]["preprocess"])
    for folder, meta in zip(folders[1:], metas[1:], strict=True):
        if PreprocessConfig.from_dict(meta["preprocess"]) != first:
            raise EnsembleError(f"{folder} preprocesses differently from {folders[0]}")
    temps = [float(m["calibration"]["temperature"]) for m in metas]
    scales = [w / t for w, t in zip(weights, temps, strict=True)]
    merged = merge_graphs(graphs, scales)
    if store_fp16:
        merged = fp16_storage(merged)
    tolerance = TOLERANCE["fp16" if store_fp16 else "fp32"]
    # the merged graph keeps each member's initializers as they were stored
    fp16_members = sum(m.get("weights_storage") == "fp16" for m in metas)
    storage = (
        "fp16" if store_fp16 or fp16_members == len(metas) else "mixed" if fp16_members else None
    )

    trained = [m.get("training") or {} for m in metas]
    common = left_out_by_all(trained, "exclude_families")
    common_sources = left_out_by_all(trained, "exclude_sources")
    try:
        _, val, _ = split_samples(load_samples(data), common, common_sources)
    except ValueError as exc:
        raise EnsembleError(f"calibration data {data}: {exc}") from None

    # Built in a staging folder beside out and moved in once calibrated and checked: a merge
    # stopped midway (SIGTERM, a crash) left out with the graph and the members' calibration,
    # a model that loaded and scored with the wrong threshold.
    staging = staging_folder(out)
    path = staging / "model.onnx"
    onnx.save(merged, str(path))
    meta = {
        **{k: v for k, v in metas[0].items() if k not in _NOT_INHERITED},
        "name": name or out.name,
        "model_spec": {"name": "ensemble", "members": [m.get("model_spec") for m in metas]},
        "onnx_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        **({"weights_storage": storage} if storage else {}),
        "training": {
            "data": str(data),
            "exclude_families": common,
            "exclude_sources": common_sources,
            "ensemble": [
                {
                    "model": str(f),
                    "name": m.get("name"),
                    "temperature": t,
                    "weight": w,
                    "onnx_sha256": m.get("onnx_sha256"),
                    # how the member was made (its data, recipe, parity): the provenance
                    # stays with the model when the member's folder is gone
                    "training": m.get("training"),
                    "parity": m.get("parity"),
                }
                for f, m, t, w in zip(folders, metas, temps, weights, strict=True)
            ],
        },
    }
    try:
        # the members' calibration until the merged model's own is fitted below
        (staging / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
        bundle = load_bundle(staging)
        bundles = [load_bundle(f) for f in folders]

        def score(samples, transform):
            return predict_logits(bundle.logits, samples, first, transform=transform)

        calib, logits = validation_calibration(score, val, list(views), target_fpr, str(data))
        # parity: the merged graph against the members run one by one, on real tiles
        tiles = parity_tiles([s.path for s in val[:16]], first, limit=32)
        want = sum(s * np.asarray(b.logits(tiles)) for s, b in zip(scales, bundles, strict=True))
        diff = float(np.abs(np.asarray(bundle.logits(tiles)) - want).max())
        if diff > tolerance:
            raise EnsembleError(f"the merged graph differs from its members by {diff:.2e}")
        meta["calibration"] = calib.to_dict()
        meta["parity"] = {
            "tiles": len(tiles),
            "max_abs_logit_diff": diff,
            "tolerance": tolerance,
            "against": "the members' weighted temperature-scaled logits",
        }
        meta["training"]["val_ap"] = average_precision([s.label for s in val], logits)
        (staging / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
        if not out.exists() or not any(out.iterdir()):  # absent or empty: one rename
            with contextlib.suppress(FileNotFoundError):
                out.rmdir()
            staging.rename(out)
        else:  # a folder of other files (model_in refused a model): the sidecar first, so
            # that a stop between the two leaves a folder the loader refuses, not a lone graph
            os.replace(staging / SIDECAR, out / SIDECAR)
            os.replace(path, out / "model.onnx")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta
