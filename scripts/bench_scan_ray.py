"""images/s of `scan` against `scan --ray` with 1, 2 and 4 model actors, on one machine.

    .venv/bin/python scripts/bench_scan_ray.py MANIFEST OUT.json [--images N]

Links N images of the manifest (evenly spread) into a temporary folder, scans it once with
the plain scan and once per worker count with --ray (a fresh output each time; Ray started by
the scan, as a user would), and records wall time and images/s with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.env import environment
from training.datasets import load_samples


def run(args: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "detector.cli", "scan", *args, "--no-progress"],
                         capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("manifest", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--images", type=int, default=300)
    a = p.parse_args()
    samples = load_samples(a.manifest)
    step = max(1, len(samples) // a.images)
    chosen = samples[::step][: a.images]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        for i, s in enumerate(chosen):
            (tree / f"{i:05d}{s.path.suffix}").symlink_to(s.path.resolve())
        n = len(chosen)
        t = run([str(tree), "--out", f"{tmp}/plain.jsonl"])
        rows.append({"mode": "scan", "workers": None, "seconds": t, "images_per_s": n / t})
        print(rows[-1], flush=True)
        for w in (1, 2, 4):
            t = run([str(tree), "--out", f"{tmp}/ray{w}.jsonl", "--ray", "--ray-workers", str(w)])
            rows.append({"mode": "scan --ray", "workers": w, "seconds": t, "images_per_s": n / t})
            print(rows[-1], flush=True)
    result = {**environment(), "benchmark": "scan-ray", "data": str(a.manifest), "images": n,
              "what": "wall time of the whole command (Ray start-up included), every method",
              "rows": rows}  # fmt: skip
    a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
