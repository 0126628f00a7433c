"""Shared post-processing: score threshold, per-class NMS, top-k.

Every runtime's output goes through :func:`postprocess`, so Keras, ONNX Runtime,
OpenCV DNN and LiteRT give detections by the same rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Detections:
    """Detections of one image.

    Args:
        boxes: float32 (N, 4) normalized ``[ymin, xmin, ymax, xmax]``, clipped to [0, 1].
        scores: float32 (N,) class probabilities, highest first.
        labels: int32 (N,) 0-based dataset labels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
        boxes: (N, 4) corner boxes.
        scores: (N,).
        iou_threshold: a box is suppressed when its IoU with a kept,
            higher-scoring box is above this value.

    Returns:
        int64 indices of the kept boxes, highest score first.
    """
    order = np.argsort(-scores, kind="stable")
    boxes = boxes.astype(np.float64)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        extent = np.clip(bottom_right - top_left, 0, None)
        intersection = extent[:, 0] * extent[:, 1]
        union = areas[best] + areas[rest] - intersection
        iou = np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def postprocess(
    scores: np.ndarray,
    boxes: np.ndarray,
    score_threshold: float = 0.4,
    iou_threshold: float = 0.45,
    max_detections: int = 100,
    pre_nms_top_k: int = 400,
) -> Detections:
    """Turn one image's per-default-box scores and boxes into detections.

    Args:
        scores: (A, C + 1) class probabilities, column 0 the background.
        boxes: (A, 4) decoded normalized corners.
        score_threshold: lowest class probability kept. Default 0.4.
        iou_threshold: NMS threshold, applied per class. Default 0.45.
        max_detections: detections kept per image after NMS. Default 100.
        pre_nms_top_k: candidates kept per image before NMS, highest first. Default 400.

    Returns:
        :class:`Detections` with 0-based labels (model class - 1).
    """
    scores = np.asarray(scores, np.float32)
    boxes = np.clip(np.asarray(boxes, np.float32), 0.0, 1.0)
    # Every (default box, class) pair above the threshold is a candidate.
    box_index, class_index = np.nonzero(scores[:, 1:] >= score_threshold)
    candidate_scores = scores[box_index, class_index + 1]
    if candidate_scores.size > pre_nms_top_k:
        top = np.argpartition(-candidate_scores, pre_nms_top_k - 1)[:pre_nms_top_k]
        box_index, class_index, candidate_scores = box_index[top], class_index[top], candidate_scores[top]
    candidate_boxes = boxes[box_index]

    # Per-class NMS in one pass: shifting each class to its own region keeps classes apart.
    shifted = candidate_boxes + 2.0 * class_index[:, None].astype(np.float32)
    keep = nms(shifted, candidate_scores, iou_threshold)[:max_detections]
    return Detections(
        candidate_boxes[keep].astype(np.float32),
        candidate_scores[keep].astype(np.float32),
        class_index[keep].astype(np.int32),
    )
