"""Heatmaps: per-tile probabilities over the whole image, the overlay, `score --heatmap`."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detector.engine import load_bundle
from detector.heatmap import overlay_png, tile_heatmap
from detector.image import decode
from detector.methods import create_method
from training import metadata_writers as P

pytestmark = pytest.mark.integration


def test_tiles_cover_the_whole_image_and_agree_with_the_model_method(exported_model):
    bundle = load_bundle(exported_model)
    size = bundle.preprocess.input_size
    px = P.synthetic_scene(3, 5 * size // 2, 4 * size)  # 2.5 x 4 tiles: overlapping last row
    heat = tile_heatmap(bundle, px)
    assert len(heat.boxes) == 3 * 4 and heat.tile == size
    covered = np.zeros(px.shape[:2], bool)
    for x, y, w, h in heat.boxes:
        assert x >= 0 and y >= 0 and x + w <= px.shape[1] and y + h <= px.shape[0]
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    assert all(0 <= p <= 1 for p in heat.probabilities)
    # one tile exactly: the heatmap's tile is the model method's image score
    one = P.synthetic_scene(4, size, size)
    (p,) = tile_heatmap(bundle, one).probabilities
    method = create_method("model", model_path=exported_model)
    (res,) = method.score([decode(P.encode(one, "PNG"))])
    assert p == pytest.approx(res.probability, abs=1e-5)
    # smaller than a tile: one box, the image itself
    small = tile_heatmap(bundle, P.synthetic_scene(5, size // 2, size - 10))
    assert small.boxes == [(0, 0, size - 10, size // 2)]
    png = overlay_png(px, heat)
    img = Image.open(io.BytesIO(png))
    assert img.size == (px.shape[1], px.shape[0]) and img.mode == "RGB"
    d = heat.to_dict(png)
    assert len(d["tiles"]) == 12 and d["overlay_png_base64"]


def _score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "detector.cli", "score", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_score_heatmap_writes_overlays_and_reports_tiles(exported_model, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    a.write_bytes(P.encode(P.synthetic_scene(1, 200, 300), "PNG"))
    b.write_bytes(P.encode(P.synthetic_scene(2, 160, 160), "JPEG"))
    model = ["--model", str(exported_model)]
    out = _score("--json", "--heatmap", str(tmp_path / "one.png"), *model, str(a))
    assert out.returncode == 0, out.stderr
    (rec,) = json.loads(out.stdout)
    assert rec["heatmap"]["overlay"] == str(tmp_path / "one.png") and rec["heatmap"]["tiles"]
    assert Image.open(tmp_path / "one.png").size == (300, 200)
    out = _score("--json", "--heatmap", str(tmp_path / "maps"), *model, str(a), str(b))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "a.png.heatmap.png",
        "b.jpg.heatmap.png",
    ]
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(P.encode(P.synthetic_scene(3, 12, 12), "PNG"))
    out = _score("--heatmap", str(tmp_path / "t.png"), *model, str(tiny))  # table: says why
    assert out.returncode == 0 and not (tmp_path / "t.png").exists()
    assert f"{tiny}: no heatmap: too small for the model" in out.stderr
    for args, message in [
        (("--heatmap", str(tmp_path / "x.png"), *model, str(a), str(b)), "takes one image"),
        (("--heatmap", str(tmp_path / "y"), "--methods", "c2pa", str(a)), "needs the model"),
        (("--heatmap", str(a), *model, str(a)), "is an input image: it would be overwritten"),
    ]:
        out = _score(*args)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert a.read_bytes() == P.encode(P.synthetic_scene(1, 200, 300), "PNG")  # untouched


def test_score_heatmap_gives_files_of_the_same_name_their_own_overlays(exported_model, tmp_path):
    """d1/x.png and d2/x.png: two overlays, each record pointing at its own image's."""
    sizes = {"d1": (120, 200), "d2": (160, 90), "d3": (100, 100)}
    for folder, (h, w) in sizes.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(P.encode(P.synthetic_scene(1, h, w), "PNG"))
    files = [str(tmp_path / folder / "x.png") for folder in sizes]
    maps = tmp_path / "maps"
    out = _score("--json", "--heatmap", str(maps), "--model", str(exported_model), *files)
    assert out.returncode == 0, out.stderr
    overlays = [rec["heatmap"]["overlay"] for rec in json.loads(out.stdout)]
    assert overlays == [str(maps / n) for n in ("x.png.heatmap.png", "x.png.2.heatmap.png",
                                                "x.png.3.heatmap.png")]  # fmt: skip
    for overlay, (h, w) in zip(overlays, sizes.values(), strict=True):
        assert Image.open(overlay).size == (w, h)


def test_a_large_image_overlay_is_made_at_the_overlay_size():
    """The overlay was blended at full resolution in float32 before being scaled to 1024 px:
    an 80 MP image took 5 GB. The boxes are scaled with the image now; the colours land on
    the same places."""
    import tracemalloc

    from detector.heatmap import Heatmap

    h, w = 3000, 4000
    px = np.full((h, w, 3), 128, np.uint8)
    heat = Heatmap(192, [(0, 0, 2000, 1500), (2000, 1500, 2000, 1500)], [1.0, 0.0], 0.5, w, h)
    tracemalloc.start()
    png = overlay_png(px, heat)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 60e6  # the image's own float32 copy alone is 144 MB
    out = np.asarray(Image.open(io.BytesIO(png)))
    assert out.shape == (768, 1024, 3)
    red, blue, uncovered = out[100, 100], out[700, 900], out[100, 900]
    assert red[0] > red[2] and blue[2] > blue[0]  # generated tile red, camera tile blue
    assert (uncovered == int(128 * 0.6)).all()  # outside every tile: the image darkened
