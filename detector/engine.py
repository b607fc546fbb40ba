"""Inference engines: ONNX Runtime (CPU / CUDA / TensorRT) and torch, behind one interface.

An engine maps a batch of preprocessed tiles (N, 3, S, S) float32 to N logits. A *model bundle*
pairs an engine with the ``PreprocessConfig`` and ``Calibration`` that travel with the weights:
an exported directory (``model.onnx`` + ``model.json``) or a training checkpoint (``.pt``).

ONNX Runtime silently falls back to the CPU when a GPU provider cannot start; the engine logs
one line naming the providers the session really uses (``session.get_providers()``), not the
ones that were asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from detector.calibration import Calibration
from detector.preprocess import PreprocessConfig, is_int

__all__ = [
    "GPU_PROVIDERS",
    "SIDECAR",
    "TORCH_PRECISIONS",
    "Engine",
    "ModelBundle",
    "OnnxEngine",
    "TorchEngine",
    "check_onnx_sha256",
    "check_sidecar",
    "cpu_threads",
    "load_bundle",
    "ort_has_gpu",
    "read_sidecar",
]

log = logging.getLogger(__name__)
SIDECAR = "model.json"
ONNX_FILE = "model.onnx"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # ONNX Runtime's


def ort_has_gpu() -> bool:
    """Whether this ONNX Runtime build can run on a GPU at all (onnxruntime-gpu)."""
    import onnxruntime as ort

    return bool(set(GPU_PROVIDERS) & set(ort.get_available_providers()))


# How to get ONNX Runtime's GPU build: the CPU wheel (a core dependency) and onnxruntime-gpu
# install into one ``onnxruntime`` folder, so the GPU build must replace it, never join it.
GPU_RUNTIME_HOWTO = (
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
    "(the synthdetect[gpu] extra names it; the CPU wheel must go, the two share one folder)"
)


def ort_wheels() -> list[str]:
    """The ONNX Runtime distributions installed (two of them shadow each other's files)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return found


class Engine(Protocol):
    name: str
    device: str

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N,) float32 logits."""
        ...

    def warmup(self, input_size: int, max_batch: int) -> None:
        """Pay one-time costs (kernel selection, graph capture) before the first request."""
        ...


def cpu_threads() -> int:
    """Physical cores are what ONNX Runtime's intra-op pool should use; os.cpu_count counts
    logical ones, an upper bound that is right on the 2-core machines this targets."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _bucket(n: int) -> int:
    """The power of two a batch of ``n`` tiles is padded up to on a GPU."""
    return 1 << (n - 1).bit_length()


