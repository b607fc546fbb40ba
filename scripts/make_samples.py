"""Write the bundled sample images (detector/assets/samples).

The pixels are procedurally drawn (``training.metadata_writers.synthetic_scene``); the metadata is
written the way the named tools write it. The C2PA sample is signed with a throwaway chain whose
key is discarded, so its bytes change on every run; the other files are deterministic.

    python scripts/make_samples.py detector/assets/samples
"""

from __future__ import annotations

import sys
from pathlib import Path

from training import metadata_writers as P


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    chain = P.make_signing_chain("synthdetect sample signer")
    samples = {
        "sd-webui-parameters.png": P.encode(
            P.synthetic_scene(1, 256, 320), "PNG", png_text={"parameters": P.a1111_parameters()}
        ),
        "comfyui-workflow.png": P.encode(
            P.synthetic_scene(2, 256, 320), "PNG", png_text=P.comfyui_chunks()
        ),
        "iptc-trained-algorithmic-media.jpg": P.encode(
            P.synthetic_scene(3, 320, 320), "JPEG", xmp=P.iptc_xmp("trainedAlgorithmicMedia")
        ),
        "c2pa-ai-generated.jpg": P.c2pa_sign(
            P.encode(P.synthetic_scene(4, 320, 320), "JPEG"),
            "image/jpeg",
            chain,
            tool="ExampleGen (synthdetect sample)",
        ),
        "sdxl-invisible-watermark.png": P.encode(
            P.embed_watermark(P.synthetic_scene(5, 256, 320), "sdxl"), "PNG"
        ),
        "no-metadata.jpg": P.encode(P.synthetic_scene(6, 320, 320), "JPEG", quality=90),
    }
    for name, data in samples.items():
        (out / name).write_bytes(data)
        print(f"{out / name}: {len(data)} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "detector/assets/samples"))
