"""Training throughput: optimizer steps per second of each architecture, precision and batch size.

Times the training step itself (``training.train.optimization_step``: forward, loss, backward,
gradient clipping, AdamW update) on random tiles already on the device, so the number is the
model's ceiling; what the data loader delivers on real images is in each run's ``train.log``
(``images/s`` per epoch). Backbones start from random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.env import environment
from benchmarks.registry import Benchmark, Results, fail, register_benchmark, result_file
from benchmarks.report import _f, _table
from detector.argtypes import batch_sizes, positive_float, positive_int

__all__ = ["train_throughput"]


def _one(name: str, amp: str, batch: int, input_size: int, seconds: float, device) -> dict:
    import torch

    from detector.models import ModelSpec, build_model
    from training.train import AMP_DTYPES, optimization_step

    dtype = AMP_DTYPES[amp]
    model = build_model(ModelSpec(name, input_size=input_size, pretrained=None)).to(device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    gen = torch.Generator(device="cpu").manual_seed(batch)
    x = torch.randn(batch, 3, input_size, input_size, generator=gen).to(device, memory_format=fmt)
    y = torch.randint(0, 2, (batch,), generator=gen).float().to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # warm-up: cuDNN autotuning, allocator growth
        optimization_step(model, opt, scaler, x, y, dtype, 1.0)
    sync()
    steps, start = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - start < seconds:
        for _ in range(5):  # the host runs ahead of the device; sync every few steps
            loss = optimization_step(model, opt, scaler, x, y, dtype, 1.0)
        sync()
        steps += 5
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"{name} {amp} batch {batch}: non-finite loss")
    row = {
        "model": name,
        "amp": amp,
        "batch": batch,
        "input_size": input_size,
        "steps": steps,
        "step_ms": elapsed / steps * 1000,
        "images_per_s": steps * batch / elapsed,
    }
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def train_throughput(
    models: tuple[str, ...],
    batches: tuple[int, ...],
    amps: tuple[str, ...] = ("off",),
    *,
    input_size: int = 128,
    seconds: float = 3.0,
    device: str = "auto",
    out: Path | None = None,
) -> dict:
    import torch

    from detector.models import MODELS
    from training.train import AMP_DTYPES

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; registered: {', '.join(MODELS)}")
    bad = [a for a in amps if a not in AMP_DTYPES]
    if bad:
        raise ValueError(f"amp must be among {tuple(AMP_DTYPES)}, got {bad}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    dev = torch.device(device)
    if dev.type == "cpu" and set(amps) - {"off"}:
        raise ValueError("mixed precision (bf16/fp16) is measured on CUDA only; use --amp off")
    rows = []
    for name in models:
        for amp in amps:
            for batch in batches:
                try:
                    rows.append(_one(name, amp, batch, input_size, seconds, dev))
                except torch.OutOfMemoryError:
                    rows.append(
                        {"model": name, "amp": amp, "batch": batch, "error": "out of memory"}
                    )
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    result = {
        **environment(),
        "benchmark": "train-throughput",
        "what": "optimizer steps on random tiles already on the device (model ceiling)",
        "rows": rows,
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --- command line and report section (the benchmark registry) ------------------------------


def train_throughput_table(result: dict) -> str:
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["model"], r["amp"], str(r["batch"]), r["error"], "-", "-", "-"])
        else:
            rows.append([r["model"], r["amp"], str(r["batch"]), "", _f(r["step_ms"], 1),
                         _f(r["images_per_s"], 0), _f(r.get("peak_memory_mib"), 0)])  # fmt: skip
    header = ["model", "amp", "batch", "error", "step ms", "images/s", "peak MiB"]
    return "\n".join(_table(header, rows, 4))


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="efficientnet_lite0", help="comma-separated model names")
    p.add_argument("--batches", type=batch_sizes, default=[32, 128])
    p.add_argument("--amp", default="off", help="comma-separated: off, bf16, fp16 (CUDA)")
    p.add_argument("--input-size", type=positive_int, default=128)
    p.add_argument("--seconds", type=positive_float, default=3.0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=result_file)


def _run(args: argparse.Namespace) -> int:

    try:
        result = train_throughput(
            tuple(m.strip() for m in args.models.split(",") if m.strip()),
            tuple(args.batches),
            tuple(a.strip() for a in args.amp.split(",") if a.strip()),
            input_size=args.input_size,
            seconds=args.seconds,
            device=args.device,
            out=args.out,
        )
    except (ValueError, RuntimeError) as exc:
        return fail(exc)

    print(train_throughput_table(result))
    return 0


def _section(files: Results) -> list[str]:
    result = files[0][1]
    return ["## Training throughput (model ceiling)", "", result["what"] + ".", "",
            train_throughput_table(result), ""]  # fmt: skip


register_benchmark(
    Benchmark("train-throughput", "training steps/s per model, precision and batch size", _arguments, _run,
              kind="train-throughput", report_order=30, section=_section)
)  # fmt: skip
