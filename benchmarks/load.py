"""``synthdetect bench load``: closed-loop load on a running server, or one it starts.

The load generator is ``benchmarks.loadgen``; this module is the command, its result file
(``"benchmark": "load"``) and its report section.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks.registry import Benchmark, Results, fail, register_benchmark, result_file
from benchmarks.report import _f, _table, subhead
from detector.argtypes import positive_float, positive_int, positive_ints

__all__ = ["load_table"]

_PAYLOADS = {
    "score-model": "encoded images to `/v1/score?methods=model`",
    "tiles": "preprocessed tiles to the KServe v2 model `synthdetect_tiles`",
    "bytes": "encoded images as a KServe v2 BYTES tensor",
    "score": "encoded images to `/v1/score` with the server's default methods",
}


def load_table(result: dict) -> str:
    """One `bench load` file: what was served, what was sent, and the rows."""
    what = _PAYLOADS.get(result["payload"], result["payload"])
    server = f"`{result['server']}`" if result.get("server") else "a server not recorded"
    lines = [
        f"Load on {server}: {what}, from {result.get('client_processes', 1)} client process(es).",
        "",
    ]
    rows = [
        [str(r["concurrency"]), _f(r["items_per_s"], 1), _f(r["p50_ms"], 2),
         _f(r["p99_ms"], 2), str(r["errors"])]
        for r in result["rows"]
    ]  # fmt: skip
    lines += _table(["concurrency", "items/s", "p50 ms", "p99 ms", "errors"], rows, 1)
    return "\n".join(lines)


TILES_MODEL = "synthdetect_tiles"


def served_tile_size(url: str) -> int:
    """The tile size the server's tiles model takes, from its KServe metadata (inputs
    ``[-1, 3, H, W]``): tiles of another size would all be refused."""
    import urllib.error
    import urllib.request

    where = f"{url.rstrip('/')}/v2/models/{TILES_MODEL}"
    try:
        with urllib.request.urlopen(where, timeout=10) as reply:
            meta = json.loads(reply.read())
        shape = meta["inputs"][0]["shape"]
        size = int(shape[-1])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(
            f"cannot read the tile size from {where} ({exc}); give --input-size"
        ) from None
    if size <= 0 or int(shape[-2]) != size:
        raise ValueError(f"{where} declares tiles of shape {shape}; give --input-size")
    return size


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--concurrency", type=positive_ints, default=[1, 4, 16, 64])
    p.add_argument("--payload", choices=["tiles", "score", "score-model", "bytes"], default="score")
    p.add_argument(
        "--batch", type=positive_int, default=8, help="tiles per request (tiles payload)"
    )
    p.add_argument(
        "--input-size", type=positive_int,
        help="tile size of the tiles payload (default: the served model's, from its metadata)",
    )  # fmt: skip
    p.add_argument("--seconds", type=positive_float, default=10.0)
    p.add_argument("--requests", type=positive_int, default=100_000)
    p.add_argument(
        "--client-processes", type=positive_int, default=1, help="spread the workers over processes"
    )
    p.add_argument(
        "--server",
        default="",
        help="what serves at --url (e.g. its serve command line), recorded in the results",
    )
    p.add_argument(
        "--serve",
        metavar="ARGS",
        help="start `synthdetect serve ARGS` on a free loopback port, wait until every one of"
        " its processes is up, load it instead of --url, then stop it",
    )
    p.add_argument("--out", type=result_file)


def _run(args: argparse.Namespace) -> int:
    from benchmarks.env import environment
    from benchmarks.loadgen import bytes_payload, run_load, score_payload, tiles_payload
    from benchmarks.serving import benchmark_images

    images = benchmark_images()
    rows = []
    server, url, described = None, args.url, args.server
    try:
        if args.serve is not None:
            server, url = _start_serve(args.serve)
            described = f"synthdetect serve {args.serve}".strip()
            if "--model" not in args.serve:
                described += " (the bundled model)"
        if args.payload == "tiles" and not args.input_size:
            args.input_size = served_tile_size(url)  # recorded with the results
        payload = {
            "tiles": lambda: tiles_payload(TILES_MODEL, args.batch, args.input_size),
            "score": lambda: score_payload(images),
            "score-model": lambda: score_payload(images, "model"),
            "bytes": lambda: bytes_payload("synthdetect", images),
        }[args.payload]()
        for c in args.concurrency:
            res = run_load(
                url,
                payload,
                c,
                requests=args.requests,
                seconds=args.seconds,
                processes=args.client_processes,
            )
            rows.append(res.to_dict())
            print(
                f"c={c:<4} {res.items_per_s:9.1f} items/s  p50 {res.p50_ms:8.2f} ms  p99 {res.p99_ms:8.2f} ms  errors {res.errors}"
            )
    except (ValueError, OSError, RuntimeError) as exc:
        return fail(exc)
    finally:
        if server is not None:
            server.terminate()
            server.wait(120)
    failed = [r for r in rows if r["requests"] == r["errors"]]  # no answer was a success
    if failed:
        row = failed[0]
        print(
            f"synthdetect: no request succeeded at concurrency {row['concurrency']} (sent"
            f" {row['requests']}; status codes {row['status_codes']}, 0 = connection failed);"
            " no results written",
            file=sys.stderr,
        )
        return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    **environment(),
                    "benchmark": "load",
                    "payload": args.payload,
                    **(
                        {"tile_size": args.input_size, "batch": args.batch}
                        if args.payload == "tiles"
                        else {}
                    ),
                    "server": described,
                    "client_processes": args.client_processes,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def _start_serve(arg_line: str) -> tuple[subprocess.Popen, str]:
    """`synthdetect serve ARGS` on a free port (the bundled model unless ARGS name one)."""
    from benchmarks.serving import free_port, start_server
    from detector.bundled import DEFAULT_MODEL

    extra = shlex.split(arg_line)
    if any(a.split("=")[0] in ("--port", "--host") for a in extra):
        raise ValueError("--serve picks a free loopback port itself: leave out --port/--host")
    model = DEFAULT_MODEL
    if "--model" in extra:
        i = extra.index("--model")
        if i + 1 == len(extra):
            raise ValueError("--serve: --model needs a path")
        model = Path(extra[i + 1])
        del extra[i : i + 2]
    port = free_port()
    return start_server(model, port, extra), f"http://127.0.0.1:{port}"


def _section(files: Results) -> list[str]:
    lines = ["## Our server alone under load", ""]
    for name, load in files:
        lines += [*subhead(name, files), load_table(load), ""]
    return lines


register_benchmark(
    Benchmark("load", "closed-loop load on a running server (loopback only)", _arguments, _run, kind="load", every_file=True,
              report_order=60, section=_section)
)  # fmt: skip
