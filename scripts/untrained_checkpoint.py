"""An untrained torch checkpoint of the bundled model's fine-tuned network, for timing only.

The bundled model is one ONNX graph (the fine-tuned EfficientNet-Lite0 and the frozen-feature
probe merged); its torch checkpoints are not shipped (weights under 50 MB). Speed does not
depend on the weights, so ``bench latency --checkpoint`` and ``bench peers`` on a GPU may time
this file: the same architecture, tile size and preprocessing, random weights (seed 0), the
bundled calibration, and ``train_config.untrained`` saying so. Made on the machine that times
it (scripts/gpu_session.sh), so nothing large travels.

    python3 scripts/untrained_checkpoint.py OUT.pt [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source tree that was never installed, too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, default=ROOT / "detector/assets/models/default")
    args = parser.parse_args(argv)

    import torch

    from detector.checkpoint import FORMAT, write_checkpoint
    from detector.models import ModelSpec, build_model

    try:
        meta = json.loads((args.model / "model.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"untrained_checkpoint: cannot read {args.model}/model.json: {exc}", file=sys.stderr)
        return 2
    spec = meta["model_spec"]
    if spec.get("name") == "ensemble":  # the fine-tuned member: the one torch network
        spec = next(m for m in spec["members"] if m["name"] != "frozen_lite0_probe")
    torch.manual_seed(0)
    spec = replace(ModelSpec.from_dict(spec), pretrained=None)
    model = build_model(spec).eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(
        args.out,
        {
            "format": FORMAT,
            "model_spec": spec.to_dict(),
            "preprocess": meta["preprocess"],
            "state_dict": model.state_dict(),
            "calibration": meta.get("calibration"),
            "train_config": {"untrained": f"random weights (seed 0) for timing, from {args.model}"},
            "step": 0,
        },
    )
    print(f"{args.out}: untrained {spec.name} at {spec.input_size} px (timing only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
