"""Generation parameters that image-generation tools write into the files they save.

Recognised: Stable Diffusion web UI (AUTOMATIC1111) and its forks (Forge, SD.Next) via the PNG
``parameters`` chunk or EXIF ``UserComment``; ComfyUI ``prompt``/``workflow`` graphs; InvokeAI
``invokeai_metadata``/``sd-metadata``/``Dream``; NovelAI ``Software``/``Comment``; SwarmUI
``sui_image_params``; Fooocus JSON parameters; Easy Diffusion's per-field chunks.

Each parser checks structure, not just a key name: a ``parameters`` chunk must carry an
A1111-style settings line, a ``prompt`` chunk must be a ComfyUI node graph. A match is an explicit
statement by the tool that saved the file, so it decides the verdict. Prompts are user data: they
are reported only with ``include_prompt=True``; otherwise only the names of the fields found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from detector.image import DecodedImage, is_comfyui_graph
from detector.methods.base import (
    Evidence,
    Kind,
    MethodResult,
    PerImageMethod,
    Strength,
    Supports,
)
from detector.methods.registry import register_method

__all__ = ["Finding", "GeneratorParams", "find_generator_params"]

_A1111 = "Stable Diffusion web UI (AUTOMATIC1111)"
_SETTINGS_START = re.compile(r"Steps: *\d+,")
# A1111's settings line is a few hundred characters (a few KB with many LoRA hashes); a longer
# one is not parsed.
_MAX_SETTINGS_LINE = 16 * 1024
# "Key: value" pairs of the settings line; values may be double-quoted and contain commas.
_PAIR = re.compile(r'\s*([\w][\w \-/\.]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
# Text chunks are parsed up to this size: a ComfyUI workflow with embedded images can pass a few
# MB, and parsing is bounded anyway by the decoder's file-size and text-memory limits.
_MAX_JSON = 16 * 1024 * 1024
_COMFYUI_WHERE = "_comfyui_location"  # a text_fields entry: where ComfyUI's graphs were found


@dataclass
class Finding:
    tool: str
    location: str  # where it was found, e.g. "PNG text chunk 'parameters'"
    fields: list[str]  # names of the parameters found (never their prompt text)
    model: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _json(text: str | None) -> Any:
    if not text or len(text) > _MAX_JSON or text.lstrip()[:1] not in "{[":
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        return None


def _settings_line(text: str) -> str | None:
    """A1111's settings line: the text's last line, starting ``Steps: N,`` (found without a
    regular expression over the whole text, whose backtracking a crafted chunk can make
    quadratic)."""
    last = text.strip().rsplit("\n", 1)[-1].strip()
    if len(last) > _MAX_SETTINGS_LINE or not _SETTINGS_START.match(last):
        return None
    return last


def _settings(line: str) -> dict[str, str]:
    """The settings line's "Key: value" pairs in one pass: each pair is matched where the last
    one ended, and a stretch that is no pair is skipped to its next comma (``findall`` would
    retry at every character: quadratic on a long run of word characters)."""
    settings: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        if m is None:
            comma = line.find(",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        settings[m.group(1).strip()] = m.group(2).strip().strip('"')
        pos = m.end()
    return settings


def _a1111(fields: dict[str, str]) -> Finding | None:
    for key, location in _candidates(fields, "parameters"):
        text = fields[key]
        line = _settings_line(text)
        if line is None:
            continue
        settings = _settings(line)
        if not ({"Sampler", "CFG scale", "Seed", "Size", "Model hash"} & settings.keys()):
            continue  # "Steps:" alone is too thin to call it generation parameters
        head = text[: text.rfind(line)].rstrip("\n")
        prompt, _, negative = head.partition("\nNegative prompt:")
        fields_found = (["prompt"] if prompt.strip() else []) + (
            ["negative prompt"] if negative.strip() else []
        )
        fields_found += [k.lower() for k in settings]
        version = settings.get("Version", "")
        tool = _A1111
        if settings.get("App", "").lower().startswith("sd.next"):
            tool = "SD.Next"
        elif "fooocus" in version.lower():
            tool = "Fooocus"
        elif re.match(r"f\d", version):
            tool = "Stable Diffusion WebUI Forge"
        return Finding(
            tool,
            location,
            fields_found,
            model=settings.get("Model") or settings.get("Model hash"),
            prompt=prompt.strip() or None,
            negative_prompt=negative.strip() or None,
            extra={"version": version} if version else {},
        )
    return None


def _json_params(fields: dict[str, str]) -> Finding | None:
    """SwarmUI and Fooocus store a JSON object where A1111 stores its text."""
    for key, location in _candidates(fields, "parameters"):
        data = _json(fields[key])
        if not isinstance(data, dict):
            continue
        sui = data.get("sui_image_params")
        if isinstance(sui, dict):
            return Finding(
                "SwarmUI",
                location,
                sorted(sui),
                model=_str(sui.get("model")),
                prompt=_str(sui.get("prompt")),
                negative_prompt=_str(sui.get("negativeprompt")),
                extra={"version": _str(sui.get("swarm_version"))},
            )
        version = _str(data.get("version") or data.get("Version")) or ""
        if "fooocus" in version.lower() or any("fooocus" in k.lower() for k in data):
            return Finding(
                "Fooocus",
                location,
                sorted(k.lower() for k in data),
                model=_str(data.get("base_model") or data.get("Base Model")),
                prompt=_str(data.get("prompt") or data.get("Prompt")),
                negative_prompt=_str(data.get("negative_prompt") or data.get("Negative Prompt")),
                extra={"version": version},
            )
    return None


def _comfyui(fields: dict[str, str]) -> Finding | None:
    graph = _json(fields.get("prompt"))
    workflow = _json(fields.get("workflow"))
    nodes: list[tuple[str, dict[str, Any]]] = []
    if isinstance(graph, dict):
        nodes = [
            (str(n["class_type"]), n["inputs"] if isinstance(n.get("inputs"), dict) else {})
            for n in graph.values()
            if isinstance(n, dict) and "class_type" in n
        ]
    wf_nodes = workflow.get("nodes") if isinstance(workflow, dict) else None
    if not isinstance(wf_nodes, list):
        wf_nodes = []
    wf_types = [str(n.get("type")) for n in wf_nodes if isinstance(n, dict) and n.get("type")]
    if not nodes and not wf_types:
        return None
    found = []
    if nodes:
        found.append(f"prompt graph ({len(nodes)} nodes)")
    if wf_types:
        found.append(f"workflow ({len(wf_types)} nodes)")
    models = sorted(
        {
            str(v)
            for _, inputs in nodes
            for k, v in inputs.items()
            if k in ("ckpt_name", "unet_name", "model_name") and isinstance(v, str)
        }
    )
    texts = [
        str(inputs["text"])
        for cls, inputs in nodes
        if "TextEncode" in cls and isinstance(inputs.get("text"), str)
    ]
    classes = sorted({cls for cls, _ in nodes} | set(wf_types))
    samplers = [c for c in classes if "sampler" in c.lower()]
    chunks = [repr(k) for k in ("prompt", "workflow") if k in fields]
    location = fields.get(_COMFYUI_WHERE) or (
        f"PNG text chunk{'s' if len(chunks) > 1 else ''} {' and '.join(chunks)}"
    )
    return Finding(
        "ComfyUI",
        location,
        found + (["samplers: " + ", ".join(samplers)] if samplers else []),
        model=", ".join(models) or None,
        prompt="\n".join(texts) or None,
        extra={"node_types": len(classes)},
    )


def _invokeai(fields: dict[str, str]) -> Finding | None:
    for key in ("invokeai_metadata", "sd-metadata"):
        data = _json(fields.get(key))
        if not isinstance(data, dict):
            continue
        image = data.get("image") if isinstance(data.get("image"), dict) else {}
        merged = {**data, **image}
        model = merged.get("model")
        model_name = (
            model.get("name") or model.get("model_name") if isinstance(model, dict) else model
        )
        prompt = merged.get("positive_prompt") or merged.get("prompt")
        if isinstance(prompt, list):  # sd-metadata stores [{"prompt": ..., "weight": ...}]
            prompt = " ".join(str(p.get("prompt", "")) for p in prompt if isinstance(p, dict))
        return Finding(
            "InvokeAI",
            f"PNG text chunk {key!r}",
            sorted(k for k in merged if not isinstance(merged[k], (dict, list)) or k == "model"),
            model=_str(model_name),
            prompt=_str(prompt),
            negative_prompt=_str(merged.get("negative_prompt")),
            extra={"version": _str(merged.get("app_version"))},
        )
    dream = fields.get("Dream")
    if dream and re.search(r"\s-[sSWHCA]\s*\S", dream):
        prompt = dream.split('"')[1] if dream.count('"') >= 2 else None
        flags = sorted(set(re.findall(r"\s(-[A-Za-z])\b", dream)))
        return Finding("InvokeAI", "PNG text chunk 'Dream'", ["prompt", *flags], prompt=prompt)
    return None


def _novelai(fields: dict[str, str]) -> Finding | None:
    software = fields.get("Software", "")
    source = fields.get("Source", "")
    if "novelai" not in software.lower() and "novelai" not in source.lower():
        return None
    comment = _json(fields.get("Comment"))
    found = [k for k in ("Software", "Source", "Description", "Comment") if k in fields]
    if isinstance(comment, dict):
        found += [f"Comment.{k}" for k in sorted(comment) if k not in ("prompt", "uc")]
    prompt = comment.get("prompt") if isinstance(comment, dict) else None
    return Finding(
        "NovelAI",
        "PNG text chunks " + ", ".join(repr(k) for k in ("Software", "Source") if k in fields),
        found,
        model=source or None,
        prompt=_str(prompt or fields.get("Description")),
        negative_prompt=_str(comment.get("uc")) if isinstance(comment, dict) else None,
    )


def _easy_diffusion(fields: dict[str, str]) -> Finding | None:
    if "use_stable_diffusion_model" not in fields:
        return None
    keys = [k for k in fields if k not in ("prompt", "negative_prompt")]
    return Finding(
        "Easy Diffusion",
        "PNG text chunk 'use_stable_diffusion_model'",
        sorted(keys) + (["prompt"] if "prompt" in fields else []),
        model=fields.get("use_stable_diffusion_model"),
        prompt=fields.get("prompt"),
        negative_prompt=fields.get("negative_prompt"),
    )


_PARSERS: list[Callable[[dict[str, str]], Finding | None]] = [
    _comfyui,
    _a1111,
    _json_params,
    _invokeai,
    _novelai,
    _easy_diffusion,
]


def _candidates(fields: dict[str, str], png_key: str) -> list[tuple[str, str]]:
    """Where A1111-style text can live: the PNG chunk, EXIF UserComment, a JPEG comment."""
    places = [
        (png_key, f"PNG text chunk {png_key!r}"),
        ("UserComment", "EXIF UserComment"),
        ("comment", "JPEG comment"),
    ]
    return [(key, where) for key, where in places if fields.get(key)]


def _str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value)


def text_fields(image: DecodedImage) -> dict[str, str]:
    """All free-text metadata that generation tools write into, by key."""
    fields = dict(image.metadata.text)
    user_comment = image.metadata.exif.get("UserComment")
    if isinstance(user_comment, str) and user_comment:
        fields.setdefault("UserComment", user_comment)
    if image.metadata.comment:
        fields.setdefault("comment", image.metadata.comment)
    for tag in ("Make", "Model"):  # ComfyUI's WebP saver: "prompt:{...}" / "workflow:{...}"
        value = image.metadata.exif.get(tag)
        if is_comfyui_graph(value):
            key, _, graph = value.partition(":")
            if key not in fields:
                fields[key] = graph
                fields[_COMFYUI_WHERE] = "EXIF Make and Model"
    return fields


def find_generator_params(image: DecodedImage) -> list[Finding]:
    """Every recognised set of generation parameters in the image's metadata."""
    fields = text_fields(image)
    if not fields:
        return []
    found = []
    for parser in _PARSERS:
        try:
            finding = parser(fields)
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
            # a chunk shaped unlike its tool's output is no finding of that tool; the other
            # parsers' findings stand
            continue
        if finding is not None:
            found.append(finding)
    return found


