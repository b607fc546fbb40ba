"""The default model card's tables are the committed JSON, not numbers typed by hand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# the card and its appendix (every candidate of the recipe search): one text to search
CARD = "\n".join(
    (ROOT / "model_cards" / name).read_text()
    for name in ("efficientnet_lite0_default.md", "efficientnet_lite0_default-selection.md")
)
RESULTS = ROOT / "benchmarks" / "results"


@pytest.mark.parametrize(
    "report",
    [
        "leave-one-family-out-wild.json",  # the bundled recipe (192 px tiles)
        "v3-tile128/leave-one-family-out-wild.json",  # the recipe before it (128 px tiles)
    ],
)
def test_leave_one_family_out_table_is_rendered_from_the_committed_json(report):
    report = RESULTS / "default-model" / report
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lofo_table.py"), str(report)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    groups = json.loads(report.read_text())["leave_one_out"]["as_is"]["groups"]
    assert len(rows) == 1 + len(groups)  # the header and one row per group
    missing = [row for row in rows if row not in CARD]
    assert not missing, f"the card's table differs from the JSON in: {missing}"
    summary = next(line for line in table.splitlines() if "groups: mean AP" in line)
    # the card wraps its prose: its mean AP and mean ROC-AUC are the JSON's (as-is / equalised)
    prose = " ".join(CARD.split())
    pairs = re.findall(r"\d\.\d{3} / \d\.\d{3}", summary)
    assert len(pairs) == 3  # mean AP, lowest AP, mean ROC-AUC
    count = summary.split(" groups")[0]  # "9 of 9"
    assert f"{count} groups: mean AP {pairs[0]}" in prose
    assert f"mean ROC-AUC {pairs[2]}" in prose


def test_pair_leave_one_family_out_table_is_rendered_from_the_committed_json():
    """The bundled pair's table: the groups whose fine-tuned run has been paired with the probe
    (scripts/experiments/frozen_probe.py --lofo --pair-runs), rendered by lofo_table.py."""
    report = RESULTS / "default-model" / "leave-one-family-out-pair.json"
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lofo_table.py"), str(report)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(json.loads(report.read_text())["pair"]["groups"])
    missing = [row for row in rows if row not in CARD]
    assert not missing, f"the card's pair table differs from the JSON in: {missing}"
    summary = next(line for line in table.splitlines() if "groups paired" in line)
    assert summary in " ".join(CARD.split())


def test_selection_rows_are_the_committed_json():
    """Each candidate row of the selection table: wild validation AP and ROC-AUC, the three
    held-out families' AP and their mean, as-is / equalised, three decimals."""
    rows = {
        "base (the first v3 recipe": "base",
        "**lr 3e-4**": "lr3e-4",
        "lr 1e-4 |": "lr1e-4",
        "6 epochs": "long",
        "no RGB": "no-rgb",
        "patch-level": "patchnet",
        "no self-made fakes (": "wild-only",
        "no self-made fakes at 192 px": "tile192-wild-only",
        "EfficientNet-Lite2": "lite2",
        "more self-made fakes": "more-own",
        "without TAEF2": "no-new-aligned",
        "every generator alike (": "power0",
        "every generator alike, seed 1": "power0-seed1",
        "lr 3e-4 again": "lr3e-4-rerun",
        "lr 3e-4, seed 1": "lr3e-4-seed1",
        "lr 3e-4, seed 2": "lr3e-4-seed2",
        "weight average of three runs": "soup3",
        "weight average of two seeds": "soup-seeds",
        "192 px tiles (": "tile192",
        "192 px tiles, seed 1": "tile192-seed1",
        "192 px tiles, seed 2": "tile192-seed2",
        "192 px tiles, seed 3": "tile192-seed3",
        "+ TAEF2 twins": "base-twins",
        "256 px tiles": "tile256",
        "heavier degradations": "aug-heavy",
        "no blur, no resizing": "aug-light",
        "every generator alike at 192 px (": "tile192-power0",
        "every generator alike at 192 px, seed 1": "tile192-power0-seed1",
        "every generator alike at 192 px, seed 2": "tile192-power0-seed2",
        "every generator alike at 192 px, seed 3": "tile192-power0-seed3",
        "2 epochs instead of 3": "tile192-2ep",
        "5 epochs instead of 3": "tile192-5ep",
        "left-right flips": "flip",
        "LP-FT at 192 px": "lpft",
        "a faster head": "head-lr",
        "weights averaged along the run": "ema",
        "the scene broken up": "shuffle",
        "a random 15% of the Fourier": "freqmask",
        "a boundary around the reals": "tile192-hsc",
        "only evidence of fakeness": "tile192-positive",
        "two tiles of each training image": "tile192-mil2",
        "a linear probe on frozen ImageNet features at 192 px": "probe-head",
        "the probe on every stage's channel statistics too": "probe-stages-head",
        "the probe and `tile192-seed3` in one graph": "ensemble-tile192-seed3-probe",
        "half the fine-tuned weights, half the probe's": "wise-tile192-seed3-0.5",
    }
    lines = CARD.splitlines()
    # the selection table: from its header to the first line that is not a table row
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| candidate | wild val AP"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append(ln)
    table = [ln for ln in table if not ln.startswith("|---")]
    assert len(table) == 1 + len(rows), "a selection row the test does not check, or one missing"
    for prefix, name in rows.items():
        line = next((ln for ln in lines if ln.startswith(f"| {prefix}")), None)
        assert line is not None, f"no selection row for {name}"
        d = json.loads((RESULTS / "selection" / f"{name}.json").read_text())
        a, q = d["as_is"], d["equalised"]
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")][1:7]

        def pair(get, a=a, q=q) -> str:
            return f"{get(a):.3f} / {get(q):.3f}"

        expected = [
            pair(lambda r: r["val"]["pool:wild"]["ap"]),
            pair(lambda r: r["val"]["pool:wild"]["roc_auc"]),
            *(pair(lambda r, g=g: r["held_out"][g]["ap"]) for g in ("flux", "midjourney", "gan")),
            pair(lambda r: r["mean_held_out_ap"]),
        ]
        assert cells == expected, f"{name}: card {cells} != JSON {expected}"
