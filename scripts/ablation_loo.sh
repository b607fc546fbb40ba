#!/usr/bin/env bash
# The branch ablation and the leave-one-generator-out evaluation behind the model card, on a
# shorter schedule than the default model (CPU time: ~15 min per ablation run at 4 epochs and
# ~10 min per held-out family at 3 epochs on 2 cores). Results land in
# benchmarks/results/default-model/v2/ (committed).
#   scripts/ablation_loo.sh MANIFEST [WORK_DIR]
#   ABLATION_EPOCHS=4 LOO_EPOCHS=3 scripts/ablation_loo.sh runs/corpus-small/manifest.csv
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/ablation_loo.sh MANIFEST [WORK_DIR]}
WORK=${2:-runs}
ABLATION_EPOCHS=${ABLATION_EPOCHS:-4}
LOO_EPOCHS=${LOO_EPOCHS:-3}
RESULTS=benchmarks/results/default-model/v2
SD=.venv/bin/synthdetect

for variant in "rgb:[rgb]" "rgb-res:[rgb, residual]" "all:[rgb, residual, spectrum]" \
  "res-spec:[residual, spectrum]"; do
  name=${variant%%:*}
  branches=${variant#*:}
  $SD train --config configs/v2-small.yaml data="$DATA" out="$WORK/ablation-$name" \
    epochs="$ABLATION_EPOCHS" "branches=$branches"
  $SD evaluate --model "$WORK/ablation-$name" --data "$DATA" --split test \
    --out "$RESULTS/ablation-$name-test.json"
done

$SD evaluate --leave-one-out --config configs/v2-small.yaml --data "$DATA" --model "$WORK/loo" \
  --score-on test epochs="$LOO_EPOCHS" --out "$RESULTS/leave-one-out.json"
