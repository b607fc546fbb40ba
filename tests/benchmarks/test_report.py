"""The Markdown report and plots, built from the committed reference results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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


def _kept_figures(monkeypatch, module) -> dict:
    """The figures a benchmark's plots save, by file name: (title, y limits, {label: x})."""
    charts: dict = {}
    save = module.save_figure

    def keep(fig, path):
        ax = fig.axes[0]
        lines = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
        charts[path.name] = (ax.get_title(), ax.get_ylim(), lines)
        return save(fig, path)

    monkeypatch.setattr(module, "save_figure", keep)
    return charts


@pytest.mark.unit
def test_latency_plot_is_one_chart_per_file_with_its_machine_and_lines_in_batch_order(
    tmp_path, monkeypatch
):
    """Two latency files were drawn on one chart titled with the first file's machine, each
    engine and precision one zigzag line across both files."""
    import benchmarks.latency as latency

    charts = _kept_figures(monkeypatch, latency)
    lat = json.loads((RESULTS / "latency-cpu.json").read_text())
    cpu = {**lat, "device": {"cpu": "CPU A", "cores": 2},
           "model_only": lat["model_only"][::-1]}  # fmt: skip
    gpu = {**lat, "device": {"cpu": "CPU B", "cores": 16, "gpu": "GPU B"}}
    made = latency._plots([("lat-a", cpu), ("lat-b", gpu)], tmp_path)
    assert made == ["latency_vs_batch-lat-a.png", "latency_vs_batch-lat-b.png"]
    engines = {(r["engine"], r["precision"]) for r in lat["model_only"]}
    for name, machine in zip(made, ("CPU A", "GPU B"), strict=True):
        title, _, lines = charts[name]
        assert machine in title and len(lines) == len(engines)
        assert all(xs == sorted(xs) for xs in lines.values())


@pytest.mark.unit
def test_robustness_plot_shows_an_ap_below_0_3(tmp_path, monkeypatch):
    import benchmarks.accuracy as accuracy

    charts = _kept_figures(monkeypatch, accuracy)
    rows = [{"degradation": d, "equalise": "none", "method": "model", "ap": ap, "coverage": 1.0}
            for d, ap in (("none", 0.95), ("jpeg:30", 0.12))]  # fmt: skip
    accuracy._plots([("acc", {"split": "test", "rows": rows})], tmp_path)
    bottom, top = charts["robustness.png"][1]
    assert bottom <= 0.12 and top >= 1.0


@pytest.mark.unit
def test_coverage_of_a_few_images_is_not_printed_as_none_or_all():
    """A method that judged 1 of 441 images showed coverage 0.00 in REPORT.md."""
    from benchmarks.accuracy import accuracy_table

    rows = [{"degradation": "none", "method": m, "kind": "metadata", "coverage": c,
             "ms_per_image": 0.1} for m, c in (("few", 1 / 441), ("most", 440 / 441),
                                               ("none", 0.0), ("half", 0.5))]  # fmt: skip
    text = accuracy_table({"data": "x.csv", "split": "test", "images": 441, "rows": rows})
    cells = {line.split(" | ")[2]: line.split(" | ")[4] for line in text.splitlines()[4:]}
    assert cells == {"few": "<0.01", "most": ">0.99", "none": "0.00", "half": "0.50"}


@pytest.mark.unit
@pytest.mark.parametrize("kind", [["accuracy"], {"a": 1}, 3, ""])
def test_a_benchmark_field_that_is_not_a_name_is_skipped_and_named(tmp_path, kind):
    """{"benchmark": ["accuracy"]} crashed the report with TypeError: unhashable type."""
    (tmp_path / "x.json").write_text(json.dumps({"benchmark": kind}))
    with pytest.raises(ValueError, match=r"no benchmark results.*`x\.json` \(not a benchmark"):
        write_report(tmp_path, tmp_path / "out")
    shutil.copy(RESULTS / "latency-cpu.json", tmp_path)
    text = write_report(tmp_path, tmp_path / "out").read_text()
    assert "Not in this report: `x.json` (not a benchmark result)." in text


