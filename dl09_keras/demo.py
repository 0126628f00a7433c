"""``dl09 demo`` (``make demo``): the whole job on synthetic shapes, with no files needed.

The demo trains an SSD on the shapes dataset until the validation mAP@0.5
reaches 0.9 and evaluates it on the held-out test split. It exports ONNX and
TFLite with a parity report, renders a video of moving shapes, runs
``dl09 detect`` on it headless, and lists every output.
"""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

TARGET_MAP = 0.9
DEMO_TRAINING = [
    "--data", "shapes", "--train-split", "train", "--val-split", "val",
    "--input-size", "256", "--width", "0.5", "--batch-size", "16",
    "--learning-rate", "0.003", "--map-every", "2", "--stop-at-map", str(TARGET_MAP),
]
DEMO_EPOCHS = 40


def write_shapes_video(path: str, frames: int = 90, size: int = 320, seed: int = 7) -> str:
    """Render shapes that move and bounce over a smooth background, as an MP4 at 15 frames/s."""
    import cv2

    from dl09_keras.data.shapes import _background, _draw

    rng = np.random.default_rng(seed)
    background = np.clip(_background(rng, size), 0, 255).astype(np.uint8)
    objects = []
    for class_id in (0, 1, 2):
        side = rng.uniform(0.2, 0.3) * size
        objects.append({
            "class_id": class_id,
            "size": np.array([side, side * (1.0 if class_id == 0 else 1.3)]),
            "position": rng.uniform(0, size - 1.3 * side, 2),
            "velocity": rng.uniform(-4, 4, 2),
            "color": tuple(float(c) for c in rng.uniform(0, 255, 3)),
        })
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 15, (size, size))
    if not writer.isOpened():
        raise ValueError(f"Cannot write video {path}: OpenCV has no MP4 encoder here.")
    for _ in range(frames):
        image = background.astype(np.float32).copy()
        for obj in objects:
            obj["position"] += obj["velocity"]
            for axis in (0, 1):
                if not 0 <= obj["position"][axis] <= size - obj["size"][axis]:
                    obj["velocity"][axis] *= -1
                    obj["position"][axis] = np.clip(obj["position"][axis], 0, size - obj["size"][axis])
            y0, x0 = obj["position"]
            box = (y0, x0, y0 + obj["size"][0], x0 + obj["size"][1])
            _draw(image, obj["class_id"], box, obj["color"], np.random.default_rng(obj["class_id"]))
        rgb = np.clip(image, 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def run_demo(args) -> int:
    """Run every stage; return 0 when the test mAP@0.5 reaches the target, 1 otherwise."""
    from dl09_keras.app import add_detect_arguments, run_detection
    from dl09_keras.evaluate_run import evaluate_run
    from dl09_keras.training import train
    from dl09_keras.training_args import add_training_arguments
    from export.__main__ import main as export_main

    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    run_dir = os.path.join(output, "run")

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    epochs = str(args.epochs or DEMO_EPOCHS)
    train_args = parser.parse_args(DEMO_TRAINING + ["--epochs", epochs, "--run-dir", run_dir, "--overwrite", "--verbose", "2"])
    train(train_args)

    test = evaluate_run(run_dir, "shapes", "test")
    if export_main([run_dir, "--to", "onnx", "tflite"]) != 0:
        return 1

    video = write_shapes_video(os.path.join(output, "shapes.mp4"))
    detect_parser = argparse.ArgumentParser()
    add_detect_arguments(detect_parser)
    annotated = os.path.join(output, "shapes_detected.mp4")
    detect_args = detect_parser.parse_args([run_dir, "--source", video, "--runtime", "onnxruntime",
                                            "--no-show", "--output", annotated])
    if run_detection(detect_args) != 0:
        return 1

    print("\nDemo outputs")
    print(f"  run folder (model.keras, saved_model/, metadata.json, history.csv, logs/): {run_dir}")
    print(f"  exported models: {run_dir}/model.onnx, {run_dir}/model_{{fp32,fp16,int8}}.tflite")
    print(f"  parity report: {run_dir}/parity.json")
    print(f"  evaluation: {run_dir}/evaluation.json")
    print(f"  input video: {video}")
    print(f"  annotated video: {annotated}")
    print(f"  TensorBoard: tensorboard --logdir {run_dir}/logs")
    print(f"Held-out test mAP@0.5: {test['map']:.4f} (target {TARGET_MAP})")
    if test["map"] < TARGET_MAP:
        logger.error("The demo model reached test mAP@0.5 %.4f, below the target %.2f.", test["map"], TARGET_MAP)
        return 1
    return 0
