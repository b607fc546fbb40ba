"""What every result file records about where it was measured."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

from detector.buildinfo import git_commit

__all__ = ["environment", "git_commit", "model_record"]

SCHEMA = 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    versions = {}
    for pkg in (
        "synthdetect",
        "onnxruntime",
        "onnxruntime-gpu",
        "torch",
        "numpy",
        "pillow",
        "aiohttp",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    device = {
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            device["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return {
        "schema": SCHEMA,
        "commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
        "versions": versions,
    }


def model_record(path: str | Path) -> dict:
    """A model folder as result files record it: its path, name and graph sha256 (from its
    sidecar), what ``bench compare`` and the report compare; a path without a readable
    sidecar (a checkpoint) records the path alone."""
    try:
        meta = json.loads((Path(path) / "model.json").read_text())
    except (OSError, ValueError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    return {"path": str(path), "name": meta.get("name"), "onnx_sha256": meta.get("onnx_sha256")}