@pytest.mark.unit
def test_only_rendered_files_are_listed_and_nothing_to_render_is_an_error(tmp_path):
    """quick-baseline.json and scan-ray-cpu.json were listed as sources of a report that shows
    neither; a folder of {"benchmark": "foo"} wrote an empty report and exited 0."""
    (tmp_path / "foo.json").write_text(json.dumps({"benchmark": "foo"}))
    cmd = [sys.executable, "-m", "detector.cli", "bench", "report", str(tmp_path),
           "--out", str(tmp_path / "out")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "no benchmark results to report" in run.stderr and "`foo.json` (foo: " in run.stderr
    assert not (tmp_path / "out" / "REPORT.md").exists()
    for name in ("latency-cpu.json", "quick-baseline.json", "scan-ray-cpu.json"):
        shutil.copy(RESULTS / name, tmp_path)
    text = write_report(tmp_path, tmp_path / "out").read_text()
    assert "- `latency-cpu.json`: latency" in text
    assert "- `quick-baseline.json`" not in text and "- `scan-ray-cpu.json`" not in text
    assert (
        "Not in this report: `foo.json` (foo: no report section), `quick-baseline.json` (quick: "
        "no report section), `scan-ray-cpu.json` (scan-ray: no report section)."
    ) in text


@pytest.mark.unit
def test_an_incomplete_file_among_several_of_its_kind_is_named_alone(tmp_path):
    """One bad accuracy file was reported as 'a.json, b.json, c.json: not a complete ...'."""
    for name in ("accuracy-metadata-declared.json", "accuracy-small-test.json"):
        shutil.copy(RESULTS / name, tmp_path)
    bad = json.loads((RESULTS / "accuracy-metadata-stripped.json").read_text())
    del bad["rows"][3]["method"]
    (tmp_path / "accuracy-metadata-stripped.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError) as exc:
        write_report(tmp_path, tmp_path / "out")
    assert str(exc.value) == (
        "accuracy-metadata-stripped.json: not a complete accuracy result (KeyError: 'method')"
    )
    peers = json.loads((RESULTS / "peers-cpu.json").read_text())
    (tmp_path / "accuracy-metadata-stripped.json").unlink()
    shutil.copy(RESULTS / "peers-cpu.json", tmp_path)
    peers["servers"]["naive"]["tiles"][0] = {"concurrency": 1}  # the plots need items_per_s too
    (tmp_path / "peers-other.json").write_text(json.dumps(peers))
    with pytest.raises(ValueError, match=r"^peers-other\.json: not a complete peers result"):
        write_report(tmp_path, tmp_path / "out")


@pytest.mark.unit
def test_a_target_missed_by_less_than_the_last_digit_prints_the_digit():
    """0.8996 against '>= 0.9' rendered '0.90x | **no**'; 1.004 against '<= 1' '1.00 ms'."""
    from benchmarks.peers import _peers_targets

    ratios = {"tiles_vs_ceiling_c16": 0.8996, "tiles_p50_minus_naive_ms_c1": 1.004,
              "tiles_p99_vs_naive_c1": 0.9}  # fmt: skip
    text = "\n".join(_peers_targets({"ratios": ratios}))
    assert "| `tiles_vs_ceiling_c16` >= 0.9 | 0.8996x | **no** |" in text
    assert "| `tiles_p50_minus_naive_ms_c1` <= 1 | 1.004 ms | **no** |" in text
    assert "| `tiles_p99_vs_naive_c1` <= 1.2 | 0.90x | yes |" in text


@pytest.mark.unit
def test_each_file_says_which_model_it_measured_and_whether_it_is_the_bundled_one(tmp_path):
    """The report showed results of models retired since beside today's with nothing to tell
    them apart: each source line names the model its file records (name and sha256, or a
    path alone) and marks the bundled model; a file that records none says so."""
    from detector.bundled import DEFAULT_MODEL

    bundled = json.loads((DEFAULT_MODEL / "model.json").read_text())
    base = json.loads((RESULTS / "accuracy-metadata-declared.json").read_text())
    for name, model in (
        ("a-bundled", {"path": "x", "name": bundled["name"], "onnx_sha256": bundled["onnx_sha256"]}),
        ("b-other", {"path": "y", "name": "older", "onnx_sha256": "ab" * 32}),
        ("d-none", None),
    ):  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps({**base, "model": model}))
    shutil.copy(RESULTS / "peers-cpu.json", tmp_path / "c-path.json")  # a path, as peers recorded
    lines = (write_report(tmp_path, tmp_path / "out")).read_text().splitlines()
    said = {ln.split("`")[1]: ln for ln in lines if ln.startswith("- `")}
    sha = bundled["onnx_sha256"][:12]
    assert said["a-bundled.json"].endswith(f"model {bundled['name']} ({sha}) = the bundled model")
    assert said["b-other.json"].endswith("model older (abababababab)")
    assert said["c-path.json"].endswith("model detector/assets/models/default (no sha256 recorded)")
    assert said["d-none.json"].endswith("model not recorded")
