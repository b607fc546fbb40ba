"""The benchmark registry, like the method, model and generator registries.

A benchmark is one module of this package that calls ``register_benchmark`` with its
command-line options, its runner, the ``benchmark`` value of the result JSON it writes, its
section of ``REPORT.md`` and its plots. ``synthdetect bench`` builds its subcommands from the
registry and ``bench report`` its sections and plots, so adding a benchmark touches one file
(plus its test): the module is found by its ``register_benchmark(`` call.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Results",
    "all_benchmarks",
    "fail",
    "register_benchmark",
    "result_file",
]

# Every result file of one kind, in file-name order: (file stem, parsed JSON).
Results = list[tuple[str, dict]]


@dataclass(frozen=True)
class Benchmark:
    name: str  # the subcommand: synthdetect bench NAME
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # exit status
    kind: str | None = None  # the "benchmark" value of its result JSON (None: writes none)
    every_file: bool = False  # the report shows every result file of the kind (else the first)
    report_order: int = 100  # where its section goes in REPORT.md
    section: Callable[[Results], list[str]] | None = None  # its REPORT.md lines
    plots: Callable[[Results, Path], list[str]] | None = None  # PNGs written, by file name


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def all_benchmarks() -> dict[str, Benchmark]:
    """Import every module of the package that registers a benchmark (found by its source,
    so modules that only help, like the peer servers, are not imported)."""
    package = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda m: m.name):
        path = package / f"{info.name}.py"
        if info.name.startswith("_") or info.name == "registry" or not path.exists():
            continue
        if "register_benchmark(" in path.read_text(encoding="utf-8"):
            importlib.import_module(f"benchmarks.{info.name}")
    return BENCHMARKS


def fail(exc: Exception) -> int:
    """A clear one-line error and exit status 2 (bad input, missing file, failed run)."""
    print(f"synthdetect: {exc}", file=sys.stderr)
    return 2


def result_file(text: str) -> Path:
    """An argparse type for ``--out FILE.json``: checked before the run, not after it (a
    benchmark's minutes are lost when its result cannot be written)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path for the JSON")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folders it would create
        folder = folder.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {folder}")
    return path
