"""Markdown summary and plots from benchmark result files."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["accuracy_table", "latency_table", "peers_table", "write_report"]


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], text_columns: int) -> list[str]:
    """A Markdown table; the first ``text_columns`` columns left-aligned, numbers right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return [f"| {' | '.join(line)} |" for line in (header, align, *rows)]


def accuracy_table(result: dict) -> str:
    rows = [
        [r["degradation"], r.get("equalise", "none"), r["method"], r["kind"], _f(r["coverage"], 2), _f(r.get("ap")),
         _f(r.get("roc_auc")), _f(r.get("accuracy_at_threshold")),
         _f(r.get("real_accuracy_at_threshold")), _f(r.get("fake_accuracy_at_threshold")),
         _f(r.get("tpr_at_1pct_fpr")), _f(r["ms_per_image"], 1)]
        for r in result["rows"]
    ]  # fmt: skip
    header = ["degradation", "equalise", "method", "kind", "coverage", "AP", "ROC-AUC", "acc@thr",
              "real acc", "fake acc", "TPR@1%FPR", "ms/img"]  # fmt: skip
    title = f"Accuracy on {result['data']} (split {result['split']}, {result['images']} images)"
    return "\n".join([title, "", *_table(header, rows, 4)])


def latency_table(result: dict) -> str:
    def row(r: dict, engine: str, batch) -> list[str]:
        return [engine, r["precision"], str(batch), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2),
                _f(r["items_per_s"], 1)]  # fmt: skip

    rows = [row(r, r["engine"], r["batch"]) for r in result["model_only"]]
    rows += [row(r, f"{r['engine']} (end to end)", "1 image") for r in result["end_to_end"]]
    header = ["engine", "precision", "batch", "p50 ms", "p99 ms", "items/s"]
    return "\n".join(_table(header, rows, 2))


def train_throughput_table(result: dict) -> str:
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["model"], r["amp"], str(r["batch"]), r["error"], "-", "-", "-"])
        else:
            rows.append([r["model"], r["amp"], str(r["batch"]), "", _f(r["step_ms"], 1),
                         _f(r["images_per_s"], 0), _f(r.get("peak_memory_mib"), 0)])  # fmt: skip
    header = ["model", "amp", "batch", "error", "step ms", "images/s", "peak MiB"]
    return "\n".join(_table(header, rows, 4))


def peers_table(result: dict) -> str:
    rows = []
    for name, runs in result["servers"].items():
        if "skipped" in runs:
            rows.append([name, "-", "-", f"skipped: {runs['skipped']}", "", "", ""])
            continue
        for payload, load in runs.items():
            rows += [
                [name, payload, str(r["concurrency"]), _f(r["items_per_s"], 1),
                 _f(r["p50_ms"], 2), _f(r["p99_ms"], 2), str(r["errors"])]
                for r in load
            ]  # fmt: skip
    header = ["server", "payload", "concurrency", "items/s", "p50 ms", "p99 ms", "errors"]
    lines = _table(header, rows, 2)
    ratios = [[k, _f(v, 2)] for k, v in sorted(result["ratios"].items())]
    lines += ["", *_table(["ratio", "value"], ratios, 1)]
    return "\n".join(lines)


