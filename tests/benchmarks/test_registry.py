"""The benchmark registry: every benchmark is one module; the CLI and the report follow it."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from benchmarks.registry import BENCHMARKS, Benchmark, all_benchmarks, register_benchmark
from benchmarks.report import write_report

pytestmark = pytest.mark.unit

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_every_benchmark_module_registers_and_gets_a_subcommand():
    found = all_benchmarks()
    assert set(found) >= {"accuracy", "latency", "load", "memory", "peers", "serving", "quick",
                          "compare", "metadata-set", "train-throughput"}  # fmt: skip
    from benchmarks.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for name, b in found.items():
        sub = parser.parse_args(
            ["bench", name, "--help"] if False else ["bench", name, *_minimal(name)]
        )
        assert sub.func is b.run
    kinds = [b.kind for b in found.values() if b.kind]
    assert len(kinds) == len(set(kinds)), "one benchmark per result kind"


def _minimal(name: str) -> list[str]:
    """The fewest arguments each subcommand parses with (its required ones)."""
    return {"accuracy": ["--data", "x"], "latency": ["--model", "x"], "memory": ["--data", "x", "--out", "y"],
            "peers": ["--model", "x"], "serving": ["--model", "x"], "quick": ["--data", "x", "--out", "y"],
            "compare": ["a", "b"], "metadata-set": ["--corpus", "x", "--out", "y"]}.get(name, [])  # fmt: skip


def test_a_name_registers_once():
    b = next(iter(all_benchmarks().values()))
    with pytest.raises(ValueError, match="registered twice"):
        register_benchmark(b)


def test_a_new_benchmark_gets_its_report_section(tmp_path, monkeypatch):
    """A registered benchmark's section and plots appear for result files of its kind."""

    def section(files):
        return ["## Made-up", "", *(f"{name}: {data['value']}" for name, data in files), ""]

    extra = Benchmark("made-up", "test only", lambda p: None, lambda a: 0, kind="made-up",
                      every_file=True, report_order=15, section=section)  # fmt: skip
    monkeypatch.setitem(BENCHMARKS, "made-up", extra)
    shutil.copy(RESULTS / "latency-cpu.json", tmp_path)
    env = '"device": {"cpu": "x", "cores": 2}'
    (tmp_path / "made-a.json").write_text(f'{{"benchmark": "made-up", "value": 1, {env}}}')
    (tmp_path / "made-b.json").write_text(f'{{"benchmark": "made-up", "value": 2, {env}}}')
    text = write_report(tmp_path, tmp_path / "out").read_text()
    assert "## Made-up\n\nmade-a: 1\nmade-b: 2" in text
    assert text.index("## Made-up") < text.index("## In-process latency")  # report_order 15 < 20
