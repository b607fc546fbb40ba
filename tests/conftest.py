from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training import metadata_writers as P

_KNOWN = {"unit", "integration", "slow", "gpu", "browser"}


def pytest_collection_modifyitems(config, items):
    """Every test declares unit or integration; gpu tests skip without a CUDA device."""
    cuda = None
    for item in items:
        marks = {m.name for m in item.iter_markers()} & _KNOWN
        if not marks & {"unit", "integration"}:
            raise pytest.UsageError(f"{item.nodeid}: mark the test unit or integration")
        if "gpu" in marks:
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none here"))


def _cuda_available() -> bool:
    """A CUDA device is present (nvidia-smi lists one): decided without importing torch, so
    that a unit run never loads it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def pytest_sessionfinish(session, exitstatus):
    """A unit run must not load torch: the detector's ONNX path works without it."""
    if session.config.option.markexpr == "unit" and "torch" in sys.modules and exitstatus == 0:
        session.exitstatus = 1
        print("\nFAILED: the unit run imported torch (unit tests must not need it)")


@pytest.fixture(scope="session")
def scene():
    """Procedural RGB content, 320x320 (fixture pixels only)."""
    return P.synthetic_scene(7, 320, 320)


@pytest.fixture(scope="session")
def signing_chain() -> P.SigningChain:
    return P.make_signing_chain()


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """A calibrated checkpoint of an untrained small model (for engine/export/method tests)."""
    import torch

    from detector.checkpoint import FORMAT
    from detector.models import ModelSpec, build_model
    from detector.preprocess import PreprocessConfig

    torch.manual_seed(0)
    spec = ModelSpec("mobilenetv3_small", input_size=64, spectrum_block=32, pretrained=None)
    model = build_model(spec).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(
        {
            "format": FORMAT,
            "model_spec": spec.to_dict(),
            "preprocess": PreprocessConfig(input_size=64, max_tiles=4).to_dict(),
            "state_dict": model.state_dict(),
            "calibration": {
                "temperature": 1.5,
                "threshold": 0.6,
                "target_fpr": 0.01,
                "fitted_on": "test",
            },
            "train_config": {},
            "step": 0,
            "epoch": 0,
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def exported_model(untrained_checkpoint, tmp_path_factory, scene):
    from training.export import export_onnx

    images = tmp_path_factory.mktemp("parity")
    for i in range(3):
        (images / f"{i}.png").write_bytes(P.encode(P.synthetic_scene(i, 96, 128), "PNG"))
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(untrained_checkpoint, out, sorted(images.iterdir()))
    return out


@pytest.fixture(scope="session")
def artifact_model(tmp_path_factory):
    """An artifact-method model fitted on procedural images (for contract tests only)."""
    import json

    import numpy as np

    from detector.methods.artifact import FEATURE_NAMES, artifact_features
    from training.linear import fit_logistic

    x = np.stack(
        [artifact_features(P.synthetic_scene(i, 96, 96, noise=3.0 * (i % 2))) for i in range(12)]
    )
    y = np.array([i % 2 for i in range(12)], dtype=float)
    mean, std = x.mean(0), x.std(0) + 1e-6
    w = fit_logistic((x - mean) / std, y, l2=1.0)
    path = tmp_path_factory.mktemp("artifact") / "artifact.json"
    path.write_text(json.dumps({
        "features": FEATURE_NAMES, "mean": mean.tolist(), "std": std.tolist(),
        "weights": w[:-1].tolist(), "bias": float(w[-1]),
        "calibration": {"temperature": 1.0, "threshold": 0.5},
    }))  # fmt: skip
    return path


@pytest.fixture(scope="session")
def method_options(artifact_model, tmp_path_factory):
    """Constructor options that make every registered method runnable in tests (the model
    method runs the bundled ONNX model: no torch needed)."""
    from detector.bundled import DEFAULT_MODEL

    return {
        "model": {"model_path": DEFAULT_MODEL},
        "artifact": {"artifact_model": artifact_model},
        # an empty known-image memory: the method runs and abstains (nothing was confirmed)
        "known_image": {"memory_db": tmp_path_factory.mktemp("memory") / "memory.sqlite"},
    }


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The tiny corpus, built once per test session (Debian photos cached in the user cache)."""
    if shutil.which("apt-get") is None:
        pytest.skip("building the corpus needs apt-get (Debian-based system) for its real photos")
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    from training.corpus import SIZES, WILD_DEFAULT, build_corpus  # imports torch: only here

    build_corpus(out, SIZES["tiny"], wild_dir=WILD_DEFAULT, log=lambda m: None)
    return out


@pytest.fixture
def method_registry():
    """The method registry, as it was before the test once the test ends: methods a test
    registers (``register_method``) never reach the registry-driven tests."""
    from detector.methods import METHODS

    METHODS.names()  # installed method plugins load before the snapshot, not inside it
    entries, errors = dict(METHODS._entries), dict(METHODS.plugin_errors)
    yield METHODS
    METHODS._entries.clear()
    METHODS._entries.update(entries)
    METHODS.plugin_errors.clear()
    METHODS.plugin_errors.update(errors)
