from __future__ import annotations

import json
import math

import pytest

from detector.fusion import FusionConfig, fuse
from detector.methods.base import Evidence, Kind, MethodResult, Strength, Supports

pytestmark = pytest.mark.unit


def r(name, p, weight=1.0, decisive=False, evidence=(), kind=Kind.METADATA, **details):
    return MethodResult(
        name, kind, p, tuple(evidence), weight=weight, decisive=decisive, details=details
    )


def test_all_abstain_is_uncertain_with_no_probability():
    v = fuse([r("a", None), r("b", None)])
    assert v.label == "uncertain" and v.probability is None and v.decided_by == "none"
    assert "metadata methods abstain" in v.summary


def test_decisive_declaration_overrides_a_low_model_score():
    ev = Evidence("x.ai", "declared", Strength.STRONG, Supports.GENERATED)
    v = fuse(
        [
            r("model", 0.05, kind=Kind.MODEL),
            r("params", 0.99, decisive=True, evidence=[ev], generator="ComfyUI"),
        ]
    )
    assert v.label == "generated" and v.probability == pytest.approx(0.99)
    assert v.decided_by == "declaration" and v.generator == "ComfyUI"
    assert v.summary == "declared"


def _p(log_odds: float) -> float:
    return 1 / (1 + math.exp(-log_odds))


def test_one_sources_results_are_averaged_and_sources_add():
    """Pixels (model, artifact) and metadata are independent evidence: their log-odds add;
    results reading the same source are a weighted mean of log-odds."""
    logit = math.log(9)  # p 0.9
    v = fuse([r("model", 0.9, kind=Kind.MODEL), r("hint", 0.9, weight=0.5)])
    assert v.probability == pytest.approx(_p(logit + 0.5 * logit))
    assert v.decided_by == "fusion"
    pixels = [r("model", 0.9, kind=Kind.MODEL), r("artifact", 0.9, 0.5, kind=Kind.ARTIFACT)]
    assert fuse(pixels).probability == pytest.approx(0.9)  # the same source: a mean
    meta = [r("iptc", 0.25, 0.5), r("exif", 0.9, 0.5)]  # weights sum to 1: a plain mean
    v = fuse([*pixels, *meta])
    assert v.probability == pytest.approx(_p(logit + (0.5 * math.log(1 / 3) + 0.5 * logit)))
    person = r("memory", 0.9, kind=Kind.MEMORY)  # not a confirmation: a source of its own
    assert fuse([pixels[0], person]).probability == pytest.approx(_p(2 * logit))


def test_a_hint_that_agrees_with_the_model_raises_its_confidence():
    """A model flagging at 0.975 and an EXIF field naming a generative tool (0.90, weight 0.5)
    stay flagged (the mean over every result made it 0.960, under a 0.969 threshold); a hint
    that says nothing (0.5) leaves the model's score; one that disagrees lowers it."""
    cfg = FusionConfig(threshold=0.969, camera_threshold=0.4845)
    model = r("model", 0.975, kind=Kind.MODEL)
    agree = fuse([model, r("exif_hints", 0.90, weight=0.5)], cfg)
    assert agree.probability > 0.975 and agree.label == "generated"
    assert fuse([model, r("hint", 0.5, weight=0.5)], cfg).probability == pytest.approx(0.975)
    assert fuse([model, r("capture", 0.25, weight=0.5)], cfg).probability < 0.975


def test_weak_hint_alone_stays_near_half():
    v = fuse([r("hint", 0.9, weight=0.25)])
    assert 0.5 < v.probability < 0.65


def test_labels_follow_thresholds():
    cfg = FusionConfig(threshold=0.7, camera_threshold=0.3)
    assert fuse([r("m", 0.71)], cfg).label == "generated"
    assert fuse([r("m", 0.5)], cfg).label == "uncertain"
    assert fuse([r("m", 0.29)], cfg).label == "camera"
    assert fuse([r("m", 0.71)], cfg).threshold == 0.7


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0.1, "camera_threshold": 0.2}, {"threshold": 1.0}, {"camera_threshold": 0.0}],
)
def test_bad_config_fails_at_construction(kwargs):
    with pytest.raises(ValueError):
        FusionConfig(**kwargs)


def test_extreme_probabilities_do_not_overflow():
    v = fuse([r("a", 1.0), r("b", 0.0)])
    assert v.probability == pytest.approx(0.5)


