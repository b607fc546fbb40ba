"""Do the selection runs that fit the validation sources best also reach the held-out families?

    .venv/bin/python scripts/selection_tradeoff.py [benchmarks/results/selection] [--view equalised]

Reads every `evaluate --generalisation` report in the folder (the selection runs of
scripts/select_model.sh), prints each run's validation-source ROC-AUC and held-out mean AP,
and the correlation of the two over all runs and over the 192 px runs (the candidates whose
settings in select_model.sh set input_size=192; the model card's "Fit to seen families against
reach to unseen ones"). Reports of another kind are skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

SELECT_SCRIPT = Path(__file__).with_name("select_model.sh")
# a candidate's line in select_model.sh: [name]="key=value ..." (or '...')
_CANDIDATE = re.compile(r"^\s*\[([\w.-]+)\]=([\"'])(.*?)\2", re.M)


def tile_sizes(script: Path = SELECT_SCRIPT) -> dict[str, int]:
    """Candidate name -> the input_size it sets, read from select_model.sh (its one record)."""
    sizes = {}
    for name, _, settings in _CANDIDATE.findall(script.read_text()):
        size = re.search(r"\binput_size=(\d+)", settings)
        if size:
            sizes[name] = int(size.group(1))
    return sizes


def read(folder: Path, view: str) -> list[tuple[str, float, float]]:
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            report = json.loads(path.read_text())
            part = report[view]
            fit, reach = part["val"]["pool:wild"]["roc_auc"], part["mean_held_out_ap"]
        except (KeyError, TypeError, json.JSONDecodeError):
            continue  # not a generalisation report (latency, ensembles, fusion, tile counts)
        if fit is None or reach is None:
            continue  # a model scored without held-out families (the bundled one)
        rows.append((path.stem, float(fit), float(reach)))
    return rows


def correlation(rows: list[tuple[str, float, float]]) -> float:
    if len(rows) < 3:
        return float("nan")
    return float(np.corrcoef([r[1] for r in rows], [r[2] for r in rows])[0, 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="benchmarks/results/selection", type=Path)
    parser.add_argument("--view", choices=("as_is", "equalised"), default="equalised")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"selection_tradeoff: no folder {args.folder}", file=sys.stderr)
        return 2
    rows = read(args.folder, args.view)
    if not rows:
        print(f"selection_tradeoff: no generalisation reports in {args.folder}", file=sys.stderr)
        return 2
    print(f"{'run':24s} {'val-source ROC-AUC':>19s} {'held-out mean AP':>17s}")
    for name, roc, ap in sorted(rows, key=lambda r: -r[1]):
        print(f"{name:24s} {roc:19.3f} {ap:17.3f}")
    size = tile_sizes()
    at192 = [r for r in rows if size.get(r[0]) == 192]
    print(f"correlation, all {len(rows)} runs: {correlation(rows):.2f}")
    print(f"correlation, the {len(at192)} runs at 192 px: {correlation(at192):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