_PAYLOADS = {
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


def _subhead(name: str, files: list) -> list[str]:
    """A heading per result file where a kind has several (e.g. GPU runs of different setups)."""
    return [f"### `{name}.json`", ""] if len(files) > 1 else []


def _peers_settings(peers: dict) -> list[str]:
    """How the peers run was set up, and the engine's own ceiling measured in it."""
    lines = []
    if peers.get("engine_args"):
        lines.append(f"Engine settings (both servers): `{' '.join(peers['engine_args'])}`.")
    if "server_processes" in peers:
        lines.append(
            f"Our server ran {peers['server_processes']} process(es) (`serve --processes`), the"
            f" naive server one; the load generator ran {peers['client_processes']} process(es)."
        )
    ceiling = peers.get("engine_ceiling")
    if ceiling:
        lines.append(
            f"The engine alone in process ({ceiling['engine']}): {ceiling['b1_tiles_per_s']:.0f}"
            f" tiles/s one tile per call, {ceiling['max_batch_tiles_per_s']:.0f} at batch"
            f" {ceiling['max_batch']}"
            f" ({ceiling['batching_gain']:.2f}x). No server outruns its engine, so"
            " `tiles_ceiling_vs_naive` bounds our server's throughput ratio to the naive one."
        )
    return [" ".join(lines), ""] if lines else []


def _peers_targets(peers: dict) -> list[str]:
    """The issue's targets beside what this run measured, with the engine's bound."""
    from benchmarks.peers import TARGET_CONCURRENCY, target_status

    rows = []
    for name, op, target, value, met in target_status(peers.get("ratios", {})):
        measured = f"{value:.2f}x"
        ceiling = peers["ratios"].get(f"tiles_ceiling_vs_naive_c{TARGET_CONCURRENCY}")
        if name == "tiles_throughput_vs_naive" and ceiling is not None:
            measured += f" (engine ceiling {ceiling:.2f}x)"
        rows.append([f"`{name}` {op} {target:g}", measured, "yes" if met else "**no**"])
    if not rows:
        return []
    header = [f"target (concurrency {TARGET_CONCURRENCY})", "measured", "met"]
    return [*_table(header, rows, 1), ""]


def _save(fig, path: Path) -> str:
    """Write one figure as PNG, free it, and return its file name for the report."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _plots(
    results: dict[str, dict], every: dict[str, list], accuracy: list[dict], out: Path
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    acc = next((r for r in accuracy if r["split"] == "test"), None) if accuracy else None
    if acc:
        acc = {**acc, "rows": [r for r in acc["rows"] if r.get("equalise", "none") == "none"]}
        grid = list(dict.fromkeys(r["degradation"] for r in acc["rows"]))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for method in dict.fromkeys(r["method"] for r in acc["rows"]):
            ys = [
                next(
                    (
                        r.get("ap")
                        for r in acc["rows"]
                        if r["method"] == method and r["degradation"] == g
                    ),
                    None,
                )
                for g in grid
            ]
            if any(y is not None for y in ys):
                ax.plot(
                    grid, [float("nan") if y is None else y for y in ys], marker="o", label=method
                )
        ax.set_ylabel("AP (over images the method judged)")
        ax.set_title("Robustness: AP under degradations (both classes degraded alike)")
        ax.tick_params(axis="x", rotation=30)
        ax.set_ylim(0.3, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        made.append(_save(fig, out / "robustness.png"))
        rocs = [r for r in acc["rows"] if r["degradation"] == "none" and r.get("roc")]
        if rocs:
            fig, ax = plt.subplots(figsize=(5.5, 5))
            for r in rocs:
                ax.plot(
                    r["roc"]["fpr"],
                    r["roc"]["tpr"],
                    label=f"{r['method']} (AUC {_f(r.get('roc_auc'), 3)}, cov {r['coverage']:.2f})",
                )
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set_xlabel("false positive rate (reals)")
            ax.set_ylabel("true positive rate (generated)")
            ax.set_title("ROC per method (no degradation)")
            ax.legend(fontsize=7)
            made.append(_save(fig, out / "roc.png"))
    lat = results.get("latency")
    if lat:
        fig, ax = plt.subplots(figsize=(6, 4))
        model_only = [r for _, data in every["latency"] for r in data["model_only"]]
        for key in dict.fromkeys((r["engine"], r["precision"]) for r in model_only):
            rows = [r for r in model_only if (r["engine"], r["precision"]) == key]
            ax.plot(
                [r["batch"] for r in rows],
                [r["items_per_s"] for r in rows],
                marker="o",
                label=f"{key[0]} {key[1]}",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (tiles)")
        ax.set_ylabel("tiles / s")
        where = lat["device"].get("gpu") or lat["device"]["cpu"]
        ax.set_title(f"Model throughput vs batch size ({where[:40]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        made.append(_save(fig, out / "latency_vs_batch.png"))
    for file, peers in every.get("peers", []):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, runs in peers["servers"].items():
            for payload, rows in runs.items():
                if isinstance(rows, list):
                    ax.plot(
                        [r["concurrency"] for r in rows],
                        [r["items_per_s"] for r in rows],
                        marker="o",
                        label=f"{name} ({payload})",
                    )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("items / s")
        ax.set_title(
            "Server throughput vs concurrency" + (f" ({file})" if len(every["peers"]) > 1 else "")
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        suffix = f"-{file}" if len(every["peers"]) > 1 else ""
        made.append(_save(fig, out / f"throughput_vs_concurrency{suffix}.png"))
    return made


def memory_table(m: dict) -> str:
    """The full-frame, measured and shipped rules: recall per re-upload, false matches, lookups."""
    rows = []
    rules = [("full frame only", m.get("full_frame_rule")), ("measured", m["measured_rule"]),
             ("shipped", m["shipped_rule"])]  # fmt: skip
    for label, g in rules:
        if g is None:
            continue
        limits = f"{g['max_phash']} / {g['max_dhash']}"
        if g.get("max_phash_window") is not None:
            limits += f", windows {g['max_phash_window']} / {g['max_dhash_window']}"
        recall = " ".join(f"{k} {v:.3f}" for k, v in g["recall"].items())
        rows.append(
            f"| {label} | {limits} | {g['mean_recall']:.3f} | {recall} "
            f"| {g['false_match_images']} ({g['false_match_rate']:.2%}) |"
        )
    lk = m["lookup"]
    return "\n".join(
        [
            f"{m['distinct_images']} distinct images, {m['queries']} re-uploaded per transformation.",
            "",
            "| rule | pHash / dHash limits | mean recall | recall per re-upload | images falsely matched |",
            "|---|---|---:|---|---:|",
            *rows,
            "",
            f"Lookup with {lk.get('hashes_in_index', lk['records']):,} hashes in the index "
            f"({lk['records']:,} records): p50 {lk['p50_ms']:.2f} ms, "
            f"p99 {lk['p99_ms']:.2f} ms; index rebuilt from SQLite in {lk['index_rebuild_s']:.1f} s.",
        ]
    )


def write_report(results_dir: Path, out: Path) -> Path:
    results: dict[str, dict] = {}  # the first file of each kind (header, serving, training)
    every: dict[str, list[tuple[str, dict]]] = {}  # accuracy, latency, peers, load: every file
    sources: list[str] = []
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text())
        kind = data.get("benchmark")
        if kind and (kind in ("accuracy", "latency", "peers", "load") or kind not in results):
            results.setdefault(kind, data)
            every.setdefault(kind, []).append((path.stem, data))
            sources.append(
                f"- `{path.name}`: {kind}, commit {data.get('commit')}, {data.get('time')}"
            )
    if not results:
        raise ValueError(f"no benchmark results in {results_dir}")
    accuracy = [data for _, data in every.get("accuracy", [])]
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# Benchmark report", ""]
    env = next(iter(results.values()))
    gpu = f" with {env['device']['gpu']}" if env["device"].get("gpu") else ""
    sections += [
        f"Measured on {env['device']['cpu']} ({env['device']['cores']} cores){gpu}, from:",
        "",
        *sources,
        "",
    ]
    if accuracy:
        sections += ["## Accuracy and robustness", ""]
        for acc in accuracy:
            sections += [accuracy_table(acc), ""]
    if "latency" in results:
        sections += ["## In-process latency", ""]
        for name, lat in every["latency"]:
            sections += [*_subhead(name, every["latency"]), latency_table(lat), ""]
    if "train-throughput" in results:
        sections += [
            "## Training throughput (model ceiling)",
            "",
            results["train-throughput"]["what"] + ".",
            "",
            train_throughput_table(results["train-throughput"]),
            "",
        ]
    if "serving" in results:
        s = results["serving"]
        sections += [
            "## Server vs in-process (same run)",
            "",
            "```json",
            json.dumps(
                {
                    "in_process": s["in_process"],
                    "ratios": s["ratios"],
                    "meets_targets": s["meets_targets"],
                },
                indent=2,
            ),
            "```",
            "",
        ]
    if "peers" in results:
        sections += ["## Server vs peers (same run, same model)", ""]
        for name, peers in every["peers"]:
            sections += [
                *_subhead(name, every["peers"]),
                *_peers_settings(peers),
                *_peers_targets(peers),
                peers_table(peers),
                "",
            ]
    if "load" in results:
        sections += ["## Our server alone under load", ""]
        for name, load in every["load"]:
            sections += [*_subhead(name, every["load"]), load_table(load), ""]
    if "memory" in results:
        sections += ["## Known-image memory", "", memory_table(results["memory"]), ""]
    plots = _plots(results, every, accuracy, out)
    sections += [f"![{p}]({p})" for p in plots]
    path = out / "REPORT.md"
    path.write_text("\n".join(sections) + "\n")
    return path