def _bucket_batches(max_batch: int) -> list[int]:
    """Batch sizes that reach every bucket up to ``max_batch``: 1, 2, 4, ..., max_batch."""
    sizes = [1]
    while sizes[-1] < max_batch:
        sizes.append(min(sizes[-1] * 2, max_batch))
    return sizes


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
        on_gpu = providers[0] in GPU_PROVIDERS
        if device != "cpu" and not on_gpu:  # asked for a GPU: running on the CPU is no answer
            wheels = ort_wheels()
            both = f" ({' and '.join(wheels)} are both installed)" if len(wheels) > 1 else ""
            raise ValueError(
                f"--device {device}: this ONNX Runtime has no GPU provider (it has "
                f"{', '.join(sorted(available))}){both}; on a machine with CUDA: "
                f"{GPU_RUNTIME_HOWTO}; or use --device cpu"
            )
        if on_gpu and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* pip packages (or torch's)
            # only when asked; without it they must be on LD_LIBRARY_PATH.
            try:
                ort.preload_dlls()
            except Exception as exc:  # missing libraries: the session falls back and says so
                log.warning("onnxruntime.preload_dlls failed: %s", exc)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # On a GPU the GPU does the work: one idle-waiting CPU thread per session rather than a
        # spinning pool of every core in each bucket's session (measured on an H100: server
        # tiles/s at 64 clients 2.3k -> 3.0k).
        opts.intra_op_num_threads = 1 if on_gpu else threads or cpu_threads()
        opts.inter_op_num_threads = 1
        if on_gpu or not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # cuDNN's exhaustive algorithm search (the CUDA provider's default) costs ~1 s per new
        # shape on an H100; the heuristic choice costs ~0.2 s and ran within 5% as fast.
        options = {"cudnn_conv_algo_search": "HEURISTIC"}
        providers = [(p, options) if p == "CUDAExecutionProvider" else p for p in providers]

        def session() -> Any:
            try:
                return ort.InferenceSession(str(self.path), opts, providers=providers)
            except Exception as exc:  # ONNX Runtime's errors derive from Exception only
                raise ValueError(f"ONNX Runtime cannot load {self.path}: {exc}") from None

        self._new_session = session
        self.session = session()
        self._lock = threading.Lock()
        active = self.session.get_providers()
        self.device = "cuda" if active[0] in GPU_PROVIDERS else "cpu"
        if device != "cpu" and self.device == "cpu":  # the provider is there but did not start
            raise ValueError(
                f"--device {device}: ONNX Runtime's GPU provider did not start (CUDA or cuDNN "
                "libraries missing?); see the log above, or use --device cpu"
            )
        self.name = f"onnxruntime:{active[0]}"
        level = logging.WARNING if active[0] != wanted[0] else logging.INFO
        log.log(level, "ONNX Runtime active providers: %s (asked for %s)", active, wanted[0])
        self.input_name = self.session.get_inputs()[0].name
        # ints where the graph is static, names or None where it is dynamic
        self.input_shape = list(self.session.get_inputs()[0].shape)
        self.output_name = self.session.get_outputs()[0].name
        # On CUDA, one session per power-of-two batch bucket: the CUDA provider re-plans every
        # convolution whenever a session's input shape differs from its previous call (~0.2-1 s
        # on an H100), and a dynamic batcher changes it on nearly every call (server throughput
        # fell from 300 to 3 tiles/s). A session that only ever sees one shape plans once.
        self._buckets: dict[int, Any] = {}

    def _session_for(self, bucket: int) -> Any:
        with self._lock:
            if bucket not in self._buckets:
                self._buckets[bucket] = self.session if not self._buckets else self._new_session()
            return self._buckets[bucket]

    def warmup(self, input_size: int, max_batch: int) -> None:
        sizes = _bucket_batches(max_batch) if self.device == "cuda" else sorted({1, max_batch})
        for n in sizes:
            self.run(np.zeros((n, 3, input_size, input_size), np.float32))

    def run(self, tiles: np.ndarray) -> np.ndarray:
        n = len(tiles)
        if n == 0:
            return np.zeros(0, np.float32)
        x = np.ascontiguousarray(tiles, np.float32)
        session = self.session
        if self.device == "cuda":
            bucket = _bucket(n)
            if bucket != n:
                x = np.concatenate([x, np.zeros((bucket - n, *x.shape[1:]), np.float32)])
            session = self._session_for(bucket)
        out = session.run([self.output_name], {self.input_name: x})
        return np.asarray(out[0], np.float32).reshape(len(x))[:n]


TORCH_PRECISIONS = ("fp32", "fp16", "bf16")


def torch_engine_name(device: str, precision: str, cuda_graphs: bool, tf32: bool) -> str:
    """The engine's name in results: ``+tf32`` where "fp32" convolutions run in TF32 on the
    GPU (torch's default for cuDNN: about 10 mantissa bits, not float32's 23), so that a row
    is not read as float32 arithmetic."""
    return (
        f"torch:{device}:{precision}"
        + ("+tf32" if tf32 else "")
        + ("+graphs" if cuda_graphs else "")
    )


class TorchEngine:
    """Runs a SynthDetectNet in torch (for GPUs without onnxruntime-gpu, and for checkpoints).

    ``precision`` fp16/bf16 runs the network under autocast (weights stay fp32; reductions and
    the loss-free head stay in fp32 where autocast keeps them). On CUDA the model and its
    input are channels_last, and ``cuda_graphs`` captures one CUDA graph per batch bucket
    (powers of two; a batch is zero-padded up to its bucket) on first use and replays it after:
    a small network at small batches is bound by kernel launches, which a replay removes.
    """

    def __init__(
        self,
        model: Any,
        device: str = "cpu",
        precision: str = "fp32",
        cuda_graphs: bool = False,
    ) -> None:
        import torch

        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"precision must be one of {TORCH_PRECISIONS}, got {precision!r}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"the torch engine runs on cpu or cuda, got {device!r}")
        self.torch = torch
        if device == "cuda" and not torch.cuda.is_available():  # as the ONNX engine refuses it
            raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
        if cuda_graphs and device != "cuda":
            log.warning("CUDA graphs need a CUDA device; running without them")
            cuda_graphs = False
        self.device = device
        self.precision = precision
        self.amp = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.cuda_graphs = cuda_graphs
        self.memory_format = torch.channels_last if device == "cuda" else torch.contiguous_format
        self.model = model.to(device=device).to(memory_format=self.memory_format).eval()
        tf32 = device == "cuda" and precision == "fp32" and torch.backends.cudnn.allow_tf32
        self.name = torch_engine_name(device, precision, cuda_graphs, tf32)
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()

    def _forward(self, x):
        with self.torch.autocast(
            self.device,
            dtype=self.amp or self.torch.float32,
            enabled=self.amp is not None,
            cache_enabled=not self.cuda_graphs,  # cached casts must not outlive a capture
        ):
            return self.model(x).float().reshape(-1)

    def _graph(self, shape: tuple[int, ...]):
        """(graph, static input, static output) for this padded shape, captured once."""
        torch = self.torch
        if shape not in self._graphs:
            static_in = torch.zeros(shape, device="cuda").contiguous(
                memory_format=self.memory_format
            )
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN autotuning)
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[shape] = (graph, static_in, static_out)
        return self._graphs[shape]

    def warmup(self, input_size: int, max_batch: int) -> None:
        """Run (and with CUDA graphs, capture) every batch bucket up to ``max_batch``: a
        capture costs far more than a replay, and a server must not pay it mid-traffic."""
        for n in _bucket_batches(max_batch):
            self.run(np.zeros((n, 3, input_size, input_size), np.float32))

    def run(self, tiles: np.ndarray) -> np.ndarray:
        torch = self.torch
        n = len(tiles)
        if n == 0:
            return np.zeros(0, np.float32)
        x = torch.from_numpy(np.ascontiguousarray(tiles, np.float32))
        with torch.inference_mode():
            if not self.cuda_graphs:
                x = x.to(self.device).contiguous(memory_format=self.memory_format)
                return self._forward(x).cpu().numpy()
            bucket = _bucket(n)
            with self._lock:  # one capture per shape; replays share the static buffers
                graph, static_in, static_out = self._graph((bucket, *x.shape[1:]))
                static_in[:n].copy_(x, non_blocking=False)
                graph.replay()
                return static_out[:n].cpu().numpy()


