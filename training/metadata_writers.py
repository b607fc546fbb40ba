"""Writers of provenance metadata: the inverse of ``detector.methods``' metadata readers.

Used to make test fixtures, the bundled sample images and the benchmark's metadata set. Each
writer produces what the real tool writes (chunk names, field layout, signing, watermark
payload), so that the readers are tested against the format, not against themselves.
``invisible-watermark`` and ``cryptography`` (the ``provenance`` extra) are imported lazily.
"""

from __future__ import annotations

import datetime
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin

from detector.methods.watermark import PAYLOADS
from detector.provenance import IPTC_DST_PREFIX

__all__ = [
    "SigningChain",
    "a1111_parameters",
    "c2pa_sign",
    "camera_exif",
    "comfyui_chunks",
    "easy_diffusion_chunks",
    "embed_watermark",
    "encode",
    "fooocus_parameters",
    "invokeai_chunks",
    "iptc_xmp",
    "make_signing_chain",
    "novelai_chunks",
    "software_exif",
    "swarmui_parameters",
    "synthetic_scene",
    "user_comment_exif",
]


# --- pixels -------------------------------------------------------------------------------


def synthetic_scene(
    seed: int, height: int = 320, width: int = 320, noise: float = 6.0
) -> np.ndarray:
    """Deterministic procedural RGB content (gradients, discs, texture, noise).

    Fixture pixels only: they stand in for image content in metadata tests, never for real
    photographs in any accuracy claim.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(8, 60), rng.uniform(8, 60), rng.uniform(0, 6.3)
        img[..., c] = 110 + 60 * np.sin(xx / fx + ph) * np.cos(yy / fy) + rng.uniform(-30, 30)
    for _ in range(int(rng.integers(3, 8))):
        cy, cx, r = (
            rng.uniform(0, height),
            rng.uniform(0, width),
            rng.uniform(min(10, width / 8), max(width / 4, 10)),
        )
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[mask] = img[mask] * 0.4 + rng.uniform(40, 215, 3) * 0.6
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(
    pixels: np.ndarray,
    fmt: str = "PNG",
    *,
    quality: int = 90,
    exif: bytes | Image.Exif | None = None,
    xmp: str | None = None,
    png_text: dict[str, str] | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode RGB pixels with the given container metadata (XMP in PNG goes to iTXt)."""
    img = Image.fromarray(pixels)
    fmt = fmt.upper()
    kwargs: dict[str, Any] = {}
    if exif is not None:
        kwargs["exif"] = exif.tobytes() if isinstance(exif, Image.Exif) else exif
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
        if xmp is not None:
            kwargs["xmp"] = xmp.encode("utf-8")
        if comment is not None and fmt == "JPEG":
            kwargs["comment"] = comment.encode("utf-8")
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (png_text or {}).items():
            info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
        if xmp is not None:
            info.add_itxt("XML:com.adobe.xmp", xmp)
        kwargs["pnginfo"] = info
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


# --- EXIF ---------------------------------------------------------------------------------


def user_comment_exif(text: str) -> Image.Exif:
    """EXIF whose UserComment holds ``text`` as A1111 writes it (piexif 'unicode': UTF-16BE)."""
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"UNICODE\x00" + text.encode(
        "utf-16-be"
    )
    return exif


def camera_exif(make: str = "Canon", model: str = "Canon EOS 5D Mark IV") -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = make
    exif[ExifTags.Base.Model] = model
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.ExposureTime] = 1 / 250
    sub[ExifTags.Base.FNumber] = 4.0
    sub[ExifTags.Base.ISOSpeedRatings] = 200
    sub[ExifTags.Base.FocalLength] = 50.0
    return exif


def software_exif(software: str) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Software] = software
    return exif


# --- generation parameters ------------------------------------------------------------------