def test_evidence_sorted_strongest_first_and_json_serialisable():
    weak = Evidence("w", "weak one", Strength.WEAK, Supports.CAMERA)
    strong = Evidence("s", "strong one", Strength.STRONG, Supports.GENERATED)
    v = fuse([r("a", None, evidence=[weak]), r("b", 0.95, evidence=[strong])])
    assert [e.code for _, e in v.evidence] == ["s", "w"]
    json.dumps(v.to_dict())


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_results_validate_probability(bad):
    with pytest.raises(ValueError):
        r("a", bad)


def test_abstention_cannot_be_decisive():
    with pytest.raises(ValueError):
        r("a", None, decisive=True)


_MODEL_BANDS = FusionConfig(threshold=0.969, camera_threshold=0.4845)  # the bundled model's


def test_a_declaration_is_generated_whatever_the_models_threshold():
    ev = Evidence("iptc.ai_composite", "declares composite", Strength.STRONG, Supports.GENERATED)
    v = fuse([r("model", 0.3, kind=Kind.MODEL), r("iptc", 0.95, decisive=True, evidence=[ev])],
             _MODEL_BANDS)  # fmt: skip
    assert v.label == "generated" and v.probability == pytest.approx(0.95)
    assert v.decided_by == "declaration"


def test_the_explanation_leads_with_what_decided_and_its_side():
    capture = Evidence("c2pa.capture", "declares digitalCapture", Strength.STRONG, Supports.CAMERA)
    params = Evidence("generator_params.a1111", "A1111 parameters", Strength.STRONG,
                      Supports.GENERATED)  # fmt: skip
    v = fuse([r("c2pa", 0.05, evidence=[capture]),
              r("generator_params", 0.99, decisive=True, evidence=[params])])  # fmt: skip
    assert v.label == "generated" and v.summary.startswith("A1111 parameters")
    assert [m for m, _ in v.evidence] == ["generator_params", "c2pa"]
    hint = Evidence("iptc.capture", "declares digitalCapture", Strength.WEAK, Supports.CAMERA)
    flag = Evidence("model.high", "the model flags it", Strength.WEAK, Supports.GENERATED)
    v = fuse([r("iptc", 0.25, 0.5, evidence=[hint]),
              r("model", 0.985, kind=Kind.MODEL, evidence=[flag])], _MODEL_BANDS)  # fmt: skip
    assert v.label == "generated" and v.summary.startswith("the model flags it")


def test_a_camera_verdict_names_no_generator():
    v = fuse([r("exif", 0.9, 0.5, tool="Midjourney"), r("c2pa", 0.05, decisive=False),
              r("model", 0.02, kind=Kind.MODEL)])  # fmt: skip
    assert v.label == "camera" and v.generator is None


def test_without_a_model_the_camera_band_is_half_the_threshold():
    v = fuse([r("iptc", 0.25, 0.5), r("c2pa", 0.25, 0.5)])
    assert v.probability == pytest.approx(0.25) and v.label == "camera"


def test_the_models_bands_apply_only_where_it_scored():
    from detector.pipeline import fuse_results

    bands = [("model", _MODEL_BANDS)]
    hint = [r("iptc", 0.25, 0.5), r("model", None, kind=Kind.MODEL)]  # the model abstained
    v = fuse_results(hint, bands)
    assert v.threshold == 0.5 and v.label == "uncertain"  # not 'camera' by the model's band
    scored = [r("iptc", 0.25, 0.5), r("model", 0.45, kind=Kind.MODEL)]
    assert fuse_results(scored, bands).threshold == 0.969
    assert fuse_results(hint, _MODEL_BANDS).threshold == 0.969  # a caller's own: kept


