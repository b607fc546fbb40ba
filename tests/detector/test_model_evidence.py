"""The model's evidence reads its score in the fused verdict's bands, so a verdict and its
evidence never disagree: at or above the threshold it supports generated, at or below the
camera threshold a camera, in between neither (the verdict there is ``uncertain``)."""

from __future__ import annotations

import pytest

from detector.bundled import DEFAULT_MODEL
from detector.engine import load_bundle
from detector.fusion import fuse
from detector.methods.base import Strength, Supports
from detector.methods.model import ModelMethod
from detector.pipeline import default_fusion

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def method():
    return ModelMethod(bundle=load_bundle(DEFAULT_MODEL))


def test_evidence_and_verdict_agree_across_the_bands(method):
    thr, cam = method.threshold, method.camera_threshold
    config = default_fusion([method])
    assert (config.threshold, config.camera_threshold) == (thr, cam) and cam == thr / 2
    cases = [  # p, the verdict's label, the evidence's side
        (0.9999, "generated", Supports.GENERATED),
        (thr, "generated", Supports.GENERATED),
        ((thr + cam) / 2, "uncertain", Supports.NEITHER),
        (cam + 0.01, "uncertain", Supports.NEITHER),
        (cam, "camera", Supports.CAMERA),
        (0.001, "camera", Supports.CAMERA),
    ]
    for p, label, side in cases:
        result = method._result(p, 0.0, 4, 0.0)
        (evidence,) = result.evidence
        assert evidence.supports is side, p
        assert fuse([result], config).label == label, p
    middle = method._result(0.557, 0.0, 4, 0.0).evidence[0]
    assert middle.code == "model.uncertain" and middle.strength is Strength.WEAK
    assert f"between its camera range, up to {cam:.3f}, and its threshold {thr:.3f}" in (
        middle.message
    )


def test_strength_grows_with_the_distance_in_log_odds_from_the_bands_edge(method):
    strengths = [method._result(p, 0.0, 1, 0.0).evidence[0].strength for p in
                 (method.threshold, 0.99, 0.99999)]  # fmt: skip
    assert strengths == [Strength.WEAK, Strength.MODERATE, Strength.STRONG]
    strengths = [method._result(p, 0.0, 1, 0.0).evidence[0].strength for p in
                 (method.camera_threshold, 0.15, 0.01)]  # fmt: skip
    assert strengths == [Strength.WEAK, Strength.MODERATE, Strength.STRONG]