@register_method("generator_params")
class GeneratorParams(PerImageMethod):
    kind = Kind.METADATA
    description = "generation parameters written by A1111, ComfyUI, InvokeAI, NovelAI, ..."
    options: ClassVar[tuple[str, ...]] = ("include_prompt",)

    def __init__(self, include_prompt: bool = False) -> None:
        self.include_prompt = include_prompt

    def score_one(self, image: DecodedImage) -> MethodResult:
        findings = find_generator_params(image)
        if not findings:
            return self.abstain()
        evidence = []
        for f in findings:
            model = f" (model: {f.model})" if f.model else ""
            evidence.append(
                Evidence(
                    f"generator_params.{f.tool.split()[0].lower()}",
                    f"{f.tool} generation parameters in {f.location}{model}: "
                    + ", ".join(f.fields[:12])
                    + (", ..." if len(f.fields) > 12 else ""),
                    Strength.STRONG,
                    Supports.GENERATED,
                )
            )
        primary = findings[0]
        details: dict[str, Any] = {
            "generator": primary.tool,
            "tools": [f.tool for f in findings],
            "fields": primary.fields,
            "model": primary.model,
            "location": primary.location,
        }
        details.update({k: v for k, v in primary.extra.items() if v})
        if self.include_prompt:
            details["prompt"] = primary.prompt
            details["negative_prompt"] = primary.negative_prompt
        return self.result(0.99, evidence, decisive=True, details=details)
