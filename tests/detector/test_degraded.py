"""Verdicts survive a failing method: the others answer, the verdict says it is degraded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from detector.image import decode
from detector.pipeline import Detector
from training import metadata_writers as P

pytestmark = pytest.mark.integration


class _BrokenEngine:
    """An engine that fails the way a lost GPU does."""

    name = "broken"
    device = "cpu"

    def run(self, tiles):
        raise RuntimeError("CUDA error: device lost")


def test_engine_failure_gives_a_degraded_verdict_from_the_other_methods(exported_model):
    det = Detector(["model", "generator_params"], model_path=exported_model)
    model = next(m for m in det.methods if m.name == "model")
    declared = decode(
        P.encode(P.synthetic_scene(1, 96, 96), "PNG", png_text={"parameters": P.a1111_parameters()})
    )
    plain = decode(P.encode(P.synthetic_scene(2, 96, 96), "JPEG"))
    healthy = det.score([declared, plain])
    assert not any(v.degraded for v in healthy) and healthy[1].to_dict()["degraded"] is False
    working = model.bundle
    model.bundle = replace(working, engine=_BrokenEngine())
    v_declared, v_plain = det.score([declared, plain])
    model.bundle = working
    # the declaration still decides; the plain JPEG has nothing left to judge it
    assert v_declared.label == "generated" and v_declared.decided_by == "declaration"
    for v in (v_declared, v_plain):
        d = v.to_dict()
        assert d["degraded"] is True
        assert d["degraded_reasons"] == ["model: RuntimeError: CUDA error: device lost"]
        assert d["methods"]["model"]["abstained"]
        assert d["methods"]["model"]["evidence"][0]["code"] == "model.failed"
    assert v_plain.label == "uncertain" and v_plain.probability is None
    assert not any(v.degraded for v in det.score([declared, plain]))  # recovered
