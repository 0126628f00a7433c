"""Ultralytics YOLOv8n as a peer: trained from its model yaml for a fixed number of minutes.

Runs in .venv-peers (made by scripts/peers/setup.sh), never in the project's environment.
Nothing is downloaded: random initial weights from ``yolov8n.yaml``, no plots (they fetch a
font), no AMP check (it fetches weights), ``YOLO_OFFLINE=1`` and a config folder inside
``--out``. The data folder comes from ``scripts/peers/bridge.py yolo-data``, so both detectors
see the same boxes.

    .venv-peers/bin/python scripts/peers/yolov8n.py train --data DIR/data.yaml --minutes 20 --out DIR
    .venv-peers/bin/python scripts/peers/yolov8n.py predict --weights DIR/train/weights/last.pt \
        --images DIR/images/test --output detections.json

``predict`` writes, per image file name, boxes as normalized [ymin, xmin, ymax, xmax], scores
and class names, for ``bridge.py score`` to measure with the project's VOC mAP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _offline(out: str):
    """Keep ultralytics off the network and its settings inside ``out``; call before importing it."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = os.path.abspath(os.path.join(out, "ultralytics-config"))
    os.makedirs(os.environ["YOLO_CONFIG_DIR"], exist_ok=True)


def train(args) -> dict:
    _offline(args.out)
    import torch
    import ultralytics
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    # On a CPU ultralytics sets torch to (cores - 1) threads, one here; --threads overrides it.
    torch_utils.NUM_THREADS = args.threads
    model = YOLO("yolov8n.yaml")
    model.train(
        data=os.path.abspath(args.data), imgsz=args.imgsz, batch=args.batch_size, time=args.minutes / 60,
        epochs=1000, device="cpu", workers=0, pretrained=False, amp=False, plots=False, val=False,
        save_period=1, seed=0, deterministic=False, project=os.path.abspath(args.out), name="train",
        exist_ok=True, verbose=True,
    )
    return {"run": os.path.join(args.out, "train"), "torch_threads": torch.get_num_threads(),
            "ultralytics": ultralytics.__version__, "torch": torch.__version__}


def predict(args) -> dict:
    _offline(os.path.dirname(os.path.abspath(args.output)))
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(args.threads)
    model = YOLO(args.weights)
    names = sorted(f for f in os.listdir(args.images) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    detections = {}
    for name in names:
        # conf and iou are ultralytics' own settings for mAP (its validator's defaults).
        result = model.predict(os.path.join(args.images, name), imgsz=args.imgsz, conf=0.001, iou=0.7,
                               max_det=300, device="cpu", verbose=False)[0]
        xyxyn = result.boxes.xyxyn.numpy()
        detections[name] = {
            "boxes": [[float(b[1]), float(b[0]), float(b[3]), float(b[2])] for b in xyxyn],
            "scores": [float(s) for s in result.boxes.conf.numpy()],
            "classes": [result.names[int(c)] for c in result.boxes.cls.numpy()],
        }
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump({"weights": args.weights, "imgsz": args.imgsz, "detections": detections}, f)
    return {"images": len(names), "output": args.output}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("train", "predict"))
    parser.add_argument("--data", help="data.yaml of the YOLO data folder (train).")
    parser.add_argument("--out", default="runs/bench/yolov8n", help="output folder (train).")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time (train). Default: 20.")
    parser.add_argument("--imgsz", type=int, default=320, help="image size in pixels. Default: 320.")
    parser.add_argument("--batch-size", type=int, default=16, help="Default: 16.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads. Default: 2.")
    parser.add_argument("--weights", help="checkpoint to predict with (predict).")
    parser.add_argument("--images", help="folder of images (predict).")
    parser.add_argument("--output", default="detections.json", help="detections JSON (predict).")
    args = parser.parse_args()
    if args.command == "train" and not args.data:
        sys.exit("train needs --data DIR/data.yaml: make it with scripts/peers/bridge.py yolo-data.")
    if args.command == "predict" and not (args.weights and args.images):
        sys.exit("predict needs --weights FILE.pt and --images FOLDER.")
    print(json.dumps({"train": train, "predict": predict}[args.command](args)))


if __name__ == "__main__":
    main()
