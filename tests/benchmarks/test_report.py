"""The Markdown report and plots, built from the committed reference results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.report import write_report

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.unit
def test_report_from_the_committed_results_has_every_section_and_plot(tmp_path):
    for name in (
        "accuracy-small-test.json",
        "latency-cpu.json",
        "serving-cpu.json",
        "peers-cpu.json",
    ):
        shutil.copy(RESULTS / name, tmp_path)
    report = write_report(tmp_path, tmp_path / "out")
    text = report.read_text()
    for section in ("## Accuracy and robustness", "## In-process latency",
                    "## Server vs in-process", "## Server vs peers"):  # fmt: skip
        assert section in text
    for name in ("accuracy-small-test.json", "latency-cpu.json", "peers-cpu.json"):
        assert f"- `{name}`: " in text  # each result names its own commit
    assert "The engine alone in process" in text and "tiles_ceiling_vs_naive_c16" in text
    # Every table row has as many cells as its header.
    table: list[int] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line.count("|"))
        elif table:
            assert len(set(table)) == 1, table
            table = []
    for png in (
        "robustness.png",
        "roc.png",
        "latency_vs_batch.png",
        "throughput_vs_concurrency.png",
    ):
        assert (tmp_path / "out" / png).stat().st_size > 10_000
        assert f"![{png}]({png})" in text


@pytest.mark.unit
def test_gpu_report_has_training_throughput_and_names_the_gpu(tmp_path):
    gpu = RESULTS / "gpu-h100"
    for path in gpu.glob("*.json"):
        shutil.copy(path, tmp_path)
    text = write_report(tmp_path, tmp_path / "out").read_text()
    assert "H100" in text.splitlines()[2]
    assert "## Training throughput" in text and "| efficientnet_lite0 | bf16 | 256 |" in text
    assert "torch:cuda:fp16+graphs" in text
    # several latency and peers files: each gets its own table (and peers plot), none is hidden
    for name in ("latency-cuda", "latency-cuda-ort", "peers-cuda", "peers-cuda-8proc"):
        assert f"### `{name}.json`" in text
    assert "onnxruntime:CUDAExecutionProvider" in text
    assert "Our server ran 8 process(es)" in text and "tiles_ceiling_vs_naive_c16" in text
    for name in ("peers-cuda", "peers-cuda-1proc", "peers-cuda-8proc"):
        png = f"throughput_vs_concurrency-{name}.png"
        assert (tmp_path / "out" / png).stat().st_size > 10_000 and f"![{png}]({png})" in text


@pytest.mark.unit
def test_each_file_names_its_machine_and_an_incomplete_file_is_named(tmp_path):
    shutil.copy(RESULTS / "latency-cpu.json", tmp_path)
    other = json.loads((RESULTS / "serving-cpu.json").read_text())
    other["device"] = {"cpu": "Some Other CPU", "cores": 64}
    (tmp_path / "serving-other.json").write_text(json.dumps(other))
    text = write_report(tmp_path, tmp_path / "out").read_text()
    assert "Measured on 2 machines" in text
    assert "- `serving-other.json`: serving, Some Other CPU (64 cores), commit" in text
    (tmp_path / "accuracy-bare.json").write_text(json.dumps({"benchmark": "accuracy", "data": "x"}))
    with pytest.raises(ValueError, match=r"accuracy-bare\.json: not a complete accuracy result"):
        write_report(tmp_path, tmp_path / "out")


@pytest.mark.unit
def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no benchmark results"):
        write_report(tmp_path, tmp_path / "out")


@pytest.mark.unit
def test_target_status_reads_each_target_at_its_concurrency():
    from benchmarks.peers import target_status

    ratios = {
        "tiles_vs_ceiling_c16": 0.95,
        "tiles_vs_ceiling_c4": 0.1,
        "tiles_throughput_vs_pytriton_c16": 1.1,
        "tiles_p50_minus_naive_ms_c1": 0.4,
        "tiles_p99_vs_naive_c1": 1.3,
    }
    assert target_status(ratios) == [
        ("tiles_vs_ceiling_c16", ">=", 0.9, 0.95, True),
        ("tiles_throughput_vs_pytriton_c16", ">=", 1.2, 1.1, False),
        ("tiles_p50_minus_naive_ms_c1", "<=", 1.0, 0.4, True),
        ("tiles_p99_vs_naive_c1", "<=", 1.2, 1.3, False),
    ]
    # a run without the PyTriton peer (GPU runs) is judged on the others alone
    assert "tiles_throughput_vs_pytriton_c16" not in [
        r[0] for r in target_status({"tiles_vs_ceiling_c16": 1.0})
    ]


@pytest.mark.unit
def test_interleaved_peers_run_shows_its_targets_and_rounds(tmp_path):
    shutil.copy(RESULTS / "peers-cpu-interleaved.json", tmp_path)
    text = write_report(tmp_path, tmp_path / "out").read_text()
    # the targets at a glance, read from the interleaved run's own ratios
    ratios = json.loads((RESULTS / "peers-cpu-interleaved.json").read_text())["ratios"]
    ceiling = ratios["tiles_vs_ceiling_c16"]
    assert (
        f"| `tiles_vs_ceiling_c16` >= 0.9 | {ceiling:.2f}x | {'yes' if ceiling >= 0.9 else '**no**'} |"
    ) in text
    p50 = ratios["tiles_p50_minus_naive_ms_c1"]
    assert (
        f"| `tiles_p50_minus_naive_ms_c1` <= 1 | {p50:.2f} ms | {'yes' if p50 <= 1 else '**no**'} |"
    ) in text
    assert "interleaved rounds" in text and "grpc_tiles" in text


@pytest.mark.unit
@pytest.mark.parametrize("folder", ["", "gpu-h100"])
def test_committed_reports_regenerate_identically(folder, tmp_path):
    """REPORT.md is what `bench report` makes of the committed results: rerun it after
    adding a result file."""
    results = RESULTS / folder if folder else RESULTS
    shutil.copytree(results, tmp_path / "results", ignore=shutil.ignore_patterns("*.png", "*.md"))
    made = write_report(tmp_path / "results", tmp_path / "out").read_text()
    assert made == (results / "REPORT.md").read_text()


@pytest.mark.unit
def test_report_names_a_malformed_result_file_and_skips_foreign_json(tmp_path):
    shutil.copy(RESULTS / "latency-cpu.json", tmp_path)
    (tmp_path / "notes.json").write_text(json.dumps([1, 2]))  # JSON, not a result record
    assert "## In-process latency" in write_report(tmp_path, tmp_path / "out").read_text()
    (tmp_path / "broken.json").write_text('{"benchmark": "latency", ')
    with pytest.raises(ValueError, match=r"broken\.json: not a readable JSON file"):
        write_report(tmp_path, tmp_path / "out")
