#!/usr/bin/env bash
# Score the last epoch of selection runs that kept an earlier one (the checkpoint rule's cost).
#   scripts/score_last_epoch.sh MIX_MANIFEST [WORK_DIR] CANDIDATE...
# For each finished run WORK_DIR/CANDIDATE (scripts/select_model.sh made it) whose last.pt is a
# later epoch than its best.pt, the last epoch's weights are written into a copy of best.pt
# (so they carry that checkpoint's calibration: the ranking numbers are the last epoch's, the
# thresholds are borrowed), exported and scored exactly as select_model.sh scores a candidate:
# benchmarks/results/selection/last-epoch/<candidate>.json. A run that kept its last epoch has
# nothing to add and is only reported.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/score_last_epoch.sh MIX_MANIFEST [WORK_DIR] CANDIDATE...}
WORK=${2:?usage: scripts/score_last_epoch.sh MIX_MANIFEST [WORK_DIR] CANDIDATE...}
shift 2
[ $# -gt 0 ] || { echo "name at least one candidate" >&2; exit 2; }
RESULTS=${RESULTS:-benchmarks/results/selection/last-epoch}
SD=.venv/bin/synthdetect
PY=.venv/bin/python
HELD=midjourney,flux,flux2,gigagan,stylegan,biggan,vqgan
mkdir -p "$RESULTS"

for name in "$@"; do
  run=$WORK/$name
  out=$WORK/$name-last
  for f in best.pt last.pt; do
    [ -f "$run/checkpoints/$f" ] || { echo "$run/checkpoints/$f is missing: run select_model.sh $name first" >&2; exit 2; }
  done
  # prints "same" when the run kept its last epoch, else writes $out/checkpoints/best.pt
  verdict=$($PY - "$run" "$out" <<'EOF'
import sys
from pathlib import Path

from detector.checkpoint import read_checkpoint, write_checkpoint

run, out = Path(sys.argv[1]), Path(sys.argv[2])
best = read_checkpoint(run / "checkpoints" / "best.pt")
last = read_checkpoint(run / "checkpoints" / "last.pt")
if not best.get("calibration"):
    sys.exit(f"{run}/checkpoints/best.pt has no calibration: the run did not finish")
if best.get("epoch") == last.get("epoch"):
    print("same")
    sys.exit(0)
best["state_dict"] = last["state_dict"]
best["last_epoch_of"] = {"run": str(run), "kept_epoch": best.get("epoch"), "epoch": last.get("epoch")}
best["epoch"] = last.get("epoch")
(out / "checkpoints").mkdir(parents=True, exist_ok=True)
write_checkpoint(out / "checkpoints" / "best.pt", best)
print(f"epoch {last.get('epoch')} (kept {best['last_epoch_of']['kept_epoch']})")
EOF
)
  if [ "$verdict" = same ]; then
    echo "$name kept its last epoch: nothing to score"
    continue
  fi
  echo "$name: scoring the last epoch, $verdict"
  [ -f "$out-onnx/model.onnx" ] || $SD export "$out" --out "$out-onnx" --name "select-$name-last"
  $SD evaluate --generalisation --model "$out-onnx" --data "$DATA" --held-out "$HELD" \
    --holdouts configs/holdouts-wild.yaml --equalise jpeg:90 --out "$RESULTS/$name.json"
done
