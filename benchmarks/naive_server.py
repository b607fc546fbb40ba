"""The naive peer: one request at a time, no batching, same engine and protocol.

What a first server usually looks like (the standard library's single-threaded HTTP server
around the model). It speaks the tensor model's KServe v2 infer call and ``/v1/score`` (model
only), so the load generator drives it exactly like the real server. Benchmark use only.

    python -m benchmarks.naive_server --model DIR --port 8766
"""

from __future__ import annotations

import argparse
import json
import socket
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np

from detector.engine import load_bundle
from detector.image import ImageError, decode
from detector.preprocess import preprocess
from serving.protocol import HEADER, ProtocolError, encode_response, parse_request


def make_handler(bundle):
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection. With keep-alive, a single-threaded server
        # would serve one client's connection forever and starve the rest.
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            ready = (
                self.path.startswith("/v2/health")
                or self.path == "/v2/models/synthdetect_tiles/ready"
            )
            self._send(200 if ready else 404, b"", {})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                if self.path.startswith("/v2/models/synthdetect_tiles/infer"):
                    hl = self.headers.get(HEADER)
                    req = parse_request(body, int(hl) if hl else None)
                    logits = bundle.engine.run(
                        np.ascontiguousarray(req.inputs["images"], np.float32)
                    )
                    out, headers = encode_response(
                        "synthdetect_tiles", "1", req.id,
                        [("logits", "FP32", logits.reshape(-1, 1), [len(logits), 1])],
                        req.binary_outputs | ({"logits"} if req.binary_all else set()),
                    )  # fmt: skip
                    self._send(200, out, headers)
                elif self.path.startswith("/v1/score"):
                    tiles = preprocess(decode(body).pixels, bundle.preprocess)
                    p = float(
                        bundle.calibration.probability(np.array([bundle.engine.run(tiles).mean()]))[
                            0
                        ]
                    )
                    self._send(
                        200,
                        json.dumps({"probability": p}).encode(),
                        {"Content-Type": "application/json"},
                    )
                else:
                    self._send(404, b'{"error": "not found"}', {"Content-Type": "application/json"})
            except (ProtocolError, ImageError, KeyError) as exc:
                self._send(
                    400,
                    json.dumps({"error": str(exc)}).encode(),
                    {"Content-Type": "application/json"},
                )

    return Handler


class _Server(HTTPServer):
    request_queue_size = 256  # let clients queue instead of being reset: naive, not broken

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see notes: Nagle stalls
        super().server_bind()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--cuda-graphs", action="store_true")
    args = parser.parse_args()
    bundle = load_bundle(
        args.model, device=args.device, precision=args.precision, cuda_graphs=args.cuda_graphs
    )
    bundle.engine.warmup(bundle.preprocess.input_size, 32)  # as our server does before ready
    server = _Server(("127.0.0.1", args.port), make_handler(bundle))
    server.serve_forever()


if __name__ == "__main__":
    main()