def test_without_the_model_the_artifact_method_flags_what_its_evidence_flags():
    """The model failed or did not run: the artifact statistics (weight 0.5) are the pixel
    evidence. A score under their own threshold (0.829) read 'generated' at the neutral 0.5
    (0.557 fused to 0.528); their bands, carried through the weight, agree with their evidence
    on either side of the threshold, and the model's bands still win where it scored."""
    from detector.methods import create_methods
    from detector.pipeline import fuse_results, method_bands

    methods = create_methods(["model", "artifact"])
    artifact = methods[1]
    bands = method_bands(methods)
    assert [name for name, _ in bands] == ["model", "artifact"]
    thr = artifact.threshold
    for p, label in ((0.557, "uncertain"), (thr - 1e-3, "uncertain"), (thr + 1e-3, "generated"),
                     (artifact.camera_threshold - 1e-3, "camera")):  # fmt: skip
        results = [r("model", None, kind=Kind.MODEL), r("artifact", p, 0.5, kind=Kind.ARTIFACT)]
        assert fuse_results(results, bands).label == label, p
    scored = [r("model", 0.5, kind=Kind.MODEL), r("artifact", 0.99, 0.5, kind=Kind.ARTIFACT)]
    assert fuse_results(scored, bands).threshold == methods[0].threshold
    # the artifact alone: the verdict's threshold is its own, as the fused p carries it
    alone = method_bands(create_methods(["artifact"]))
    results = [r("artifact", 0.557, 0.5, kind=Kind.ARTIFACT)]
    assert fuse_results(results, alone).label == "uncertain"


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, -0.5])
def test_a_weight_must_be_a_finite_number_at_least_zero(weight):
    """A NaN weight passed (NaN < 0 is False) and the verdict's probability was NaN, which is
    no JSON (score --json, scan lines)."""
    with pytest.raises(ValueError, match="weight"):
        r("hint", 0.9, weight=weight)


def test_a_huge_weight_does_not_overflow_the_fusion():
    """A weight of 1e308 made w * logit(p) infinite and the fused probability NaN."""
    model = r("model", 0.9, kind=Kind.MODEL)
    huge = r("artifact", 0.2, weight=1e308, kind=Kind.ARTIFACT)
    v = fuse([model, huge])  # the pixels' mean is the huge one's: logit(0.2)
    assert v.probability == pytest.approx(0.2)
    two = fuse([huge, r("other", 0.2, weight=1e308, kind=Kind.ARTIFACT)])
    assert two.probability == pytest.approx(0.2)
    json.dumps(v.to_dict(), allow_nan=False)


def test_numpy_numbers_are_plain_floats_and_a_bool_is_no_probability():
    """A numpy float32 probability or weight made score --json and scan fail (not JSON
    serialisable) and the server answer 500; True was taken as probability 1."""
    np = pytest.importorskip("numpy")
    res = r("hint", np.float32(0.75), weight=np.float32(0.5))
    assert type(res.probability) is float and type(res.weight) is float
    assert res.probability == 0.75 and res.weight == 0.5
    json.dumps(fuse([res]).to_dict(), allow_nan=False)
    for bad in (True, np.bool_(True), "0.7"):
        with pytest.raises(TypeError, match="not a number"):
            r("hint", bad)
    with pytest.raises(TypeError, match="weight"):
        r("hint", 0.7, weight=False)


def test_evidence_strength_and_supports_are_their_enums():
    """A plain string strength passed and failed later in fusion's sort, outside the guard
    that degrades one method: every method of the batch lost its verdict."""
    ev = Evidence("x.y", "says so", "strong", "generated")
    assert ev.strength is Strength.STRONG and ev.supports is Supports.GENERATED
    with pytest.raises(ValueError, match="strength 'loud' is not one of info, weak"):
        Evidence("x.y", "says so", "loud")
    with pytest.raises(ValueError, match="supports 1 is not one of generated, camera"):
        Evidence("x.y", "says so", Strength.WEAK, 1)


def test_a_decisive_result_declares_generation():
    """Decisive at 0.1 gave label 'generated' at probability 0.1."""
    with pytest.raises(ValueError, match="decisive"):
        r("params", 0.1, decisive=True)
    assert fuse([r("params", 0.5, decisive=True)]).label == "generated"


def test_a_weight_of_zero_is_an_abstention():
    """Alone it gave 'generated' at 0.5; decisive at weight 0 still decided."""
    v = fuse([r("hint", 0.9, weight=0.0)])
    assert v.label == "uncertain" and v.probability is None and v.decided_by == "none"
    v = fuse([r("model", 0.1, kind=Kind.MODEL), r("params", 0.99, weight=0.0, decisive=True)])
    assert v.decided_by == "fusion" and v.probability == pytest.approx(0.1)
    assert v.label == "camera"
    v = fuse([r("model", 0.9, kind=Kind.MODEL), r("hint", 0.01, weight=0.0)])
    assert v.probability == pytest.approx(0.9)
