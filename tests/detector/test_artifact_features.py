"""The artifact method's features against textbook formulations written out in the test.

The features are computed in float32 and the references here in float64: tolerances are
float32's (a wrong formula is off by far more)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detector.methods.artifact import FEATURE_NAMES, artifact_features

pytestmark = pytest.mark.unit


def _image(seed: int = 3, h: int = 72, w: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _dct2(block: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II by its defining double sum."""
    n = block.shape[0]
    out = np.zeros((n, n))
    for u in range(n):
        for v in range(n):
            cu = math.sqrt(1 / n) if u == 0 else math.sqrt(2 / n)
            cv = math.sqrt(1 / n) if v == 0 else math.sqrt(2 / n)
            total = 0.0
            for x in range(n):
                for y in range(n):
                    total += (
                        block[x, y]
                        * math.cos((2 * x + 1) * u * math.pi / (2 * n))
                        * math.cos((2 * y + 1) * v * math.pi / (2 * n))
                    )
            out[u, v] = cu * cv * total
    return out


def test_dct_features_match_the_defining_sum():
    pixels = _image()
    grey = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    h, w = grey.shape[0] // 8 * 8, grey.shape[1] // 8 * 8
    blocks = [grey[y : y + 8, x : x + 8] - 128 for y in range(0, h, 8) for x in range(0, w, 8)]
    want = np.log1p(np.mean([np.abs(_dct2(b)) for b in blocks], axis=0)).ravel()[1:]
    got = artifact_features(pixels)
    first = FEATURE_NAMES.index("dct_01")
    np.testing.assert_allclose(got[first : first + 63], want, rtol=1e-5, atol=1e-6)


def test_residual_kurtosis_matches_the_moment_definition():
    pixels = _image(seed=4)
    img = pixels.astype(np.float64)
    npr = img - np.repeat(np.repeat(img[::2, ::2], 2, axis=0), 2, axis=1)
    x = npr.ravel() - npr.mean()
    m2, m4 = np.mean([v * v for v in x]), np.mean([v**4 for v in x])
    got = artifact_features(pixels)[FEATURE_NAMES.index("npr_kurtosis")]
    assert got == pytest.approx(math.log1p(m4 / (m2 * m2 + 1e-12)), rel=1e-5)


def _laplace_padded(plane: np.ndarray) -> np.ndarray:
    """The 5-point Laplacian on an edge-padded copy."""
    p = np.pad(plane, 1, mode="edge")
    return 4 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


