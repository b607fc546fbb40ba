"""Markdown summary and plots from benchmark result files.

Each benchmark (``benchmarks.registry``) brings its own section and plots; this module reads
the result files, hands each benchmark the files of its kind, and keeps the helpers they share
(number formatting, Markdown tables, figure saving).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["save_figure", "subhead", "write_report"]


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], text_columns: int) -> list[str]:
    """A Markdown table; the first ``text_columns`` columns left-aligned, numbers right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return [f"| {' | '.join(line)} |" for line in (header, align, *rows)]


def subhead(name: str, files: list) -> list[str]:
    """A heading per result file where a kind has several (e.g. GPU runs of different setups)."""
    return [f"### `{name}.json`", ""] if len(files) > 1 else []


def save_figure(fig, path: Path) -> str:
    """Write one figure as PNG, free it, and return its file name for the report."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _device(data: dict) -> str:
    """Where a result was measured, as its file records it."""
    device = data.get("device") if isinstance(data.get("device"), dict) else {}
    if not device.get("cpu"):
        return "machine not recorded"
    gpu = f" with {device['gpu']}" if device.get("gpu") else ""
    return f"{device['cpu']} ({device.get('cores', '?')} cores){gpu}"


def _rendered(kind: str, results: list, render, *args) -> list[str]:
    """A benchmark's section or plots; a result file of its kind lacking a field is named."""
    try:
        return render(results, *args)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        names = ", ".join(f"{stem}.json" for stem, _ in results)
        raise ValueError(
            f"{names}: not a complete {kind} result ({type(exc).__name__}: {exc})"
        ) from None


def write_report(results_dir: Path, out: Path) -> Path:
    from benchmarks.registry import all_benchmarks

    benchmarks = sorted(
        (b for b in all_benchmarks().values() if b.kind), key=lambda b: b.report_order
    )
    every_file = {b.kind for b in benchmarks if b.every_file}
    files: dict[str, list[tuple[str, dict]]] = {}  # kind -> the files the report uses
    sources: list[str] = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
        if not isinstance(data, dict):
            continue  # a JSON file that is not a result record: not the report's
        kind = data.get("benchmark")
        if kind and (kind in every_file or kind not in files):
            files.setdefault(kind, []).append((path.stem, data))
            sources.append(
                f"- `{path.name}`: {kind}, {_device(data)}, commit {data.get('commit')}, "
                f"{data.get('time')}"
            )
    if not files:
        raise ValueError(f"no benchmark results in {results_dir}")
    out.mkdir(parents=True, exist_ok=True)
    devices = sorted({_device(data) for kind_files in files.values() for _, data in kind_files})
    where = (
        f"Measured on {devices[0]}, from:"
        if len(devices) == 1
        else f"Measured on {len(devices)} machines ({'; '.join(devices)}): each file's below."
    )
    sections = ["# Benchmark report", "", where, "", *sources, ""]
    plots: list[str] = []
    for b in benchmarks:
        if b.kind in files and b.section is not None:
            sections += _rendered(b.kind, files[b.kind], b.section)
    for b in benchmarks:
        if b.kind in files and b.plots is not None:
            plots += _rendered(b.kind, files[b.kind], b.plots, out)
    sections += [f"![{p}]({p})" for p in plots]
    path = out / "REPORT.md"
    path.write_text("\n".join(sections) + "\n")
    return path
