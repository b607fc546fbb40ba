"""``synthdetect bench ...``: every registered benchmark (``benchmarks.registry``), and
``bench report``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    from benchmarks.registry import all_benchmarks

    bench = sub.add_parser(
        "bench", help="benchmarks: accuracy, robustness, latency, load, regression gate"
    )
    bsub = bench.add_subparsers(title="bench commands", metavar="COMMAND")
    bench.set_defaults(func=lambda a: bench.print_help() or 2)
    for b in all_benchmarks().values():
        p = bsub.add_parser(b.name, help=b.help)
        b.arguments(p)
        p.set_defaults(func=b.run)
    r = bsub.add_parser("report", help="Markdown summary and plots from result files")
    r.add_argument("results", type=Path, help="folder of result JSON files")
    r.add_argument("--out", type=Path, help="output folder (default: the results folder)")
    r.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from benchmarks.registry import fail
    from benchmarks.report import write_report

    try:
        path = write_report(args.results, args.out or args.results)
    except (ValueError, FileNotFoundError) as exc:
        return fail(exc)
    print(f"wrote {path}")
    return 0