def a1111_parameters(
    prompt: str = "a lighthouse on a cliff at dusk, oil painting",
    negative: str = "blurry, lowres",
    *,
    steps: int = 28,
    sampler: str = "DPM++ 2M Karras",
    cfg: float = 7.0,
    seed: int = 1234567,
    size: tuple[int, int] = (512, 512),
    model_hash: str = "6ce0161689",
    model: str = "v1-5-pruned-emaonly",
    version: str | None = "v1.9.4",
) -> str:
    """The text Stable Diffusion web UI writes into the PNG ``parameters`` chunk."""
    settings = [
        f"Steps: {steps}",
        f"Sampler: {sampler}",
        f"CFG scale: {cfg:g}",
        f"Seed: {seed}",
        f"Size: {size[0]}x{size[1]}",
        f"Model hash: {model_hash}",
        f"Model: {model}",
    ]
    if version:
        settings.append(f"Version: {version}")
    return f"{prompt}\nNegative prompt: {negative}\n" + ", ".join(settings)


def comfyui_chunks(prompt: str = "a red fox in snow", ckpt: str = "sd_xl_base_1.0.safetensors"):
    """ComfyUI's ``prompt`` (API graph) and ``workflow`` (editor graph) PNG chunks."""
    graph = {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 42,
                "steps": 20,
                "cfg": 8,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 1024, "height": 1024, "batch_size": 1},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "text, watermark", "clip": ["4", 1]},
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
        },
    }
    workflow = {
        "last_node_id": 9,
        "last_link_id": 9,
        "nodes": [
            {"id": int(k), "type": v["class_type"], "pos": [0, 0], "size": [300, 100]}
            for k, v in graph.items()
        ],
        "links": [],
        "version": 0.4,
    }
    return {"prompt": json.dumps(graph), "workflow": json.dumps(workflow)}


def invokeai_chunks(prompt: str = "a castle in the clouds") -> dict[str, str]:
    meta = {
        "generation_mode": "txt2img",
        "positive_prompt": prompt,
        "negative_prompt": "",
        "width": 512,
        "height": 512,
        "seed": 3913567,
        "cfg_scale": 7.5,
        "steps": 30,
        "scheduler": "euler",
        "model": {"name": "stable-diffusion-v1-5", "base": "sd-1", "type": "main"},
        "app_version": "4.2.0",
    }
    return {"invokeai_metadata": json.dumps(meta)}


def novelai_chunks(prompt: str = "1girl, cherry blossoms") -> dict[str, str]:
    comment = {
        "prompt": prompt,
        "steps": 28,
        "height": 1216,
        "width": 832,
        "scale": 5.0,
        "seed": 2716359131,
        "sampler": "k_euler_ancestral",
        "uc": "lowres",
    }
    return {
        "Title": "AI generated image",
        "Description": prompt,
        "Software": "NovelAI",
        "Source": "NovelAI Diffusion V3 7BCCAA2C",
        "Comment": json.dumps(comment),
    }


def swarmui_parameters(prompt: str = "a bowl of ramen, studio photo") -> str:
    params = {
        "prompt": prompt,
        "negativeprompt": "",
        "model": "flux1-dev",
        "seed": 1770431926,
        "steps": 20,
        "cfgscale": 1,
        "width": 1024,
        "height": 1024,
        "swarm_version": "0.9.5.2",
    }
    return json.dumps({"sui_image_params": params, "sui_extra_data": {"date": "2025-01-01"}})


def fooocus_parameters(prompt: str = "a snowy mountain village") -> str:
    params = {
        "Prompt": prompt,
        "Negative Prompt": "",
        "Fooocus V2 Expansion": prompt + ", intricate, highly detailed",
        "Styles": "['Fooocus V2', 'Fooocus Enhance']",
        "Performance": "Speed",
        "Resolution": "(1152, 896)",
        "Guidance Scale": 4,
        "Sampler": "dpmpp_2m_sde_gpu",
        "Base Model": "juggernautXL_v8Rundiffusion.safetensors",
        "Seed": 12345,
        "Version": "Fooocus v2.3.1",
    }
    return json.dumps(params)


def easy_diffusion_chunks(prompt: str = "a watercolor of a harbour") -> dict[str, str]:
    return {
        "prompt": prompt,
        "negative_prompt": "",
        "seed": "30560",
        "use_stable_diffusion_model": "sd-v1-4",
        "sampler_name": "euler_a",
        "num_inference_steps": "25",
        "guidance_scale": "7.5",
    }


# --- IPTC / XMP -----------------------------------------------------------------------------


