from __future__ import annotations

import pytest

from detector.image import decode
from detector.methods import create_method
from training import metadata_writers as P

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def method():
    return create_method("generator_params")


def _score(method, data):
    return method.score([decode(data)])[0]


POSITIVE = {
    "a1111_png": (
        lambda px: P.encode(px, "PNG", png_text={"parameters": P.a1111_parameters()}),
        "Stable Diffusion web UI (AUTOMATIC1111)",
        "PNG text chunk 'parameters'",
    ),
    "a1111_jpeg_usercomment": (
        lambda px: P.encode(px, "JPEG", exif=P.user_comment_exif(P.a1111_parameters())),
        "Stable Diffusion web UI (AUTOMATIC1111)",
        "EXIF UserComment",
    ),
    "a1111_webp_usercomment": (
        lambda px: P.encode(px, "WEBP", exif=P.user_comment_exif(P.a1111_parameters())),
        "Stable Diffusion web UI (AUTOMATIC1111)",
        "EXIF UserComment",
    ),
    "a1111_jpeg_comment": (
        lambda px: P.encode(px, "JPEG", comment=P.a1111_parameters()),
        "Stable Diffusion web UI (AUTOMATIC1111)",
        "JPEG comment",
    ),
    "forge": (
        lambda px: P.encode(
            px,
            "PNG",
            png_text={"parameters": P.a1111_parameters(version="f2.0.1v1.10.1-previous-313")},
        ),
        "Stable Diffusion WebUI Forge",
        "PNG text chunk 'parameters'",
    ),
    "comfyui": (
        lambda px: P.encode(px, "PNG", png_text=P.comfyui_chunks()),
        "ComfyUI",
        "'prompt' and 'workflow'",
    ),
    "comfyui_workflow_only": (
        lambda px: P.encode(px, "PNG", png_text={"workflow": P.comfyui_chunks()["workflow"]}),
        "ComfyUI",
        "'workflow'",
    ),
    "invokeai": (
        lambda px: P.encode(px, "PNG", png_text=P.invokeai_chunks()),
        "InvokeAI",
        "'invokeai_metadata'",
    ),
    "invokeai_dream": (
        lambda px: P.encode(
            px, "PNG", png_text={"Dream": '"a cat" -s 50 -S 12345 -W 512 -H 512 -C 7.5 -A k_lms'}
        ),
        "InvokeAI",
        "'Dream'",
    ),
    "novelai": (
        lambda px: P.encode(px, "PNG", png_text=P.novelai_chunks()),
        "NovelAI",
        "'Software'",
    ),
    "swarmui": (
        lambda px: P.encode(px, "PNG", png_text={"parameters": P.swarmui_parameters()}),
        "SwarmUI",
        "'parameters'",
    ),
    "fooocus": (
        lambda px: P.encode(px, "PNG", png_text={"parameters": P.fooocus_parameters()}),
        "Fooocus",
        "'parameters'",
    ),
    "easy_diffusion": (
        lambda px: P.encode(px, "PNG", png_text=P.easy_diffusion_chunks()),
        "Easy Diffusion",
        "use_stable_diffusion_model",
    ),
}


@pytest.mark.parametrize("case", sorted(POSITIVE))
def test_each_tool_is_recognised(method, scene, case):
    make, tool, where = POSITIVE[case]
    res = _score(method, make(scene))
    assert res.probability == pytest.approx(0.99) and res.decisive
    assert res.details["generator"] == tool
    assert where in res.details["location"]
    assert tool in res.evidence[0].message
    assert res.details["fields"], "the fields found are listed"
    assert "prompt" not in res.details, "prompt text is user data: off by default"


def test_a1111_fields_and_model(method, scene):
    res = _score(
        method,
        P.encode(scene, "PNG", png_text={"parameters": P.a1111_parameters(model="dreamshaper_8")}),
    )
    for name in (
        "steps",
        "sampler",
        "cfg scale",
        "seed",
        "size",
        "model hash",
        "prompt",
        "negative prompt",
    ):
        assert name in res.details["fields"]
    assert res.details["model"] == "dreamshaper_8"
    assert "lighthouse" not in str(res.to_dict()), "prompt text must not leak by default"


def test_prompt_only_when_asked(scene):
    method = create_method("generator_params", include_prompt=True)
    data = P.encode(
        scene, "PNG", png_text={"parameters": P.a1111_parameters(prompt="a red bicycle")}
    )
    res = method.score([decode(data)])[0]
    assert res.details["prompt"] == "a red bicycle"
    assert res.details["negative_prompt"] == "blurry, lowres"
    comfy = method.score(
        [decode(P.encode(scene, "PNG", png_text=P.comfyui_chunks(prompt="a blue kite")))]
    )[0]
    assert "a blue kite" in comfy.details["prompt"]


