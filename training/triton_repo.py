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
import tempfile
from pathlib import Path

from detector.engine import ONNX_FILE, SIDECAR, check_onnx_sha256, read_sidecar
from detector.model_io import TENSOR_MODEL, tensor_model
from detector.outputs import staging_folder

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
    if not (model_dir / ONNX_FILE).is_file():
        raise ValueError(f"{model_dir} has a {SIDECAR} but no {ONNX_FILE}")
    description = tensor_model(meta, name)
    _check_graph(model_dir / ONNX_FILE, meta, description)
    target = repo / name
    if target.is_symlink():  # replacing it would replace the link, or what it points to
        raise ValueError(f"{target} is a symbolic link: choose another --name or --triton-repo")
    if target.exists() and not _ours(target):  # Triton serves the highest version folder
        raise ValueError(
            f"{target} holds other files or versions than an export's ({', '.join(_extra(target))}"
            "): remove them or choose another --name"
        )
    repo.mkdir(parents=True, exist_ok=True)
    # built beside the model folder and swapped in whole: a failure leaves no half-written model
    # for Triton to load, and an earlier export stays as it was until this one is complete
    staging = staging_folder(target)
    old: Path | None = None
    try:
        (staging / "1").mkdir()
        shutil.copy2(model_dir / ONNX_FILE, staging / "1" / ONNX_FILE)
        shutil.copy2(model_dir / SIDECAR, staging / SIDECAR)  # preprocessing + calibration
        _config(staging, description, max_batch_size, max_queue_delay_us, gpu, instances, tensorrt)
        # the earlier export is renamed aside, then removed: a crash between the removal and
        # the rename (as before) left the repository without the model
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=repo))
            target.rename(old / name)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and (old / name).exists() and not target.exists():
            (old / name).rename(target)  # the earlier export back in its place
            shutil.rmtree(old, ignore_errors=True)
        raise
    return target


_ORT_TYPES = {"FP32": "tensor(float)", "FP16": "tensor(float16)", "INT64": "tensor(int64)",
              "INT32": "tensor(int32)", "UINT8": "tensor(uint8)", "BOOL": "tensor(bool)"}  # fmt: skip


def _check_graph(onnx_path: Path, meta: dict, description) -> None:
    """The config Triton gets describes the graph it loads: the file is the one the sidecar
    recorded (its sha256, as the engine checks), and every input and output the sidecar
    names is in the graph with that type and those dimensions."""
    import onnxruntime as ort

    data = check_onnx_sha256(onnx_path, meta)
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own types for a file it cannot load
        raise ValueError(f"{onnx_path} is not a loadable ONNX graph ({exc})") from None
    for kind, specs, found in (
        ("input", description.inputs, session.get_inputs()),
        ("output", description.outputs, session.get_outputs()),
    ):
        graph = {t.name: t for t in found}
        for spec in specs:
            tensor = graph.get(spec.name)
            if tensor is None:
                raise ValueError(
                    f"{SIDECAR} names {kind} {spec.name!r}, which the graph does not have "
                    f"(it has {', '.join(sorted(graph))})"
                )
            dims = [d if isinstance(d, int) else -1 for d in tensor.shape[1:]]
            if (
                _ORT_TYPES.get(spec.datatype) != tensor.type
                or any(a != b and -1 not in (a, b) for a, b in zip(dims, spec.dims, strict=False))
                or len(dims) != len(spec.dims)
            ):
                raise ValueError(
                    f"{SIDECAR} says {kind} {spec.name!r} is {spec.datatype} {spec.dims}; the "
                    f"graph's is {tensor.type} {dims}"
                )


_LAYOUT = {"config.pbtxt", SIDECAR, "1", f"1/{ONNX_FILE}"}


def _extra(target: Path) -> list[str]:
    """What a model folder holds beyond an export's files."""
    found = {p.relative_to(target).as_posix() for p in target.rglob("*")}
    return sorted(found - _LAYOUT)


def _ours(target: Path) -> bool:
    return target.is_dir() and not _extra(target)


def _config(
    target: Path, description, max_batch_size, max_queue_delay_us, gpu, instances, tensorrt
) -> None:
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
