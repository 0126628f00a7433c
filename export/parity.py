"""Parity of the exported models with Keras on real images.

For each runtime the report gives the largest absolute difference from the
Keras model in scores and in box coordinates over the images. It also reports
whether the detections after the shared NMS are the same: equal counts, and
each Keras detection overlapped by one of the same label with IoU >= 0.95.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from dl09_keras.boxes import iou_matrix_np
from dl09_keras.inference import Detector, open_runtime, postprocess, read_image_bgr
from dl09_keras.atomic import write_json
from dl09_keras.run import RunFolder

logger = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4


def _match_detections(reference, candidate, min_iou):
    """Count the reference detections that a candidate detection of the same label overlaps by min_iou.

    Each candidate detection matches at most one reference detection, greedily by reference score.
    """
    used = np.zeros(len(candidate), bool)
    matched = 0
    for box, label in zip(reference.boxes, reference.labels):
        options = np.nonzero((candidate.labels == label) & ~used)[0]
        if options.size == 0:
            continue
        overlaps = iou_matrix_np(box[None], candidate.boxes[options])[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= min_iou:
            used[options[best]] = True
            matched += 1
    return matched


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
                  same_iou: float = 0.95, data=None, split=None) -> dict:
    """Compare each runtime with Keras on ``count`` images and write ``parity.json``.

    Box differences are taken after clipping to [0, 1], as the post-processing
    clips. Outside the image an untrained model's boxes can be huge, and their
    large differences change no detection.

    Args:
        runtimes: (name, tflite_variant) pairs, e.g. [("onnxruntime", None), ("tflite", "int8")].
        count: number of images. Default 10.
        score_threshold: score threshold of the compared detections. Default 0.4.
        same_iou: IoU at which two detections of the same label count as the same. Default 0.95.
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
        "same_detection_iou": same_iou,
        "detections_per_image_keras": [len(d) for d in expected_detections],
        "runtimes": {},
    }
    total_expected = sum(len(d) for d in expected_detections)
    if total_expected == 0:
        logger.warning("Keras finds no detection at score %.2f on the parity images, so the detection "
                       "comparison is empty: only the score and box differences are informative.", score_threshold)
    for name, variant in runtimes:
        key = name if name != "tflite" else f"tflite_{variant}"
        runtime = open_runtime(run.path, name, variant or "fp32")
        score_diff, box_diff, same, matched = 0.0, 0.0, [], 0
        for batch, (ref_scores, ref_boxes), ref_detections in zip(batches, expected, expected_detections):
            scores, boxes = runtime(batch)
            score_diff = max(score_diff, float(np.abs(scores - ref_scores).max()))
            box_diff = max(box_diff, float(np.abs(np.clip(boxes, 0, 1) - np.clip(ref_boxes, 0, 1)).max()))
            detections = postprocess(scores[0], boxes[0], score_threshold)
            found = _match_detections(ref_detections, detections, same_iou)
            matched += found
            same.append(found == len(ref_detections) == len(detections))
        entry = {
            "max_abs_diff_scores": score_diff,
            "max_abs_diff_boxes": box_diff,
            "within_fp32_tolerance": max(score_diff, box_diff) <= FP32_TOLERANCE,
            "same_detections_after_nms": all(same),
            "images_with_same_detections": int(sum(same)),
            "keras_detections_matched": f"{matched}/{total_expected}",
        }
        report["runtimes"][key] = entry
        logger.info("Parity %s: max |diff| scores %.2e, boxes %.2e, same detections on %d/%d images, "
                    "%d/%d Keras detections matched at IoU >= %.2f", key, score_diff, box_diff, sum(same),
                    len(same), matched, total_expected, same_iou)
        if variant in (None, "fp32") and not entry["within_fp32_tolerance"]:
            logger.warning("%s differs from Keras by more than %.0e: the exported model does not "
                           "reproduce the Keras model.", key, FP32_TOLERANCE)
    write_json(run.file("parity.json"), report)
    return report