def test_quoted_values_with_commas(method, scene):
    text = (
        "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, "
        'Lora hashes: "a: 1, b: 2", Version: v1.8.0'
    )
    res = _score(method, P.encode(scene, "PNG", png_text={"parameters": text}))
    assert "lora hashes" in res.details["fields"] and "version" in res.details["fields"]


NEGATIVE = {
    "plain_png": {},
    "parameters_free_text": {"parameters": "holiday photo, Paris, 2019"},
    "parameters_steps_only": {"parameters": "Steps: 3, then go left"},
    "prompt_not_json": {"prompt": "this is a caption, not a graph"},
    "prompt_json_not_graph": {"prompt": '{"a": 1, "b": [1, 2]}'},
    "software_only_other": {"Software": "Adobe ImageReady"},
    "comment_json_no_tool": {"Comment": '{"steps": 20}'},
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_no_false_positive_on_lookalikes(method, scene, case):
    res = _score(method, P.encode(scene, "PNG", png_text=NEGATIVE[case]))
    assert res.abstained and res.evidence == ()


def test_camera_jpeg_abstains(method, scene):
    assert _score(method, P.encode(scene, "JPEG", exif=P.camera_exif())).abstained


def test_huge_json_chunk_is_ignored_not_parsed(method, scene):
    blob = '{"1": {"class_type": "KSampler", "inputs": {"x": "' + "a" * 900_000 + '"}}}'
    res = _score(method, P.encode(scene, "PNG", png_text={"prompt": blob}))
    assert res.decisive  # under the 2 MB cap it is still parsed
    assert len(str(res.to_dict())) < 10_000


def test_a_crafted_settings_line_is_not_parsed_for_minutes(method, scene):
    """A 'parameters' chunk of 'Steps: 1,' and a million spaces: the settings regex used to
    backtrack quadratically over it (about an hour of CPU per image); a line this long is not
    A1111's and is skipped."""
    text = "Steps: 1," + " " * 1_000_000 + "x\nfoo"
    res = method.score([decode(P.encode(scene[:64, :64], "PNG", png_text={"parameters": text}))])[0]
    assert res.abstained
    long_line = "Steps: 20, Sampler: Euler a, CFG scale: 7," + " " * 20_000 + "Seed: 1"
    res = method.score(
        [decode(P.encode(scene[:64, :64], "PNG", png_text={"parameters": long_line}))]
    )[0]
    assert res.abstained


@pytest.mark.parametrize("pad", [0, 100_000])  # and past the 64 KiB other EXIF text is cut at
def test_comfyui_graphs_in_webp_exif_make_and_model(method, scene, pad):
    """ComfyUI's SaveAnimatedWEBP writes Model 'prompt:{...}' and Make 'workflow:{...}'."""
    import json

    from PIL import ExifTags, Image

    chunks = P.comfyui_chunks()
    workflow = json.loads(chunks["workflow"])
    workflow["extra"] = {"note": "x" * pad}
    exif = Image.Exif()
    exif[ExifTags.Base.Model] = "prompt:" + chunks["prompt"]
    exif[ExifTags.Base.Make] = "workflow:" + json.dumps(workflow)
    image = decode(P.encode(scene, "WEBP", exif=exif))
    res = method.score([image])[0]
    assert res.decisive and res.details["generator"] == "ComfyUI"
    assert "ComfyUI generation parameters in EXIF Make and Model" in res.evidence[0].message
    hints = create_method("exif_hints").score([image])[0]
    assert hints.abstained and not hints.evidence  # not a device, not a tool's signature


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": "[" * 100_000 + "]" * 100_000},  # deeper than json can recurse
        {"workflow": '{"nodes": 5}'},
        {"prompt": '{"3": {"class_type": "KSampler", "inputs": [1]}}'},
        {"workflow": '{"nodes": [{"type": "KSampler"}, 7, null]}'},
    ],
)
def test_a_malformed_chunk_does_not_hide_the_other_findings(method, scene, extra):
    """One chunk shaped unlike its tool's output made the whole method fail (RecursionError,
    TypeError, AttributeError): the A1111 parameters beside it were lost."""
    png_text = {"parameters": P.a1111_parameters(), **extra}
    res = _score(method, P.encode(scene[:64, :64], "PNG", png_text=png_text))
    assert res.decisive and res.probability == pytest.approx(0.99)
    assert "Stable Diffusion web UI (AUTOMATIC1111)" in res.details["tools"]


def test_a_long_run_of_word_characters_in_the_settings_line_is_linear(method, scene):
    """Under the 16 KB cap, 'Steps: 1, ' and 16,000 letters took seconds per place it was
    found (the pair pattern retried at every character); the real pairs around it still read."""
    line = "Steps: 20, " + "a" * 16_000 + ", Sampler: Euler a, Seed: 1"
    res = _score(method, P.encode(scene[:64, :64], "PNG", png_text={"parameters": "p\n" + line}))
    assert res.decisive
    assert {"steps", "sampler", "seed"} <= set(res.details["fields"])
