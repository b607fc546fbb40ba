#!/usr/bin/env bash
# How the bundled default model is made, start to finish, on a CPU (2 cores: about 75 min,
# most of it training and the probe's features; the times of each step are in the model
# card). Every number in model_cards/efficientnet_lite0_default.md comes from here, from
# scripts/select_model.sh and scripts/experiments/ (how the recipe was chosen) and from
# scripts/lofo_wild.sh (leave-one-family-out).
#   scripts/train_default.sh SOURCES_CSV [MIRROR_DIR] [WORK_DIR]
# SOURCES_CSV: the pinned sources list (../shared/data/wild-sources/sources.csv on developer
# machines); MIRROR_DIR: git mirrors of its repositories and of madebyollin/taesd, one
# <owner>+<name> folder each. Given as "" (or left out), git clones the pinned commits instead
# (online machines only).
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCES=${1:?usage: scripts/train_default.sh SOURCES_CSV [MIRROR_DIR] [WORK_DIR]}
MIRROR=${2:-}
WORK=${3:-runs/default-build}
FROM=()
[ -z "$MIRROR" ] || FROM=(--mirror "$MIRROR")
SD=.venv/bin/synthdetect
RESULTS=benchmarks/results/default-model
mkdir -p "$WORK" "$RESULTS"

# 1. The corpora: the pinned public sources (real photos and real generator outputs; replaces
#    ../shared/data/wild-train, whose files it extracts whole), the project's own generators
#    (without the wild-train pool, which would repeat those files), and one manifest over both.
[ -f "$WORK/corpus-wild/manifest.csv" ] ||
  $SD corpus sources --sources "$SOURCES" "${FROM[@]}" --out "$WORK/corpus-wild"
[ -f "$WORK/corpus-own/manifest.csv" ] ||
  $SD corpus build --size small --no-wild --fakes-per-real 3 "${FROM[@]}" --out "$WORK/corpus-own"
[ -f "$WORK/mix/manifest.csv" ] || $SD corpus merge "$WORK/corpus-own" "$WORK/corpus-wild" --out "$WORK/mix"
# A report: the shipped mix fails it by crop size (the model card's Data section says why).
$SD corpus check-shortcut "$WORK/mix" | tee "$WORK/shortcut.txt" ||
  echo "train_default.sh: the shortcut check failed (see $WORK/shortcut.txt); going on" >&2

# 2. The two members: the fine-tuned detector (the recipe chosen by scripts/select_model.sh,
#    every family in training) and a linear probe on frozen ImageNet features (training/probe.py;
#    C chosen on validation), both on the same training split.
$SD train --config configs/default.yaml data="$WORK/mix/manifest.csv" out="$WORK/default"
rm -rf "$WORK/probe-onnx"  # refitted every time: seconds, once its features are cached
$SD probe --config configs/default.yaml --data "$WORK/mix/manifest.csv" --out "$WORK/probe-onnx" \
  --cache "$WORK/probe-features" --name frozen_lite0_probe

# 3. Export the fine-tuned member (parity-checked), merge both into one graph (their
#    temperature-scaled logits averaged; calibrated on validation; parity-checked against the
#    members; weights stored as float16 to keep the file under 25 MB) and bundle it.
rm -rf "$WORK/finetuned-onnx" "$WORK/onnx"  # remade every time (seconds)
$SD export "$WORK/default" --out "$WORK/finetuned-onnx" --name efficientnet_lite0_finetuned
$SD ensemble "$WORK/finetuned-onnx" "$WORK/probe-onnx" --out "$WORK/onnx" \
  --data "$WORK/mix/manifest.csv" --fp16-storage --name efficientnet_lite0_default
# only a finished, parity-checked model replaces the bundled one
rm -rf detector/assets/models/default
mv "$WORK/onnx" detector/assets/models/default

# 4. Evaluation for the model card: validation sources (what it was chosen and calibrated on),
#    the untouched test split, held-out real photos and generators; as-is and equalised.
M=detector/assets/models/default
$SD evaluate --generalisation --model $M --data "$WORK/mix/manifest.csv" \
  --equalise jpeg:90 --out "$RESULTS/generalisation-val.json"
for split in test heldout-real heldout-generators; do
  $SD evaluate --model $M --data "$WORK/mix/manifest.csv" --split "$split" --equalise jpeg:90 \
    --out "$RESULTS/eval-$split.json"
done
