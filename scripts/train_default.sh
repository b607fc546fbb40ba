#!/usr/bin/env bash
# How the bundled default model is made, start to finish (CPU: about 1.5 hours on 2 cores;
# faster on a GPU). Every number in model_cards/efficientnet_lite0_default.md comes from here.
#   scripts/train_default.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/default-build}
CORPUS=$WORK/corpus-small
SD=.venv/bin/synthdetect
mkdir -p "$WORK"

# 1. The small corpus (includes ../shared/data/wild-train when present) and its shortcut check.
[ -f "$CORPUS/manifest.csv" ] || $SD corpus build --size small --out "$CORPUS" --seed 0
$SD corpus check-shortcut "$CORPUS" | tee "$WORK/shortcut.txt"

# 2. The model (the backbone was chosen with scripts/compare_candidates.sh; see the model card).
$SD train --config configs/default.yaml data="$CORPUS/manifest.csv" out="$WORK/lite0-all"

# 3. Export (parity-checked), bundle, and the artifact baseline.
$SD export "$WORK/lite0-all" --out detector/assets/models/default --name efficientnet_lite0_default
$SD train-artifact --data "$CORPUS/manifest.csv" --out detector/assets/models/artifact.json

# 4. Evaluation for the model card.
for split in test heldout-real heldout-generators; do
  $SD evaluate --model detector/assets/models/default --data "$CORPUS/manifest.csv" --split "$split" --out "$WORK/eval-$split.json"
done
$SD evaluate --model detector/assets/models/default --data "$CORPUS/manifest.csv" --split test --degrade jpeg:75 --out "$WORK/eval-test-jpeg75.json"

# 5. Branch ablation and leave-one-generator-out (shorter schedules; see that script).
scripts/ablation_loo.sh "$CORPUS/manifest.csv" "$WORK"
