"""Parity of the exported models with Keras on real images.

For each runtime the report gives the largest absolute difference from the
Keras model in scores and in box coordinates over the images. It also tells
whether the detections after the shared NMS are the same, which means equal
count and labels in score order and boxes within ``box_match_tolerance``.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from dl09_keras.inference import Detector, open_runtime, postprocess, read_image_bgr
from dl09_keras.run import RunFolder

logger = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4


def _same_detections(a, b, box_tolerance) -> bool:
    if len(a) != len(b) or not np.array_equal(a.labels, b.labels):
        return False
    return bool(len(a) == 0 or np.abs(a.boxes - b.boxes).max() <= box_tolerance)


def parity_images(run: RunFolder, count: int, data: str | None = None, split: str | None = None):
    """Return (names, BGR images) of up to ``count`` images of the run's validation split."""
    from dl09_keras.data import load_dataset

    metadata = run.read_metadata()
    source = data or metadata["data"]["source"]
    split = split or metadata["data"].get("val_split") or metadata["data"]["train_split"]
    dataset = load_dataset(source, split, metadata["class_names"])
    images, names = [], []
    for index, sample in enumerate(dataset.samples[:count]):
        if sample.image is not None:
            import cv2

            images.append(cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
            names.append(f"{source}[{split}]#{index}")
        else:
            images.append(read_image_bgr(sample.path))
            names.append(os.path.basename(sample.path))
    return names, images, f"{source} [{split}]"


def parity_report(run: RunFolder, runtimes, count: int = 10, score_threshold: float = 0.4,
                  box_match_tolerance: float = 1e-3, data=None, split=None) -> dict:
    """Compare each runtime with Keras on ``count`` images and write ``parity.json``.

    Args:
        runtimes: (name, tflite_variant) pairs, e.g. [("onnxruntime", None), ("tflite", "int8")].
        count: number of images. Default 10.
        score_threshold: score threshold of the compared detections. Default 0.4.
        box_match_tolerance: largest box-coordinate difference of "same" detections. Default 1e-3.
    """
    names, images, described = parity_images(run, count, data, split)
    class_names = run.class_names()
    reference = Detector(open_runtime(run.path, "keras"), class_names, score_threshold=score_threshold)
    batches = [reference.preprocess(image) for image in images]
    expected = [reference.runtime(batch) for batch in batches]
    expected_detections = [postprocess(s[0], b[0], score_threshold) for s, b in expected]

    report = {
        "images": described,
        "image_names": names,
        "score_threshold": score_threshold,
        "fp32_tolerance": FP32_TOLERANCE,
        "box_match_tolerance": box_match_tolerance,
        "detections_per_image_keras": [len(d) for d in expected_detections],
        "runtimes": {},
    }
    for name, variant in runtimes:
        key = name if name != "tflite" else f"tflite_{variant}"
        runtime = open_runtime(run.path, name, variant or "fp32")
        score_diff, box_diff, same = 0.0, 0.0, []
        for batch, (ref_scores, ref_boxes), ref_detections in zip(batches, expected, expected_detections):
            scores, boxes = runtime(batch)
            score_diff = max(score_diff, float(np.abs(scores - ref_scores).max()))
            box_diff = max(box_diff, float(np.abs(boxes - ref_boxes).max()))
            same.append(_same_detections(postprocess(scores[0], boxes[0], score_threshold), ref_detections, box_match_tolerance))
        report["runtimes"][key] = {
            "max_abs_diff_scores": score_diff,
            "max_abs_diff_boxes": box_diff,
            "within_fp32_tolerance": max(score_diff, box_diff) <= FP32_TOLERANCE,
            "same_detections_after_nms": all(same),
            "images_with_same_detections": int(sum(same)),
        }
        logger.info("Parity %s: max |diff| scores %.2e, boxes %.2e, same detections on %d/%d images",
                    key, score_diff, box_diff, sum(same), len(same))
    with open(run.file("parity.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return report
