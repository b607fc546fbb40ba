"""Where the files shipped inside the package live."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ARTIFACT_MODEL", "ASSETS", "DEFAULT_MODEL", "SAMPLES"]

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLES = ASSETS / "samples"
DEFAULT_MODEL = ASSETS / "models" / "default"  # model.onnx + model.json
ARTIFACT_MODEL = ASSETS / "models" / "artifact.json"  # the artifact method's linear model