def iptc_xmp(source_type: str, as_attribute: bool = True, creator_tool: str | None = None) -> str:
    """An XMP packet declaring an IPTC DigitalSourceType (code or full URI)."""
    uri = source_type if "/" in source_type else IPTC_DST_PREFIX + source_type
    tool = f' xmp:CreatorTool="{creator_tool}"' if creator_tool else ""
    if as_attribute:
        body = f'<rdf:Description rdf:about=""{tool} Iptc4xmpExt:DigitalSourceType="{uri}"/>'
    else:
        body = (
            f'<rdf:Description rdf:about=""{tool}>'
            f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{uri}"/></rdf:Description>'
        )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
        f"{body}</rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    )


# --- C2PA -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningChain:
    """A throwaway ES256 chain: leaf + root certificates (PEM) and the leaf's PKCS#8 key."""

    cert_chain_pem: bytes
    key_pem: bytes
    root_pem: bytes


def make_signing_chain(common_name: str = "synthdetect test signer") -> SigningChain:
    """An EC P-256 root CA and a leaf certificate that c2pa accepts for signing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "synthdetect tests"),
            ]
        )

    def usage(sign_certs: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=not sign_certs,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=sign_certs,
            crl_sign=sign_certs,
            encipher_only=False,
            decipher_only=False,
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=365)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(name("synthdetect test root"))
        .issuer_name(name("synthdetect test root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), False)
        .sign(root_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(root.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return SigningChain(
        cert_chain_pem=leaf.public_bytes(pem) + root.public_bytes(pem),
        key_pem=leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        root_pem=root.public_bytes(pem),
    )


def c2pa_sign(
    data: bytes,
    mime: str,
    chain: SigningChain,
    source_type: str = "trainedAlgorithmicMedia",
    *,
    tool: str = "synthdetect-fixtures",
    thumbnail: bool = False,
) -> bytes:
    """Embed a signed C2PA manifest whose ``c2pa.created`` action declares ``source_type``."""
    import c2pa

    uri = source_type if "/" in source_type else IPTC_DST_PREFIX + source_type
    action = {"action": "c2pa.created", "softwareAgent": {"name": tool}, "digitalSourceType": uri}
    manifest = {
        "claim_generator_info": [{"name": tool, "version": "1.0"}],
        "title": "image",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}],
    }
    info = c2pa.C2paSignerInfo(
        alg=b"es256", sign_cert=chain.cert_chain_pem, private_key=chain.key_pem, ta_url=None
    )
    settings = c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": thumbnail}}})
    out = io.BytesIO()
    with (
        c2pa.Context(settings) as ctx,
        c2pa.Signer.from_info(info) as signer,
        c2pa.Builder(manifest, context=ctx) as builder,
    ):
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


# --- invisible watermark --------------------------------------------------------------------


def reference_dwtdct():
    """The reference ``dwtDct`` codec (``invisible-watermark``'s ``maxDct`` module), loaded on
    its own: importing it through its package would run the package's ``__init__``, which
    imports the RivaGAN codec and with it torch, for a method not used here."""
    import importlib.util
    import sys

    name = "_imwatermark_maxdct"
    if name not in sys.modules:
        package = importlib.util.find_spec("imwatermark")
        if package is None or not package.submodule_search_locations:
            raise ImportError("pip install invisible-watermark (the provenance extra)")
        path = os.path.join(next(iter(package.submodule_search_locations)), "maxDct.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        sys.modules[name] = module
    return sys.modules[name]


def embed_watermark(pixels: np.ndarray, payload: str, swap_rb: bool = False) -> np.ndarray:
    """Embed a Stable Diffusion payload with the reference encoder (``invisible-watermark``).

    ``swap_rb=True`` mimics pipelines that hand the encoder RGB arrays as if they were BGR.
    """
    bits = list(PAYLOADS[payload].bits)
    encoder = reference_dwtdct().EmbedMaxDct(bits, wmLen=len(bits))
    if swap_rb:
        return encoder.encode(np.ascontiguousarray(pixels))
    bgr = np.ascontiguousarray(pixels[..., ::-1])
    return np.ascontiguousarray(encoder.encode(bgr)[..., ::-1])
