"""The library's front door, ``Detector``, used as an integrator would from Python."""

from __future__ import annotations

import numpy as np
import pytest

from detector import Detector, FusionConfig, decode
from detector.memory import KnownImageError, MemoryStore, hash_pixels
from training import metadata_writers as P

pytestmark = pytest.mark.unit


def _image(seed: int = 1, **meta) -> bytes:
    return P.encode(P.synthetic_scene(seed, 96, 96), "JPEG", **meta)


def test_any_iterable_of_decoded_images_is_scored_and_anything_else_is_refused():
    """A generator was used up by the first method and gave no verdicts; a numpy array or a
    PIL image failed late with an AttributeError from deep inside."""
    detector = Detector(methods=["exif_hints", "c2pa"])
    images = [decode(_image(1)), decode(_image(2))]

    def seen(verdicts):
        return [(v.label, v.probability, v.image["sha256"]) for v in verdicts]

    from_list = seen(detector.score(images))
    assert seen(detector.score(x for x in images)) == from_list and len(from_list) == 2
    with pytest.raises(TypeError, match=r"image 1 is a ndarray, not a DecodedImage: decode it"):
        detector.score([images[0], np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(TypeError, match=r"methods is a list of names, e.g. \['c2pa'\]"):
        Detector(methods="c2pa")
    with pytest.raises(TypeError, match=r"unknown method options \['modle_path'\]"):
        Detector(modle_path="/nonexistent")  # a typo used the bundled model


def test_a_fusion_config_the_caller_chose_is_kept_where_the_model_did_not_score():
    """It was swapped for the neutral 0.5 whenever the model did not score (here: no model)."""
    chosen = FusionConfig(threshold=0.95, camera_threshold=0.1)
    image = decode(_image(3, exif=P.software_exif("Midjourney v6")))
    verdict = Detector(methods=["exif_hints"], fusion=chosen).score([image])[0]
    assert verdict.threshold == 0.95 and verdict.label == "uncertain"
    assert Detector(methods=["exif_hints"]).score([image])[0].threshold == 0.5


def test_a_memory_database_brings_the_known_image_method_and_must_exist(tmp_path):
    """Detector(memory_db=...) left known_image out (the CLI and server add it), so a
    confirmed image did not decide; a mistyped path made an empty memory."""
    image = decode(_image(4, exif=P.software_exif("Midjourney v6")))
    db = tmp_path / "memory.sqlite"
    with MemoryStore(db) as store:
        store.add(hash_pixels(image.pixels), "camera", "reviewer")
    detector = Detector(memory_db=db)
    assert "known_image" in detector.method_names
    verdict = detector.score([image])[0]
    assert verdict.label == "camera"
    with pytest.raises(KnownImageError, match="no memory database"):
        Detector(memory_db=tmp_path / "typo.sqlite")
    assert not (tmp_path / "typo.sqlite").exists()


def test_a_large_batch_is_scored_in_chunks_with_the_same_verdicts(monkeypatch):
    """Every method ran on the whole batch at once: 1,000 small images took 3.2 GB."""
    from detector import pipeline

    detector = Detector(methods=["exif_hints", "generator_params"])
    images = [decode(_image(i % 5)) for i in range(70)]
    sizes = []
    run = detector.methods[0].score

    def spy(batch):
        sizes.append(len(batch))
        return run(batch)

    monkeypatch.setattr(detector.methods[0], "score", spy)
    verdicts = detector.score(images)
    assert sizes == [32, 32, 6] and len(verdicts) == 70
    one_by_one = [detector.score([im])[0] for im in images]
    assert [v.image["sha256"] for v in verdicts] == [v.image["sha256"] for v in one_by_one]
    assert [v.probability for v in verdicts] == [v.probability for v in one_by_one]
    monkeypatch.setattr(pipeline, "CHUNK_PIXELS", 3 * 96 * 96)  # by pixels too
    sizes.clear()
    detector.score(images[:7])
    assert sizes == [3, 3, 1]
