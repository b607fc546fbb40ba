"""The PyTriton peer: a real Triton server (bundled in nvidia-pytriton) hosting the same ONNX
model through ONNX Runtime, with Triton's dynamic batcher. Runs in its own venv (numpy<2,
see benchmarks/setup_pytriton.sh); imports nothing from synthdetect.

    .venv-pytriton/bin/python benchmarks/pytriton_server.py --model DIR --port 8767
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = parser.parse_args()
    meta = json.loads((Path(args.model) / "model.json").read_text())
    size = meta["preprocess"]["input_size"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads  # the same thread setting as synthdetect's engine
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(Path(args.model) / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": session.run(["logits"], {"images": images.astype(np.float32)})[0]}

    config = TritonConfig(http_port=args.port, grpc_port=args.port + 1, metrics_port=args.port + 2)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="synthdetect_tiles",
            infer_func=infer,
            inputs=[Tensor(name="images", dtype=np.float32, shape=(3, size, size))],
            outputs=[Tensor(name="logits", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
