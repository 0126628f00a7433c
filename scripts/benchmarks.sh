#!/usr/bin/env bash
# Reproduce the figures of docs/benchmarks.md: train on BCCD and Aquarium, evaluate on their
# test splits, export, check parity, evaluate the int8 model, time every runtime, time and
# compare the optimizers, measure throughput and the live loop, and measure the peers
# (torchvision SSDlite, ultralytics YOLOv8n) in the same way.
# Usage: SHARED=../shared scripts/benchmarks.sh [STEP ...], STEP one of bccd, aquarium, runtimes,
# optimizers, two-stage, throughput, live, peers, yolo, rcnn, timeline (default: all, in that
# order). live needs bccd's run, and timeline the runs of bccd, two-stage and rcnn. live, peers
# and yolo install torch, torchvision, ultralytics and py-spy in .venv-peers (about 6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
BCCD=$SHARED/datasets/bccd
AQUARIUM=$SHARED/datasets/aquarium
OUT=${OUT:-runs/bench}
BIN=.venv/bin
mkdir -p "$OUT"
steps=${*:-bccd aquarium runtimes optimizers two-stage throughput live peers yolo rcnn timeline}

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
  throughput)
    # Where the time goes: input pipeline, training step, forward pass, against a large matrix product.
    for size in 320 288x384; do
      timed "throughput-$size" $BIN/dl09 throughput --data "voc:$BCCD" --train-split trainval --input-size "$size" \
        --width 0.5 --neck fpn --neck-channels 64 --batch-size 16 --steps 20 --profile "$OUT/profile-$size" \
        --output "$OUT/throughput-$size.json"
    done
    ;;
  live)
    # The loop around the model, with the reader thread and without (--no-prefetch).
    for mode in prefetch no-prefetch; do
      flag=$([ "$mode" = no-prefetch ] && echo --no-prefetch || true)
      timed "live-$mode" $BIN/dl09 bench "$OUT/bccd" --source "$SHARED/videos/box.mp4" --frames 300 \
        --threads 2 $flag --output "$OUT/live-$mode.json"
    done
    # Where the loop's time goes, sampled by py-spy, for ONNX Runtime. py-spy comes with
    # .venv-peers, so this step installs the peers' venv too.
    scripts/peers/setup.sh
    for mode in prefetch no-prefetch; do
      flag=$([ "$mode" = no-prefetch ] && echo --no-prefetch || true)
      timed "live-profile-$mode" .venv-peers/bin/py-spy record --format raw --rate 200 -o "$OUT/live-$mode.pyspy.txt" \
        -- $BIN/dl09 bench "$OUT/bccd" --runtime onnxruntime --source "$SHARED/videos/box.mp4" --frames 300 \
        --threads 2 $flag --output "$OUT/live-profile-$mode.json"
      $BIN/python scripts/peers/stacks.py "$OUT/live-$mode.pyspy.txt" --within bench_one > "$OUT/live-$mode.stacks.json"
    done
    ;;
  peers)
    # torchvision's SSDlite320, in a venv of its own: training images/s and batch-1 latency.
    scripts/peers/setup.sh
    PEERS=.venv-peers/bin/python
    timed ssdlite-train $PEERS scripts/peers/torchvision_ssdlite.py train --batch-size 16 --threads 2
    timed ssdlite-latency $PEERS scripts/peers/torchvision_ssdlite.py latency --threads 2
    timed ssdlite-export $PEERS scripts/peers/torchvision_ssdlite.py export --output "$OUT/ssdlite320.onnx"
    timed ssdlite-onnxruntime $BIN/python scripts/peers/bridge.py onnx-latency "$OUT/ssdlite320.onnx" --threads 2
    ;;
  yolo)
    # Ultralytics YOLOv8n from its yaml, 20 minutes on BCCD trainval, scored on test like ours.
    scripts/peers/setup.sh
    PEERS=.venv-peers/bin/python
    YOLO=$OUT/yolov8n
    rm -rf "$YOLO"
    timed yolo-data $BIN/python scripts/peers/bridge.py yolo-data --data "voc:$BCCD" --splits trainval test \
      --out "$YOLO/data"
    timed yolo-train $PEERS scripts/peers/yolov8n.py train --data "$YOLO/data/data.yaml" --minutes 20 \
      --imgsz 320 --batch-size 16 --threads 2 --out "$YOLO"
    $BIN/python scripts/peers/bridge.py yolo-epochs "$YOLO/train" --minutes 1.5 2.8 4.1 5.5 7 8.4 9.7 11.3 15 20 \
      > "$YOLO/checkpoints.json"
    for weights in $($BIN/python -c "import json,sys; print(' '.join(c['weights'] for c in json.load(open(sys.argv[1]))['checkpoints']))" "$YOLO/checkpoints.json"); do
      name=$(basename "$weights" .pt)
      timed "yolo-predict-$name" $PEERS scripts/peers/yolov8n.py predict --weights "$weights" \
        --images "$YOLO/data/images/test" --imgsz 320 --output "$YOLO/detections-$name.json"
      timed "yolo-score-$name" $BIN/python scripts/peers/bridge.py score "$YOLO/detections-$name.json" \
        --data "voc:$BCCD" --split test
    done
    ;;
  rcnn)
    # The R-CNN baseline: selective search (cached under $OUT/proposal-cache), region CNN, SVMs.
    rm -rf "$OUT/bccd_rcnn"
    timed bccd-rcnn-train $BIN/python train.py --model rcnn --data "voc:$BCCD" --train-split trainval \
      --val-split test --epochs 10 --run-dir "$OUT/bccd_rcnn" --verbose 2
    ;;
  timeline)
    # The README's time line: test mAP@0.5 and seconds per image of R-CNN, Faster R-CNN and SSD,
    # from the runs of the rcnn, two-stage and bccd steps. Detection reads each test image and
    # runs everything, selective search included (no proposal cache), with no window.
    mkdir -p "$OUT/bccd-test-images"
    for name in $(cat "$BCCD/BCCD/ImageSets/Main/test.txt"); do
      cp "$BCCD/BCCD/JPEGImages/$name.jpg" "$OUT/bccd-test-images/"
    done
    for entry in bccd_rcnn:keras bccd_faster_rcnn:onnxruntime bccd:onnxruntime; do
      run=${entry%%:*}; runtime=${entry##*:}
      timed "timeline-evaluate-$run" $BIN/dl09 evaluate "$OUT/$run" --data "voc:$BCCD" --split test
      timed "timeline-detect-$run" $BIN/dl09 detect "$OUT/$run" --source "$OUT/bccd-test-images" \
        --runtime "$runtime" --threads 2 --no-show
    done
    ;;
  *) echo "Invalid step $step: choose bccd, aquarium, runtimes, optimizers, two-stage, throughput, live, peers," \
       "yolo, rcnn or timeline." >&2; exit 2 ;;
  esac
done
echo "Logs and results in $OUT"
