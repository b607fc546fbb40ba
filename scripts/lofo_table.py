"""The model card's leave-one-family-out table, rendered from the committed JSON.

    .venv/bin/python scripts/lofo_table.py benchmarks/results/default-model/leave-one-family-out-wild.json
    .venv/bin/python scripts/lofo_table.py benchmarks/results/default-model/leave-one-family-out-pair.json

One row per finished hold-out group (as-is / JPEG-q90 equalised), then the mean and the
groups still to run, so the card's numbers are copied from the file and nowhere else. A
report of ``scripts/experiments/frozen_probe.py --lofo --pair-runs`` renders as the bundled
pair's table: each paired group scored by the fine-tuned run, the probe and the two averaged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(result: dict) -> str:
    runs = result["leave_one_out"]
    a = runs["as_is"]
    q = runs.get("equalised", a)  # a run without --equalise: both columns as-is
    as_is, eq = a["groups"], q["groups"]
    lines = [
        "| held-out group (families) | fakes / reals | AP as-is / eq (chance) "
        "| ROC-AUC as-is / eq | fakes flagged | reals flagged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, g in as_is.items():
        e = eq[name]
        out = ", ".join(g["exclude"])
        if g.get("exclude_sources"):  # real photos that left training with the group
            out += f"; with the reals of {', '.join(g['exclude_sources'])}"
        lines.append(
            f"| {name} ({out}) | {g['n_fake']:,} / {g['n_real']:,} "
            f"| {g['ap']:.3f} / {e['ap']:.3f} ({g['chance_ap']:.2f}) "
            f"| {g['roc_auc']:.3f} / {e['roc_auc']:.3f} "
            f"| {_pct(g['fake_accuracy_at_threshold'])} "
            f"| {_pct(1 - g['real_accuracy_at_threshold'])} |"
        )
    lines.append(
        f"\n{len(as_is)} of {len(as_is) + len(result.get('groups_left', []))} groups: mean AP "
        f"{a['mean_ap']:.3f} / {q['mean_ap']:.3f}, lowest {a['min_ap']:.3f} / {q['min_ap']:.3f}, "
        f"mean ROC-AUC {a['mean_roc_auc']:.3f} / {q['mean_roc_auc']:.3f} (as-is / equalised)."
    )
    if result.get("groups_left"):
        lines.append(f"Still to run: {', '.join(result['groups_left'])}.")
    return "\n".join(lines)


MEMBERS = (("fine_tuned", "fine-tuned run"), ("probe", "probe"), ("pair", "pair (bundled)"))


def pair_table(result: dict) -> str:
    pair, probe_rows = result["pair"], result["groups"]
    groups = pair["groups"]
    head = " | ".join(f"{label} AP / ROC-AUC" for _, label in MEMBERS)
    lines = [
        f"| held-out group | fakes / reals (chance AP) | {head} "
        "| fakes above 1% of reals: run / probe / pair | pair AP, probe weight 0.3-0.7 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in groups.items():
        g = probe_rows[name]["equalised"]
        eq = row["equalised"]
        cells = " | ".join(f"{eq[m]['ap']:.3f} / {eq[m]['roc_auc']:.3f}" for m, _ in MEMBERS)
        strict = " / ".join(_pct(eq[m]["tpr_at_1pct_fpr"]) for m, _ in MEMBERS)
        # the pair's AP as the probe's share of the average moves off the equal weights
        weighted = [w["ap"] for w in eq.get("probe_weights", {}).values()] + [eq["pair"]["ap"]]
        lines.append(
            f"| {name} | {g['n_fake']:,} / {g['n_real']:,} ({g['chance_ap']:.2f}) | {cells} "
            f"| {strict} | {min(weighted):.3f}-{max(weighted):.3f} |"
        )
    if groups:
        summary = pair["summary"]
        means = ", ".join(
            f"{label} {summary[m]['as_is']['mean_ap']:.3f} / {summary[m]['equalised']['mean_ap']:.3f}"
            for m, label in MEMBERS
        )
        lines.append(
            f"\n{len(groups)} of {len(probe_rows)} groups paired (equalised in the table): "
            f"mean AP {means} (as-is / equalised)."
        )
    kept = {n: r["probe_here"] for n, r in groups.items() if "probe_here" in r}
    if kept:
        shift = max(
            abs(here[k]["ap"] - groups[n][k]["probe"]["ap"])
            for n, here in kept.items() for k in here
        )  # fmt: skip
        lines.append(
            f"Paired earlier on features computed elsewhere: {', '.join(kept)}; each row "
            f"keeps the probe it was averaged with (refitted here, the probe's AP is within "
            f"{shift:.3f} of it)."
        )
    left = [n for n in probe_rows if n not in groups]
    if left:
        lines.append(f"Still to run: {', '.join(left)}.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: scripts/lofo_table.py LEAVE_ONE_FAMILY_OUT.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        result = json.loads(path.read_text())
        print(pair_table(result) if "pair" in result else table(result))
    except (OSError, ValueError, KeyError) as exc:
        print(f"{path}: not a leave-one-family-out result ({exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