@dataclass
class ModelBundle:
    engine: Engine
    preprocess: PreprocessConfig
    calibration: Calibration
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.meta.get("model_spec", {}).get("name") or "model")

    def with_max_tiles(self, max_tiles: int | None) -> ModelBundle:
        """This model cutting at most ``max_tiles`` tiles per image (None: its own count); the
        engine is shared, not reloaded."""
        if max_tiles is None or max_tiles == self.preprocess.max_tiles:
            return self
        return replace(self, preprocess=replace(self.preprocess, max_tiles=max_tiles))

    def tensor_io(self) -> dict[str, list[dict[str, Any]]]:
        """The tensor model's inputs and outputs (``detector.model_io``): from the ONNX sidecar,
        or, for a checkpoint, what its export would write."""
        size = self.preprocess.input_size
        return {
            "inputs": self.meta.get("inputs")
            or [{"name": "images", "datatype": "FP32", "shape": [-1, 3, size, size]}],
            "outputs": self.meta.get("outputs")
            or [{"name": "logits", "datatype": "FP32", "shape": [-1, 1]}],
        }

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


def check_sidecar(meta: Any) -> dict[str, Any]:
    """``meta`` if it is a well-formed sidecar; else a ValueError naming the field. Every
    field a loader or the model description reads is checked here, so a hand-edited or foreign
    ``model.json`` is refused at load time instead of failing later in some attribute access."""
    if not isinstance(meta, dict):
        raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
    for section, parse in (
        ("preprocess", PreprocessConfig.from_dict),
        ("calibration", Calibration.from_dict),
    ):
        value = meta.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{section} must be an object, got {value!r}")
        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"{section}.{exc}") from None
    for key in ("inputs", "outputs"):
        specs = meta.get(key)
        if specs is not None and not isinstance(specs, list):
            raise ValueError(f"{key} must be a list of tensors, got {specs!r}")
        for i, spec in enumerate(specs or []):
            where = f"{key}[{i}]"
            if not isinstance(spec, dict):
                raise ValueError(f"{where} must be an object, got {spec!r}")
            for field_ in ("name", "datatype"):
                if not isinstance(spec.get(field_), str):
                    raise ValueError(f"{where}.{field_} must be a string, got {spec.get(field_)!r}")
            shape = spec.get("shape")
            if not isinstance(shape, list) or not all(is_int(d) for d in shape):
                raise ValueError(f"{where}.shape must be a list of integers, got {shape!r}")
    for key in ("name", "onnx_sha256"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise ValueError(f"{key} must be a string, got {meta[key]!r}")
    if meta.get("model_spec") is not None and not isinstance(meta["model_spec"], dict):
        raise ValueError(f"model_spec must be an object, got {meta['model_spec']!r}")
    return meta


def check_onnx_sha256(path: Path, meta: dict) -> bytes:
    """The graph file's bytes, refused (ValueError) when they are not those its sidecar
    recorded (``onnx_sha256``; a sidecar without one records nothing to check)."""
    data = path.read_bytes()
    expected = meta.get("onnx_sha256")
    if expected and expected != hashlib.sha256(data).hexdigest():
        raise ValueError(f"{path} does not match the sha256 recorded in {SIDECAR}")
    return data


def read_sidecar(path: Path) -> dict[str, Any]:
    """A ``model.json``, checked (``check_sidecar``); each problem a ValueError naming it."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # invalid JSON or UTF-8
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    try:
        return check_sidecar(meta)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_bundle(
    path: str | Path,
    device: str = "cpu",
    engine: str = "auto",
    spinning: bool = True,
    precision: str = "fp32",
    cuda_graphs: bool = False,
    threads: int | None = None,
    max_tiles: int | None = None,
) -> ModelBundle:
    """An exported directory / ``.onnx`` file (ONNX Runtime) or a ``.pt`` checkpoint / run dir.

    ``precision`` and ``cuda_graphs`` are torch-engine settings; an ONNX file's precision is
    the one it was exported in (``synthdetect export --fp16`` / ``--int8``). ``threads``: ONNX Runtime's
    intra-op threads (default: every core this process may use). ``max_tiles``: at most this
    many tiles per image instead of the model's own (fewer: faster, and the image less covered;
    the model card measures both).
    """
    bundle = _load_bundle(Path(path), device, engine, spinning, precision, cuda_graphs, threads)
    return bundle.with_max_tiles(max_tiles)  # PreprocessConfig refuses a count below 1


def _load_bundle(
    path: Path,
    device: str,
    engine: str,
    spinning: bool,
    precision: str,
    cuda_graphs: bool,
    threads: int | None,
) -> ModelBundle:
    if path.is_dir() and (path / ONNX_FILE).exists():
        path = path / ONNX_FILE
    elif path.is_dir() and (path / "checkpoints" / "best.pt").exists():
        path = path / "checkpoints" / "best.pt"
    elif path.is_dir() and (path / SIDECAR).exists():
        raise FileNotFoundError(f"{path} has a {SIDECAR} but no {ONNX_FILE}")
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if path.suffix == ".onnx":
        sidecar = path.parent / SIDECAR
        meta = read_sidecar(sidecar) if sidecar.exists() else {}
        check_onnx_sha256(path, meta)
        if engine == "torch" or precision != "fp32" or cuda_graphs:
            raise ValueError(
                "an ONNX file runs on ONNX Runtime in the precision it was exported in; pass a"
                " checkpoint (.pt) for the torch engine's precision and CUDA graphs"
            )
        prep = PreprocessConfig.from_dict(meta.get("preprocess") or {})
        for spec in meta.get("inputs") or []:  # the tile size lives in the preprocessing
            side = list(spec.get("shape", []))[2:]
            if side and side != [prep.input_size] * 2 and all(d >= 0 for d in side):  # -1: any
                raise ValueError(
                    f"{sidecar}: the graph takes {side[0]}x{side[-1]} tiles but "
                    f"its preprocessing makes {prep.input_size}x{prep.input_size}"
                )
        onnx = OnnxEngine(path, device, threads=threads, spinning=spinning)
        # The sidecar's shape is only what it says: without a sidecar, or with a foreign one,
        # every image would fail in the engine. The graph itself must take these tiles.
        got, want = onnx.input_shape[1:], [3, prep.input_size, prep.input_size]
        if len(got) != 3 or any(
            isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)
        ):
            if "preprocess" in meta:
                source = SIDECAR
            elif sidecar.exists():
                source = f"the default: {SIDECAR} sets none"
            else:
                source = f"the default: no {SIDECAR} beside it"
            shape = "x".join(str(g) if isinstance(g, int) else "?" for g in got)
            raise ValueError(
                f"{path.parent}: {path.name} takes {shape} tiles but its preprocessing "
                f"({source}) makes 3x{prep.input_size}x{prep.input_size}"
            )
        if not sidecar.exists():
            log.warning(
                "no %s beside %s: default preprocessing, uncalibrated threshold", SIDECAR, path
            )
        return ModelBundle(onnx, prep, Calibration.from_dict(meta.get("calibration")), meta)
    if path.suffix == ".pt":
        from detector.checkpoint import load_checkpoint

        model, ckpt = load_checkpoint(path)
        if not ckpt.get("calibration"):
            log.warning(
                "%s is not calibrated (training did not finish): threshold 0.5, probabilities "
                "uncalibrated",
                path,
            )
        meta = {
            k: v
            for k, v in ckpt.items()
            if k not in ("state_dict", "optimizer", "scheduler", "rng")
        }
        return ModelBundle(
            TorchEngine(model, device, precision, cuda_graphs),
            PreprocessConfig.from_dict(ckpt["preprocess"]),
            Calibration.from_dict(ckpt.get("calibration")),
            meta,
        )
    raise ValueError(f"{path}: expected a model directory, a .onnx file or a .pt checkpoint")
