"""Export a checkpoint to ONNX with its sidecar JSON, and check the export against torch.

``model.onnx`` takes ``images`` (N, 3, S, S) float32 with a dynamic batch axis and returns
``logits`` (N, 1). ``model.json`` carries the PreprocessConfig, the calibration and threshold,
the input/output names and shapes, the ONNX file's sha256 and the parity result. The parity
check always runs: ONNX Runtime and torch score the same real tiles and the export fails when
their logits differ by more than the tolerance.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detector.checkpoint import load_checkpoint
from detector.engine import ONNX_FILE, SIDECAR, OnnxEngine
from detector.image import decode_file
from detector.preprocess import PreprocessConfig, preprocess

__all__ = ["ExportError", "export_onnx", "parity_tiles"]

SIDECAR_FORMAT = "synthdetect-onnx/1"
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


class ExportError(RuntimeError):
    """The export failed or did not match torch."""


@dataclass
class ExportResult:
    onnx: Path
    sidecar: dict


def parity_tiles(images: list[Path], prep: PreprocessConfig, limit: int = 64) -> np.ndarray:
    """Real tiles for the parity check, through the one preprocessing function."""
    tiles = [preprocess(decode_file(p).pixels, prep) for p in images]
    if not tiles:
        raise ExportError("no images for the parity check")
    return np.concatenate(tiles)[:limit]


def export_onnx(
    checkpoint: Path, out: Path, images: list[Path], *, opset: int = 17, name: str | None = None
) -> ExportResult:
    """fp32 ONNX + sidecar; raises ExportError when ONNX Runtime disagrees with torch."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / "checkpoints" / "best.pt"
    model, ckpt = load_checkpoint(checkpoint)
    prep = PreprocessConfig.from_dict(ckpt["preprocess"])
    if not ckpt.get("calibration"):
        raise ExportError(
            f"{checkpoint} is not calibrated (training did not finish); refusing to export"
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    size = prep.input_size
    dummy = torch.zeros(2, 3, size, size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    tiles = parity_tiles(images, prep)
    with torch.inference_mode():
        ref = model(torch.from_numpy(tiles)).reshape(-1).numpy()
    got = OnnxEngine(path).run(tiles)
    diff = float(np.abs(got - ref).max())
    if not np.isfinite(diff) or diff > TOLERANCE["fp32"]:
        raise ExportError(
            f"ONNX Runtime differs from torch by {diff:.2e} > {TOLERANCE['fp32']:.0e}"
        )
    sidecar = {
        "format": SIDECAR_FORMAT,
        "name": name or ckpt["model_spec"]["name"],
        "model_spec": ckpt["model_spec"],
        "preprocess": ckpt["preprocess"],
        "calibration": ckpt["calibration"],
        "aggregation": "mean of tile logits, then sigmoid(logit / temperature)",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1]}],
        "precision": "fp32",
        "opset": opset,
        "onnx_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "parity": {
            "tiles": len(tiles),
            "max_abs_logit_diff": diff,
            "tolerance": TOLERANCE["fp32"],
        },
        "training": {
            "commit": ckpt.get("commit"),
            "data": ckpt.get("data"),
            "epoch": ckpt.get("epoch"),
            "best_val_ap": ckpt.get("best_val_ap"),
        },
    }
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    return ExportResult(path, sidecar)