def test_spectrum_features_match_the_full_fft():
    pixels = _image(seed=5, h=150, w=200)  # 2 x 3 blocks of 64 from the 150 x 200 image
    grey = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = _laplace_padded(grey)
    blocks = [lap[y : y + 64, x : x + 64] for y in (0, 64) for x in (0, 64, 128)]
    power = np.mean([np.abs(np.fft.fftshift(np.fft.fft2(b))) ** 2 for b in blocks], axis=0)
    logp = np.log1p(power)
    yy, xx = np.mgrid[0:64, 0:64] - 32
    ring = np.minimum((np.sqrt(yy**2 + xx**2) / 32 * 24).astype(int), 24)
    want = np.array([logp[ring == r].mean() for r in range(24)])
    want -= want.mean()
    got = artifact_features(pixels)[: FEATURE_NAMES.index("spectrum_r23") + 1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_channel_correlation_matches_corrcoef_and_constant_images_are_finite():
    pixels = _image(seed=6)
    img = pixels.astype(np.float64)
    res = np.stack([_laplace_padded(img[..., c]).ravel() for c in range(3)])
    want = np.corrcoef(res)[[0, 0, 1], [1, 2, 2]]
    got = artifact_features(pixels)
    names = ["corr_rg", "corr_rb", "corr_gb"]
    np.testing.assert_allclose([got[FEATURE_NAMES.index(n)] for n in names], want, rtol=1e-5)
    flat = artifact_features(np.full((40, 40, 3), 90, dtype=np.uint8))
    assert np.isfinite(flat).all()
    assert [flat[FEATURE_NAMES.index(n)] for n in names] == [0.0, 0.0, 0.0]  # identity


def test_a_constant_channel_leaves_the_other_pair_correlated():
    """Red equal to green and blue constant: corr_rg was 0 (every pair was zeroed when one
    channel was flat), and one blue pixel changed by 1 moved the logit by 0.76."""
    g = np.random.default_rng(1).integers(0, 256, (96, 96), dtype=np.uint8)
    a = np.dstack([g, g, np.zeros_like(g)])
    b = a.copy()
    b[50, 50, 2] = 1
    names = ["corr_rg", "corr_rb", "corr_gb"]
    got = artifact_features(a)
    assert [round(float(got[FEATURE_NAMES.index(n)]), 6) for n in names] == [1.0, 0.0, 0.0]
    near = artifact_features(b)
    assert near[FEATURE_NAMES.index("corr_rg")] == pytest.approx(1.0, abs=1e-6)


def test_flat_images_are_not_judged():
    """A flat image scored P 0.28 with moderate 'camera' evidence, and the same image with one
    pixel set 0.55: there is no texture to judge, so the method abstains."""
    import io

    from PIL import Image

    from detector.image import decode
    from detector.methods.artifact import ArtifactMethod

    def png(pixels: np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        return decode(buf.getvalue())

    method = ArtifactMethod()
    black = np.zeros((201, 201, 3), np.uint8)
    speck = black.copy()
    speck[100, 100] = 1
    for pixels in (black, np.full((96, 300, 3), 255, np.uint8), speck):
        result = method.score_one(png(pixels))
        assert result.probability is None
        assert result.evidence[0].code == "artifact.flat", result.evidence
    textured = method.score_one(png(_image(h=96, w=96)))
    assert textured.probability is not None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("weights", [0.1] * 10, "'weights' must be 95 finite numbers"),
        ("std", "zeros", "'std' must be positive"),
        ("mean", "nan", "'mean' must be 95 finite numbers"),
        ("bias", "1", "'bias' must be a finite number"),
    ],
)
def test_a_malformed_artifact_model_is_refused_when_loaded(tmp_path, field, value, message):
    """Cut or non-finite fields loaded, then every image abstained with a matmul error or a
    NaN probability."""
    import json

    from detector.bundled import ARTIFACT_MODEL
    from detector.methods.artifact import ArtifactMethod

    data = json.loads(ARTIFACT_MODEL.read_text())
    n = len(FEATURE_NAMES)
    data[field] = (
        {"zeros": [0.0] * n, "nan": [float("nan")] * n}.get(value, value)
        if isinstance(value, str)
        else value
    )
    path = tmp_path / "artifact.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ArtifactMethod(artifact_model=path)


def test_score_takes_an_artifact_model_of_ones_own(tmp_path):
    """A model from train-artifact could only be used from Python: `--artifact-model` runs the
    artifact method with it beside the default set; a file that is not one, or a model for a
    method --methods leaves out, is a one-line error and exit 2."""
    import json
    import subprocess
    import sys

    from PIL import Image

    from detector.bundled import ARTIFACT_MODEL

    image = tmp_path / "noise.png"
    Image.fromarray(_image(h=128, w=128)).save(image)
    mine = json.loads(ARTIFACT_MODEL.read_text())
    mine["bias"] = 50.0  # flags everything: the score shows which model ran
    (tmp_path / "mine.json").write_text(json.dumps(mine))

    def score(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "detector.cli", "score", "--json", str(image), *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    out = score("--artifact-model", str(tmp_path / "mine.json"))
    assert out.returncode == 0, out.stderr
    methods = json.loads(out.stdout)[0]["verdict"]["methods"]
    assert "model" in methods and methods["artifact"]["probability"] > 0.99
    for args, message in (
        (["--artifact-model", str(image)], "not JSON from `synthdetect train-artifact`"),
        (["--artifact-model", str(tmp_path / "no.json")], "--artifact-model: No such file"),
        (["--methods", "model", "--artifact-model", str(tmp_path / "mine.json")],
         "--artifact-model is for the artifact method, which --methods leaves out"),
    ):  # fmt: skip
        out = score(*args)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
