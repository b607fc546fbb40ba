"""Inference engines: ONNX Runtime (CPU / CUDA / TensorRT) and torch, behind one interface.

An engine maps a batch of preprocessed tiles (N, 3, S, S) float32 to N logits. A *model bundle*
pairs an engine with the ``PreprocessConfig`` and ``Calibration`` that travel with the weights:
an exported directory (``model.onnx`` + ``model.json``) or a training checkpoint (``.pt``).

ONNX Runtime silently falls back to the CPU when a GPU provider cannot start; the engine logs
one line naming the providers the session really uses (``session.get_providers()``), not the
ones that were asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from detector.calibration import Calibration
from detector.preprocess import PreprocessConfig

__all__ = [
    "SIDECAR",
    "Engine",
    "ModelBundle",
    "OnnxEngine",
    "TorchEngine",
    "load_bundle",
]

log = logging.getLogger(__name__)
SIDECAR = "model.json"
ONNX_FILE = "model.onnx"


class Engine(Protocol):
    name: str
    device: str

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N,) float32 logits."""
        ...


def _cpu_threads() -> int:
    """Physical cores are what ONNX Runtime's intra-op pool should use; os.cpu_count counts
    logical ones, an upper bound that is right on the 2-core machines this targets."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEngine:
    """``spinning=False`` stops ONNX Runtime's idle threads from busy-waiting: right in a server,
    where those cycles belong to decoding and the network; wrong for a lone benchmark loop."""

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or _cpu_threads()
        opts.inter_op_num_threads = 1
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if device == "cuda":
            wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "tensorrt":
            wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cpu":
            wanted = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be cpu, cuda or tensorrt, got {device!r}")
        available = set(ort.get_available_providers())
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        active = self.session.get_providers()
        self.device = (
            "cuda" if active[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        )
        self.name = f"onnxruntime:{active[0]}"
        level = logging.WARNING if active[0] != wanted[0] else logging.INFO
        log.log(level, "ONNX Runtime active providers: %s (asked for %s)", active, wanted[0])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, tiles: np.ndarray) -> np.ndarray:
        if len(tiles) == 0:
            return np.zeros(0, np.float32)
        out = self.session.run(
            [self.output_name], {self.input_name: np.ascontiguousarray(tiles, np.float32)}
        )
        return np.asarray(out[0], np.float32).reshape(len(tiles))


class TorchEngine:
    """Runs a SynthDetectNet in torch (for GPUs without onnxruntime-gpu, and for checkpoints)."""

    def __init__(self, model: Any, device: str = "cpu", half: bool = False) -> None:
        import torch

        self.torch = torch
        if device == "cuda" and not torch.cuda.is_available():
            log.warning("CUDA requested but not available; torch engine runs on the CPU")
            device = "cpu"
        self.device = device
        self.dtype = torch.float16 if half and device == "cuda" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.name = f"torch:{device}:{str(self.dtype).removeprefix('torch.')}"

    def run(self, tiles: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tiles, np.float32)).to(
                self.device, self.dtype
            )
            return self.model(x).float().reshape(-1).cpu().numpy()


@dataclass
class ModelBundle:
    engine: Engine
    preprocess: PreprocessConfig
    calibration: Calibration
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.meta.get("model_spec", {}).get("name") or "model")

    def logits(self, tiles: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return (
            np.concatenate(
                [
                    self.engine.run(tiles[i : i + batch_size])
                    for i in range(0, len(tiles), batch_size)
                ]
            )
            if len(tiles)
            else np.zeros(0, np.float32)
        )


def load_bundle(
    path: str | Path, device: str = "cpu", engine: str = "auto", spinning: bool = True
) -> ModelBundle:
    """An exported directory / ``.onnx`` file (ONNX Runtime) or a ``.pt`` checkpoint / run dir."""
    path = Path(path)
    if path.is_dir() and (path / ONNX_FILE).exists():
        path = path / ONNX_FILE
    elif path.is_dir() and (path / "checkpoints" / "best.pt").exists():
        path = path / "checkpoints" / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if path.suffix == ".onnx":
        meta = (
            json.loads((path.parent / SIDECAR).read_text())
            if (path.parent / SIDECAR).exists()
            else {}
        )
        expected = meta.get("onnx_sha256")
        if expected and expected != hashlib.sha256(path.read_bytes()).hexdigest():
            raise ValueError(f"{path} does not match the sha256 recorded in {SIDECAR}")
        if engine == "torch":
            raise ValueError(
                "an ONNX file runs on ONNX Runtime; pass a checkpoint for the torch engine"
            )
        return ModelBundle(
            OnnxEngine(path, device, spinning=spinning),
            PreprocessConfig.from_dict(meta.get("preprocess", {})),
            Calibration.from_dict(meta.get("calibration")),
            meta,
        )
    if path.suffix == ".pt":
        from detector.checkpoint import load_checkpoint

        model, ckpt = load_checkpoint(path)
        meta = {
            k: v
            for k, v in ckpt.items()
            if k not in ("state_dict", "optimizer", "scheduler", "rng")
        }
        return ModelBundle(
            TorchEngine(model, device),
            PreprocessConfig.from_dict(ckpt["preprocess"]),
            Calibration.from_dict(ckpt.get("calibration")),
            meta,
        )
    raise ValueError(f"{path}: expected a model directory, a .onnx file or a .pt checkpoint")
