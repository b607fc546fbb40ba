#!/usr/bin/env bash
# Leave-one-family-out over the real-world families of the pinned sources list: the model
# card's main table. One run of the default recipe per hold-out group of
# configs/holdouts-wild.yaml, trained with the group left out; its fakes (from every split but
# test) are scored against the validation reals, as-is and JPEG-q90 equalised.
# CPU: about 20-30 minutes per group on 2 cores at 128 px tiles, 35-62 at 192 px (no test scoring).
#   scripts/lofo_wild.sh MIX_MANIFEST [WORK_DIR] [KEY=VALUE...] [--groups G,...] [--previous JSON]
# A finished group is not retrained while its run folder is there. With the folders gone (another
# machine), `--groups transformers --previous <the committed JSON>` runs only that group and keeps
# the other rows of the committed report (they must be defined and scored the same way). The
# report is rewritten after every group. A candidate recipe's run writes elsewhere, so that the
# bundled model's report stays as it is:
#   OUT=benchmarks/results/selection/lofo-tile192-power0.json scripts/lofo_wild.sh \
#     runs/mix/manifest.csv runs/lofo-power0 balance_power=0 --groups midjourney
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/lofo_wild.sh MIX_MANIFEST [WORK_DIR] [KEY=VALUE...] [--groups G,...] [--previous JSON]}
WORK=runs/lofo
shift
if [ $# -gt 0 ] && [[ $1 != -* && $1 != *=* ]]; then  # WORK_DIR, when given, comes first
  WORK=$1
  shift
fi
OUT=${OUT:-benchmarks/results/default-model/leave-one-family-out-wild.json}
mkdir -p "$(dirname "$OUT")"
.venv/bin/synthdetect evaluate --leave-one-out --config configs/default.yaml --data "$DATA" \
  --model "$WORK" --holdouts configs/holdouts-wild.yaml --equalise jpeg:90 \
  --out "$OUT" eval_test=false "$@"
