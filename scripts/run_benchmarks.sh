#!/usr/bin/env bash
# The reference benchmark runs committed under benchmarks/results/ (CPU, this machine kind).
#   scripts/run_benchmarks.sh [SMALL_CORPUS_DIR] [RUN_DIR]
# RUN_DIR: a training run of the shipped architecture, timed in torch beside the ONNX rows
# (default: the fine-tuned member scripts/train_default.sh trains).
# Needs the small corpus (make corpus-small) and, for the peers, benchmarks/setup_pytriton.sh;
# perf_analyzer is used when benchmarks/setup_perf_analyzer.sh has been run.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-runs/corpus-small}
RUN=${2:-runs/default-build/default}  # scripts/train_default.sh's fine-tuned run
SD=.venv/bin/synthdetect
OUT=benchmarks/results
MODEL=detector/assets/models/default

$SD bench accuracy --data "$CORPUS/manifest.csv" --degrade default --out $OUT/accuracy-small-test.json
$SD bench metadata-set --corpus "$CORPUS" --out runs/metadata-set
$SD bench accuracy --data runs/metadata-set/manifest.csv --split declared --out $OUT/accuracy-metadata-declared.json
$SD bench accuracy --data runs/metadata-set/manifest.csv --split stripped --out $OUT/accuracy-metadata-stripped.json
# the int8 row: a copy of the bundled model itself (the fp32 row), calibrated on the corpus
rm -rf runs/export-int8
$SD export $MODEL --out runs/export-int8 --int8 --calib-data "$CORPUS/manifest.csv"
$SD bench latency --model $MODEL --int8 runs/export-int8 --checkpoint "$RUN" --batches 1,8,32,128,256 --out $OUT/latency-cpu.json
$SD bench serving --model $MODEL --out $OUT/serving-cpu.json
$SD bench peers --model $MODEL --pytriton-python .venv-pytriton/bin/python --out $OUT/peers-cpu.json
$SD bench peers --model $MODEL --pytriton-python .venv-pytriton/bin/python --server-processes 2 --out $OUT/peers-cpu-2proc.json
$SD bench load --serve "--model $MODEL" --payload score --concurrency 1,4,16 --seconds 8 --out $OUT/score-all-cpu.json
$SD bench report $OUT
