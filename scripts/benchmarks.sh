#!/usr/bin/env bash
# Reproduce the figures of docs/benchmarks.md: train on BCCD and Aquarium, evaluate on their
# test splits, export, check parity, evaluate the int8 model, time every runtime, and time and
# compare the optimizers.
# Usage: SHARED=../shared scripts/benchmarks.sh [bccd|aquarium|runtimes|optimizers|two-stage ...]
# (default: all five)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
BCCD=$SHARED/datasets/bccd
AQUARIUM=$SHARED/datasets/aquarium
OUT=${OUT:-runs/bench}
BIN=.venv/bin
mkdir -p "$OUT"
steps=${*:-bccd aquarium runtimes optimizers two-stage}

timed() {  # timed NAME COMMAND...: run, keep the log, record wall and CPU seconds
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  /usr/bin/time -f "$name wall %e s, user %U s, system %S s, max RSS %M KB" -a -o "$OUT/times.txt" \
    "$@" > "$OUT/$name.log" 2>&1
  tail -n 3 "$OUT/$name.log"
}

for step in $steps; do
  case $step in
  bccd)
    rm -rf "$OUT/bccd"
    timed bccd-train $BIN/python train.py --data "voc:$BCCD" --train-split trainval --val-split test \
      --input-size 288x384 --width 0.5 --neck fpn --neck-channels 64 --epochs 80 --map-every 10 \
      --run-dir "$OUT/bccd" --verbose 2
    timed bccd-evaluate $BIN/dl09 evaluate "$OUT/bccd" --data "voc:$BCCD" --split test
    timed bccd-export $BIN/python -m export "$OUT/bccd" --to onnx tflite
    for variant in fp16 int8; do
      timed "bccd-evaluate-$variant" $BIN/dl09 evaluate "$OUT/bccd" --data "voc:$BCCD" --split test \
        --runtime tflite --tflite-variant "$variant"
    done
    ;;
  aquarium)
    rm -rf "$OUT/aquarium"
    timed aquarium-train $BIN/python train.py --data "yolo:$AQUARIUM" --train-split train --val-split valid \
      --input-size 512x384 --width 0.5 --neck fpn --neck-channels 64 --epochs 100 --map-every 10 --no-zoom-out \
      --run-dir "$OUT/aquarium" --verbose 2
    timed aquarium-evaluate $BIN/dl09 evaluate "$OUT/aquarium" --data "yolo:$AQUARIUM" --split test
    ;;
  runtimes)
    mkdir -p "$OUT/bccd-test-images"
    for name in $(cat "$BCCD/BCCD/ImageSets/Main/test.txt"); do
      cp "$BCCD/BCCD/JPEGImages/$name.jpg" "$OUT/bccd-test-images/"
    done
    timed bench-video $BIN/dl09 bench "$OUT/bccd" --source "$SHARED/videos/box.mp4" --frames 300 \
      --threads 2 --output "$OUT/bench-box.json"
    timed bench-images $BIN/dl09 bench "$OUT/bccd" --source "$OUT/bccd-test-images" --frames 72 \
      --threads 2 --output "$OUT/bench-bccd-test.json"
    for runtime in keras onnxruntime opencv tflite; do
      timed "detect-video-$runtime" $BIN/dl09 detect "$OUT/bccd" --source "$SHARED/videos/box.mp4" \
        --runtime "$runtime" --no-show --output "$OUT/detect-box-$runtime.mp4"
      timed "detect-images-$runtime" $BIN/dl09 detect "$OUT/bccd" --source "$OUT/bccd-test-images" \
        --runtime "$runtime" --no-show --output "$OUT/detect-bccd-$runtime"
    done
    ;;
  optimizers)
    timed optimizers-step-time $BIN/dl09 optimizers step-time --rounds 15 --output "$OUT/optimizer-step-time"
    timed optimizers-compare $BIN/dl09 optimizers compare --output "$OUT/optimizer-comparison"
    ;;
  two-stage)
    rm -rf "$OUT/bccd_rpn" "$OUT/bccd_faster_rcnn"
    timed bccd-rpn-train $BIN/python train.py --model rpn --data "voc:$BCCD" --train-split trainval \
      --val-split test --input-size 288x384 --width 0.5 --epochs 30 --run-dir "$OUT/bccd_rpn" --verbose 2
    timed bccd-rpn-evaluate $BIN/dl09 evaluate "$OUT/bccd_rpn" --data "voc:$BCCD" --split test
    timed bccd-faster-rcnn-train $BIN/python train.py --model faster_rcnn --data "voc:$BCCD" \
      --train-split trainval --val-split test --input-size 288x384 --width 0.5 --feature-stride 8 \
      --neck fpn --neck-channels 64 --epochs 40 --map-every 10 --run-dir "$OUT/bccd_faster_rcnn" --verbose 2
    timed bccd-faster-rcnn-plots $BIN/dl09 evaluate "$OUT/bccd_faster_rcnn" --data "voc:$BCCD" --split test --plots
    mkdir -p "$OUT/bccd-test-images"
    for name in $(cat "$BCCD/BCCD/ImageSets/Main/test.txt"); do
      cp "$BCCD/BCCD/JPEGImages/$name.jpg" "$OUT/bccd-test-images/"
    done
    for run in bccd_rpn bccd_faster_rcnn; do
      # int8 takes about 15 minutes to calibrate here and matches Keras on few images for these models.
      timed "$run-export" $BIN/python -m export "$OUT/$run" --to onnx tflite --tflite-variants fp32 fp16
      timed "$run-bench" $BIN/dl09 bench "$OUT/$run" --source "$OUT/bccd-test-images" --frames 72 \
        --threads 2 --output "$OUT/bench-$run.json"
    done
    ;;
  *) echo "Invalid step $step: choose bccd, aquarium, runtimes, optimizers or two-stage." >&2; exit 2 ;;
  esac
done
echo "Logs and results in $OUT"
