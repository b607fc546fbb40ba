"""Verdicts survive a failing method: the others answer, the verdict says it is degraded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from detector.image import decode
from detector.methods import Evidence, Kind, MethodResult
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


def _method(kind, score):
    """A Method subclass of ``kind`` whose score is ``score(self, images)``."""
    from detector.methods import Method

    return type("Scripted", (Method,), {"kind": kind, "score": score, "__module__": __name__})


@pytest.mark.parametrize(
    "name, score, reason",
    [
        ("raising", lambda self, ims: 1 / 0, "ZeroDivisionError: division by zero"),
        ("extra", lambda self, ims: [self.result(0.9) for _ in range(len(ims) + 1)],
         "returned 3 results for 2 images"),
        ("none", lambda self, ims: None, "returned NoneType results for 2 images"),
        # a result that is not valid fails where the method builds it (in its score)
        ("bad_evidence", lambda self, ims: [
            self.result(0.9, [Evidence("x", "y", "loud")]) for _ in ims
        ], "strength 'loud' is not one of"),
        # results under another method's name replaced that method's result in the verdict
        ("liar", lambda self, ims: [
            MethodResult("generator_params", Kind.METADATA, 0.01) for _ in ims
        ], "returned a result of 'generator_params' (metadata), not its own ('liar'"),
        ("wrong_kind", lambda self, ims: [
            MethodResult("wrong_kind", Kind.MODEL, 0.99) for _ in ims
        ], "not its own ('wrong_kind', metadata)"),
    ],
)  # fmt: skip
def test_a_method_that_breaks_the_contract_fails_alone(method_registry, name, score, reason):
    """Detector and `bench accuracy` share one guard (``score_guarded``): whatever a method
    does wrong on a batch, the other methods' results make the verdict, marked degraded."""
    from detector.methods import register_method

    register_method(name)(_method(Kind.METADATA, score))
    det = Detector(["generator_params", name])
    declared = decode(
        P.encode(P.synthetic_scene(1, 96, 96), "PNG", png_text={"parameters": P.a1111_parameters()})
    )
    plain = decode(P.encode(P.synthetic_scene(2, 96, 96), "JPEG"))
    v_declared, v_plain = det.score([declared, plain])
    assert v_declared.label == "generated" and v_declared.decided_by == "declaration"
    assert v_declared.to_dict()["methods"]["generator_params"]["probability"] > 0.9
    for v in (v_declared, v_plain):
        (why,) = v.degraded
        assert why.startswith(f"{name}: ") and reason in why, why
        assert v.to_dict()["methods"][name]["evidence"][0]["code"] == f"{name}.failed"
        assert [r.method for r in v.results] == ["generator_params", name]


def test_non_finite_and_numpy_details_are_written_as_valid_json(method_registry):
    """A method's details holding NaN, infinity or numpy numbers made `score --json` and scan
    write `NaN` (not JSON) or fail (float32 is not serialisable); the server already wrote
    null. One rule now, in MethodResult.to_dict, for every writer."""
    import json

    import numpy as np

    from detector.methods import register_method

    def score(self, ims):
        details = {"nan": float("nan"), "inf": [np.inf, 1.5], "f32": np.float32(0.25),
                   "arr": np.array([1, 2]), "nested": {"x": (float("-inf"),)}}  # fmt: skip
        return [self.result(0.7, details=details) for _ in ims]

    register_method("odd_details")(_method(Kind.METADATA, score))
    (verdict,) = Detector(["odd_details"]).score(
        [decode(P.encode(P.synthetic_scene(3, 64, 64), "PNG"))]
    )
    text = json.dumps(verdict.to_dict(), allow_nan=False)  # raises on NaN, fails on float32
    details = json.loads(text)["methods"]["odd_details"]["details"]
    assert details == {"nan": None, "inf": [None, 1.5], "f32": 0.25, "arr": [1, 2],
                       "nested": {"x": [None]}}  # fmt: skip
