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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detector.checkpoint import load_checkpoint
from detector.engine import ONNX_FILE, SIDECAR, OnnxEngine, load_bundle
from detector.outputs import staging_folder
from detector.preprocess import PreprocessConfig, preprocess
from training.datasets import read_pixels

__all__ = [
    "TOLERANCE",
    "ExportError",
    "calibration_tiles",
    "check_convertible",
    "export_onnx",
    "new_sidecar",
    "parity_tiles",
    "reduce_precision",
    "write_onnx",
]

SIDECAR_FORMAT = "synthdetect-onnx/1"
TOLERANCE: dict[str, float | None] = {"fp32": 1e-3, "fp16": 5e-2, "int8": None}


class ExportError(RuntimeError):
    """The export failed or did not match torch."""


@dataclass
class ExportResult:
    onnx: Path
    sidecar: dict


def parity_tiles(images: list[Path], prep: PreprocessConfig, limit: int = 64) -> np.ndarray:
    """Real tiles for the parity check, through the one preprocessing function."""
    tiles = [preprocess(read_pixels(p), prep) for p in images]
    if not tiles:
        raise ExportError("no images for the parity check")
    return np.concatenate(tiles)[:limit]


def calibration_tiles(images: list[Path], prep: PreprocessConfig, per_image: int = 4) -> np.ndarray:
    """int8 calibration tiles: up to ``per_image`` of each image's grid, spread over it, so
    every image counts however large the first ones are."""
    out = []
    for p in images:
        grid = preprocess(read_pixels(p), prep)
        out.append(grid[np.unique(np.linspace(0, len(grid) - 1, per_image).round().astype(int))])
    if not out:
        raise ExportError("int8 needs calibration images (--calib-data)")
    return np.concatenate(out)


def write_onnx(model: torch.nn.Module, path: Path, input_size: int, opset: int = 18) -> None:
    """The graph every export writes: ``images`` (B, 3, S, S) -> ``logits`` (B, 1), B dynamic.

    torch's current exporter (``torch.export`` + ONNX Script, ``dynamo=True``); the TorchScript
    exporter is deprecated. Parity with torch is checked by the caller, tile by tile."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        (torch.zeros(2, 3, input_size, input_size),),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))


def new_sidecar(
    name: str,
    model_spec: dict,
    preprocess: dict,
    calibration: dict,
    onnx_path: Path,
    parity: dict,
    *,
    training: dict,
    precision: str = "fp32",
    opset: int = 18,
) -> dict:
    """The sidecar of a model folder whose ``onnx_path`` maps ``images`` (N, 3, S, S) to
    ``logits`` (N, 1), S the preprocessing's tile size."""
    size = int(preprocess["input_size"])
    return {
        "format": SIDECAR_FORMAT,
        "name": name,
        "model_spec": model_spec,
        "preprocess": preprocess,
        "calibration": calibration,
        "aggregation": "mean of tile logits, then sigmoid(logit / temperature)",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1]}],
        "precision": precision,
        "opset": opset,
        "onnx_sha256": _sha256(onnx_path),
        "parity": parity,
        "training": training,
    }


