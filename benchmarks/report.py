"""Markdown summary and plots from benchmark result files.

Each benchmark (``benchmarks.registry``) brings its own section and plots; this module reads
the result files, hands each benchmark the files of its kind, and keeps the helpers they share
(number formatting, Markdown tables, figure saving).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

__all__ = ["distinct_decimals", "save_figure", "subhead", "write_report"]


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def distinct_decimals(a: float, b: float, least: int) -> int:
    """Decimals, at least ``least``, at which two different numbers print differently (up to
    12; numbers equal that far print alike): a value printed equal to the floor or target it
    is judged against must not be reported as below it."""
    digits = least
    while digits < 12 and f"{a:.{digits}f}" == f"{b:.{digits}f}":
        digits += 1
    return digits if f"{a:.{digits}f}" != f"{b:.{digits}f}" else least


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


def _models(data: dict) -> str:
    """Which model a result measured, as far as it records one (the file's own ``model``, or
    its rows'), and whether that is the bundled model: results measured with an earlier model
    stay in the report, but a reader must see that they are not today's."""
    from detector.bundled import DEFAULT_MODEL

    top = data.get("model")  # one model, or a list (bench latency: each model it timed)
    found = top if isinstance(top, list) else [top]
    named: dict[str, str | None] = {}  # label -> sha256
    for m in found:
        if isinstance(m, dict):
            sha = m.get("onnx_sha256") or m.get("sha256")
            named.setdefault(f"{m.get('name')} ({sha[:12] if sha else 'no sha256'})", sha)
        elif isinstance(m, str) and m:
            named.setdefault(f"{m} (no sha256 recorded)", None)
    if not named:
        return "model not recorded"
    try:
        bundled = json.loads((DEFAULT_MODEL / "model.json").read_text()).get("onnx_sha256")
    except (OSError, ValueError):
        bundled = None
    marks = [
        label + (" = the bundled model" if sha and sha == bundled else "")
        for label, sha in named.items()
    ]
    return "model " + "; ".join(marks)


_INCOMPLETE = (KeyError, TypeError, ValueError, IndexError)  # a field missing or mistyped


def _rendered(kind: str, results: list, render, out: Path | None = None) -> list[str]:
    """A benchmark's section (or, given ``out``, its plots); a result file of its kind lacking
    a field is named: on failure each file is rendered alone to find which."""

    def made(files: list, folder: Path | None) -> list[str]:
        return render(files) if folder is None else render(files, folder)

    try:
        return made(results, out)
    except _INCOMPLETE as exc:
        error = exc
    bad: dict[str, Exception] = {}
    for stem, data in results:
        with tempfile.TemporaryDirectory() as scratch:  # not over the report's own plots
            try:
                made([(stem, data)], None if out is None else Path(scratch))
            except _INCOMPLETE as exc:
                bad[stem] = exc
    error = next(iter(bad.values()), error)  # none fails alone: they fail together, all named
    names = ", ".join(f"{stem}.json" for stem in bad or dict(results))
    raise ValueError(f"{names}: not a complete {kind} result ({type(error).__name__}: {error})")


def write_report(results_dir: Path, out: Path) -> Path:
    """REPORT.md and plots in ``out`` from the result files in ``results_dir``: every file of
    a kind whose benchmark has a section or plots (or its first, for a kind shown once); the
    report names the other JSON files as skipped, and with none rendered it is an error."""
    from benchmarks.registry import all_benchmarks

    benchmarks = sorted(
        (b for b in all_benchmarks().values() if b.kind and (b.section or b.plots)),
        key=lambda b: b.report_order,
    )
    shown = {b.kind: b for b in benchmarks}
    files: dict[str, list[tuple[str, dict]]] = {}  # kind -> the files the report uses
    sources: list[str] = []
    skipped: list[str] = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
        kind = data.get("benchmark") if isinstance(data, dict) else None
        if not isinstance(kind, str) or not kind:
            skipped.append(f"`{path.name}` (not a benchmark result)")
        elif kind not in shown:
            skipped.append(f"`{path.name}` ({kind}: no report section)")
        elif kind in files and not shown[kind].every_file:
            skipped.append(f"`{path.name}` ({kind}: the report shows the first file only)")
        else:
            files.setdefault(kind, []).append((path.stem, data))
            sources.append(
                f"- `{path.name}`: {kind}, {_device(data)}, commit {data.get('commit')}, "
                f"{data.get('time')}, {_models(data)}"
            )
    if not files:
        raise ValueError(
            f"no benchmark results to report in {results_dir}"
            + (f" (skipped: {', '.join(skipped)})" if skipped else "")
        )
    out.mkdir(parents=True, exist_ok=True)
    devices = sorted({_device(data) for kind_files in files.values() for _, data in kind_files})
    where = (
        f"Measured on {devices[0]}, from:"
        if len(devices) == 1
        else f"Measured on {len(devices)} machines ({'; '.join(devices)}): each file's below."
    )
    sections = ["# Benchmark report", "", where, "", *sources, ""]
    if skipped:
        sections += [f"Not in this report: {', '.join(skipped)}.", ""]
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
