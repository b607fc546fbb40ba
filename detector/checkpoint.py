"""Self-describing checkpoints: weights plus everything needed to rebuild and trust them.

A checkpoint holds ``model_spec`` (architecture by name and its arguments), ``preprocess``
(the PreprocessConfig), ``state_dict``, ``train_config``, ``calibration``, ``data`` (manifest
and its sha256), ``commit`` and training progress. ``load_checkpoint`` rebuilds the model from
that alone; no side file or global configuration is consulted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint",
    "write_checkpoint",
]

FORMAT = "synthdetect-checkpoint/1"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # unpickling a damaged or foreign file fails in many ways
        # Not torch's advice to load with weights_only=False (that would run whatever code a
        # foreign file carries): only what the unpickler found.
        reason = str(exc).strip() or type(exc).__name__
        if isinstance(exc, EOFError):
            reason = "the file is empty or cut short"
        if "WeightsUnpickler error:" in reason:
            found = reason.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
            reason = f"not a plain tensor file ({found.strip() or 'unsupported content'})"
        raise ValueError(f"{path} cannot be read as a torch checkpoint: {reason}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a synthdetect checkpoint (format {FORMAT})")
    return ckpt


def write_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Save ``ckpt`` at ``path`` atomically: a reader never sees half a file."""
    import torch

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def model_from_checkpoint(ckpt: dict[str, Any]) -> Any:
    """The model a checkpoint dict describes, with its weights, in eval mode."""
    from dataclasses import replace

    from detector.models import ModelSpec, build_model

    # The weights are in the checkpoint: do not load pretrained backbone weights again.
    spec = replace(ModelSpec.from_dict(ckpt["model_spec"]), pretrained=None)
    model = build_model(spec)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """-> (model in eval mode, the checkpoint dict)."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