def check_out(out: Path) -> None:
    """``--out`` is new, empty, or an export to replace (once the new one passed its parity
    check): never a training run (its model.onnx would hide the checkpoints from ``score``
    and ``evaluate``, which read the ONNX file first) nor a folder of other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    if (out / "checkpoints").exists():
        raise ExportError(
            f"--out {out} holds a training run (checkpoints/): an ONNX model written there "
            "would hide it; export into another folder"
        )
    other = sorted(p.name for p in out.iterdir() if p.name not in (ONNX_FILE, SIDECAR)) if (
        out.is_dir()
    ) else []  # fmt: skip
    if other:
        raise ExportError(
            f"--out {out} holds other files ({', '.join(other[:3])}): export into a new or "
            "empty folder, or one that holds only an export to replace"
        )


def export_onnx(
    checkpoint: Path,
    out: Path,
    images: list[Path],
    *,
    precision: str = "fp32",
    calib_images: list[Path] | None = None,
    opset: int = 18,
    name: str | None = None,
) -> ExportResult:
    """ONNX + sidecar; raises ExportError when ONNX Runtime disagrees with torch.

    fp32 and fp16 are checked tile by tile against torch (fp16 keeps fp32 inputs and outputs).
    int8 is static QDQ quantisation calibrated on ``calib_images``; its logits legitimately
    move, so the sidecar records the change in logits and the caller reports the accuracy
    delta on a validation set (``synthdetect export --int8 --calib-data``).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ExportError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    checkpoint = Path(checkpoint)
    check_out(out)
    if checkpoint.is_dir():
        if not (checkpoint / "checkpoints" / "best.pt").is_file():
            raise ExportError(
                f"{checkpoint} is neither a run folder (no checkpoints/best.pt) nor an ONNX "
                f"export (no {SIDECAR}): give a run folder or a .pt checkpoint to export, or an "
                "ONNX export folder to convert with --fp16/--int8"
            )
        checkpoint = checkpoint / "checkpoints" / "best.pt"
    model, ckpt = load_checkpoint(checkpoint)
    prep = PreprocessConfig.from_dict(ckpt["preprocess"])
    if not ckpt.get("calibration"):
        raise ExportError(
            f"{checkpoint} is not calibrated (training did not finish); refusing to export"
        )
    # The inputs are checked before anything is written, and the graph is built beside ``out``
    # and moved in only once it passed: a failed export leaves no model.onnx that a loader would
    # trust, and an export already in ``out`` stays as it was.
    tiles = parity_tiles(images, prep)
    calib = calibration_tiles(calib_images or [], prep) if precision == "int8" else None
    out = Path(out)
    staging = staging_folder(out)
    try:
        staged = staging / ONNX_FILE
        write_onnx(model, staged, prep.input_size, opset)
        with torch.inference_mode():
            ref = model(torch.from_numpy(tiles)).reshape(-1).numpy()
        if precision == "fp16":
            _to_fp16(staged)
        elif calib is not None:
            _to_int8(staged, calib)
        diff, tolerance = _parity(precision, OnnxEngine(staged).run(tiles), ref, "torch")
        sidecar = _checkpoint_sidecar(
            ckpt, staged, len(tiles), diff, tolerance, precision, opset, name
        )
        (staging / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        out.mkdir(exist_ok=True)
        path = out / ONNX_FILE
        os.replace(staged, path)
        os.replace(staging / SIDECAR, out / SIDECAR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(path, sidecar)


def _checkpoint_sidecar(
    ckpt: dict,
    onnx_path: Path,
    tiles: int,
    diff: float,
    tolerance: float,
    precision: str,
    opset: int,
    name: str | None,
) -> dict:
    trained = ckpt.get("train_config") or {}
    return new_sidecar(
        name or ckpt["model_spec"]["name"], ckpt["model_spec"], ckpt["preprocess"],
        ckpt["calibration"], onnx_path,
        {"tiles": tiles, "max_abs_logit_diff": diff, "tolerance": tolerance},
        precision=precision, opset=opset,
        training={
            "commit": ckpt.get("commit"),
            "data": ckpt.get("data"),
            "epoch": ckpt.get("epoch"),
            "best_val_ap": ckpt.get("best_val_ap"),
            # what the run left out of training, so evaluate --generalisation scores it as held out
            "exclude_families": list(trained.get("exclude_families") or []),
            # real source groups it left out too (a held-out family's twins): provenance only
            "exclude_sources": list(trained.get("exclude_sources") or []),
            # the run's whole training config: the recipe behind the model's numbers
            "config": trained,
        },
    )  # fmt: skip


def check_convertible(exported: Path, out: Path, precision: str) -> dict:
    """The refusals of ``reduce_precision`` that need no model run (the caller can make them
    before slower work); -> the fp32 export's sidecar."""
    if precision not in ("fp16", "int8"):
        raise ExportError(f"an ONNX export converts to fp16 or int8, not {precision!r}")
    exported = Path(exported)
    if not ((exported / ONNX_FILE).is_file() and (exported / SIDECAR).is_file()):
        raise ExportError(f"{exported} is not an ONNX export (needs {ONNX_FILE} and {SIDECAR})")
    sidecar = json.loads((exported / SIDECAR).read_text())
    if sidecar.get("precision", "fp32") != "fp32":
        raise ExportError(
            f"{exported} is already {sidecar['precision']}; convert from the fp32 export"
        )
    if Path(out).resolve() == exported.resolve():
        raise ExportError("--out must be another folder than the fp32 export it converts")
    check_out(out)
    return sidecar


def reduce_precision(
    exported: Path,
    out: Path,
    images: list[Path],
    *,
    precision: str,
    calib_images: list[Path] | None = None,
    name: str | None = None,
) -> ExportResult:
    """An fp16 or int8 copy of an fp32 ONNX export, for a model whose training checkpoint is
    not at hand (the bundled default). The same conversions as ``export_onnx``; parity is
    checked against the fp32 ONNX instead of torch, and the sidecar keeps the calibration,
    provenance and training record of the model it came from."""
    exported = Path(exported)
    source = exported / ONNX_FILE
    sidecar = check_convertible(exported, out, precision)
    try:  # the loader's checks: the recorded sha256, the graph against its preprocessing
        bundle = load_bundle(exported)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    tiles = parity_tiles(images, bundle.preprocess)
    ref = bundle.engine.run(tiles)
    # Built beside ``out`` and moved in only when it passed: a failure leaves nothing behind.
    out = Path(out)
    staging = staging_folder(out)
    try:
        (staging / ONNX_FILE).write_bytes(source.read_bytes())
        if precision == "fp16":
            _to_fp16(staging / ONNX_FILE)
        else:
            _to_int8(staging / ONNX_FILE, calibration_tiles(calib_images or [], bundle.preprocess))
        got = OnnxEngine(staging / ONNX_FILE).run(tiles)
        diff, tolerance = _parity(precision, got, ref, "the fp32 ONNX")
        out.mkdir(exist_ok=True)
        path = out / ONNX_FILE
        os.replace(staging / ONNX_FILE, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sidecar |= {
        "precision": precision,
        "onnx_sha256": _sha256(path),
        "parity": {
            "tiles": len(tiles),
            "max_abs_logit_diff": diff,
            "tolerance": tolerance,
            "against": "fp32 ONNX",
        },
        "converted_from": {
            "onnx_sha256": sidecar.get("onnx_sha256") or _sha256(source),
            "precision": "fp32",
        },
    }
    sidecar["name"] = name or f"{sidecar.get('name', 'model')}-{precision}"
    sidecar.pop("int8_validation", None)
    sidecar.pop("weights_storage", None)  # the source's float16 storage: this copy is converted
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    return ExportResult(path, sidecar)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parity(
    precision: str, got: np.ndarray, ref: np.ndarray, against: str
) -> tuple[float, float | None]:
    """Largest |logit difference| and the precision's tolerance; raises past the tolerance
    (int8 has none: its logits legitimately move, and the caller reports the accuracy delta)."""
    if not np.isfinite(got).all():
        raise ExportError(f"the {precision} ONNX gives non-finite logits")
    diff = float(np.abs(got - ref).max())
    tolerance = TOLERANCE.get(precision)
    if tolerance is not None and diff > tolerance:
        raise ExportError(
            f"{precision} ONNX differs from {against} by {diff:.2e} > {tolerance:.0e}"
        )
    return diff, tolerance


def _to_fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    onnx.save(model, str(path))


def _to_int8(path: Path, calib_tiles: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{"images": calib_tiles[i : i + 16]} for i in range(0, len(calib_tiles), 16)]
            )

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_name("prepared.onnx")
    quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()
