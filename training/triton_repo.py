"""A Triton Inference Server model repository for users who outgrow one machine.

    <repo>/<name>/config.pbtxt
    <repo>/<name>/1/model.onnx

The model is the tensor model the synthdetect server also serves (``synthdetect_tiles``):
FP32 tiles in, logits out, with Triton's dynamic batcher and the ONNX Runtime backend,
optionally with the TensorRT accelerator. Pre- and post-processing (tiling, calibration)
stay with the client: ``detector.preprocess`` and the sidecar's calibration. The
configuration is rendered from the same description the server's ``/v2/models/{m}/config``
answers with (``detector.model_io``). An export, so it lives beside ``export``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from detector.engine import ONNX_FILE, SIDECAR, read_sidecar
from detector.model_io import TENSOR_MODEL, tensor_model

__all__ = ["write_triton_repo"]


def write_triton_repo(
    model_dir: Path,
    repo: Path,
    *,
    name: str = TENSOR_MODEL,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 2000,
    gpu: bool = True,
    instances: int = 1,
    tensorrt: bool = False,
) -> Path:
    meta = read_sidecar(model_dir / SIDECAR)  # a ValueError naming the file and the field
    description = tensor_model(meta, name)
    target = repo / name
    (target / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_dir / ONNX_FILE, target / "1" / ONNX_FILE)
    shutil.copy2(model_dir / SIDECAR, target / SIDECAR)  # preprocessing + calibration for clients
    accel = ""
    if tensorrt:
        accel = """optimization { execution_accelerators { gpu_execution_accelerator: [ {
  name: "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "max_workspace_size_bytes" value: "1073741824" }
  parameters { key: "trt_engine_cache_enable" value: "1" }
} ] } }
"""
    config = description.pbtxt(max_batch_size, max_queue_delay_us, gpu, instances, accel)
    (target / "config.pbtxt").write_text(config)
    return target
