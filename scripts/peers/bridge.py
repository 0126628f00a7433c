"""The project's side of the peer benchmarks; runs in the project's environment (.venv).

    yolo-data: write a dataset split as a YOLO folder (image links, label files, data.yaml),
               read by the project's own reader, so a peer trains on exactly the same boxes.
    score:     VOC mAP@0.5 of a peer's detections JSON (from scripts/peers/yolov8n.py predict),
               computed by the same code as ``dl09 evaluate``.
    yolo-epochs: the checkpoints of a YOLO run at given minutes of training.
    onnx-latency: batch-1 milliseconds of an ONNX file in ONNX Runtime, as ``dl09 bench`` times ours.

    .venv/bin/python scripts/peers/bridge.py yolo-data --data voc:../shared/datasets/bccd \
        --splits trainval test --out runs/bench/yolov8n/data
    .venv/bin/python scripts/peers/bridge.py score detections.json --data voc:../shared/datasets/bccd --split test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time

import numpy as np

logger = logging.getLogger("bridge")


def yolo_data(args) -> dict:
    """Write images/SPLIT (links) and labels/SPLIT (class cx cy w h, normalized) and data.yaml."""
    from dl09_keras.data.sources import load_dataset

    written = {}
    class_names = None
    for split in args.splits:
        dataset = load_dataset(args.data, split, class_names)
        class_names = dataset.class_names
        image_dir = os.path.join(args.out, "images", split)
        label_dir = os.path.join(args.out, "labels", split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        boxes_written = 0
        for sample in dataset.samples:
            if sample.path is None:
                raise ValueError(f"Split {split} of {args.data} contains in-memory images: yolo-data needs image files.")
            name = os.path.basename(sample.path)
            link = os.path.join(image_dir, name)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(sample.path), link)
            keep = ~sample.difficult if sample.difficult is not None else np.ones(len(sample.labels), bool)
            lines = []
            for (ymin, xmin, ymax, xmax), label in zip(sample.boxes[keep], sample.labels[keep]):
                lines.append(f"{label} {(xmin + xmax) / 2:.6f} {(ymin + ymax) / 2:.6f} "
                             f"{xmax - xmin:.6f} {ymax - ymin:.6f}")
            with open(os.path.join(label_dir, os.path.splitext(name)[0] + ".txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + ("\n" if lines else ""))
            boxes_written += len(lines)
        written[split] = {"images": len(dataset), "boxes": boxes_written}
    with open(os.path.join(args.out, "data.yaml"), "w", encoding="utf-8") as f:
        f.write(f"path: {os.path.abspath(args.out)}\ntrain: images/{args.splits[0]}\nval: images/{args.splits[-1]}\n")
        f.write("names:\n" + "".join(f"  {i}: {name}\n" for i, name in enumerate(class_names)))
    return {"out": args.out, "class_names": class_names, "splits": written}


def score(args) -> dict:
    """mAP@0.5 of a detections JSON against the ground truth of ``--split``."""
    from dl09_keras.data.sources import load_dataset
    from dl09_keras.evaluation import GroundTruth, mean_average_precision
    from dl09_keras.inference.postprocess import Detections

    with open(args.detections, encoding="utf-8") as f:
        found = json.load(f)["detections"]
    dataset = load_dataset(args.data, args.split)
    index = {name: i for i, name in enumerate(dataset.class_names)}
    detections, ground_truths = [], []
    for sample in dataset.samples:
        name = os.path.basename(sample.path)
        if name not in found:
            raise ValueError(f"{args.detections} has no detections for {name}: "
                             f"predict on the whole {args.split} split.")
        item = found[name]
        unknown = set(item["classes"]) - set(index)
        if unknown:
            raise ValueError(f"{args.detections}: unknown classes {sorted(unknown)} for {name}; "
                             f"{args.data} has {dataset.class_names}.")
        detections.append(Detections(
            boxes=np.asarray(item["boxes"], np.float32).reshape(-1, 4),
            scores=np.asarray(item["scores"], np.float32),
            labels=np.asarray([index[c] for c in item["classes"]], np.int32),
        ))
        ground_truths.append(GroundTruth(sample.boxes, sample.labels, sample.difficult))
    result = mean_average_precision(detections, ground_truths, dataset.class_names)
    return {"detections": args.detections, "map": round(result["map"], 4),
            "ap": {k: round(v, 4) for k, v in result["ap"].items()}}


def yolo_epochs(args) -> dict:
    """Checkpoints of a YOLO run at given training minutes, from its results.csv.

    For each of ``--minutes`` it takes the last epoch finished by then, and it adds the
    run's final checkpoint (last.pt, its last epoch). ``epoch{N}.pt`` contains epoch N + 1.
    """
    import csv

    with open(os.path.join(args.run, "results.csv"), newline="", encoding="utf-8") as f:
        rows = [{key.strip(): value for key, value in row.items()} for row in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{args.run}/results.csv has no epoch: train the YOLO run first.")
    final = int(float(rows[-1]["epoch"]))
    chosen = []
    for minutes in args.minutes:
        done = [row for row in rows if float(row["time"]) <= minutes * 60 + 1]
        if not done:
            continue
        epoch = int(float(done[-1]["epoch"]))
        name = "last.pt" if epoch == final else f"epoch{epoch - 1}.pt"
        chosen.append({"minutes": minutes, "epoch": epoch, "train_seconds": round(float(done[-1]["time"]), 1),
                       "weights": os.path.join(args.run, "weights", name)})
    if not chosen or chosen[-1]["epoch"] != final:
        chosen.append({"minutes": round(float(rows[-1]["time"]) / 60, 2), "epoch": final,
                       "train_seconds": round(float(rows[-1]["time"]), 1),
                       "weights": os.path.join(args.run, "weights", "last.pt")})
    return {"run": args.run, "epochs": final, "checkpoints": chosen}


def onnx_latency(args) -> dict:
    """Median batch-1 milliseconds of ``args.onnx`` in ONNX Runtime on random input."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    feed = {spec.name: np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in spec.shape],
                                                        dtype=np.float32)}
    for _ in range(10):
        session.run(None, feed)
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append(time.perf_counter() - start)
    return {"onnx": args.onnx, "input_shape": list(feed[spec.name].shape), "threads": args.threads,
            "model_ms_median": round(1000 * statistics.median(timings), 3)}


def main():
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("yolo-data")
    data.add_argument("--data", required=True, help="dataset spec, e.g. voc:../shared/datasets/bccd.")
    data.add_argument("--splits", nargs=2, required=True, metavar=("TRAIN", "VAL"))
    data.add_argument("--out", required=True)
    scoring = commands.add_parser("score")
    scoring.add_argument("detections")
    scoring.add_argument("--data", required=True)
    scoring.add_argument("--split", required=True)
    epochs = commands.add_parser("yolo-epochs")
    epochs.add_argument("run", help="the YOLO run folder (contains results.csv and weights/).")
    epochs.add_argument("--minutes", type=float, nargs="+", required=True)
    latency = commands.add_parser("onnx-latency")
    latency.add_argument("onnx")
    latency.add_argument("--threads", type=int, default=2)
    latency.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    command = {"yolo-data": yolo_data, "score": score, "yolo-epochs": yolo_epochs,
               "onnx-latency": onnx_latency}[args.command]
    print(json.dumps(command(args)))


if __name__ == "__main__":
    main()
