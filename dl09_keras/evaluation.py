"""Mean average precision of detections, Pascal VOC style.

Matching follows the VOC devkit: per class, detections are taken by falling
score; each goes to the ground truth it overlaps most in its image. It is a
true positive when that IoU is at least the threshold (0.5) and the ground truth
is still free, a false positive otherwise. A detection whose best ground truth
is marked difficult counts as neither. AP is the area under the precision-recall
curve after making precision monotonically decreasing (VOC 2010 and later).
The 11-point variant of VOC 2007 and COCO's 101-point variant are available too.

Boxes are normalized ``[ymin, xmin, ymax, xmax]``; any common scale works as
long as detections and ground truths share it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

from dl09_keras.boxes import iou_matrix_np


@dataclasses.dataclass
class GroundTruth:
    """Ground truth of one image: boxes (N, 4), 0-based labels (N,), difficult flags (N,)."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None


def average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "area") -> float:
    """Compute AP from a precision-recall curve ordered by falling score.

    Args:
        recall: (K,) cumulative recall after each detection.
        precision: (K,) cumulative precision after each detection.
        method: "area" (all points, VOC 2010+), "11point" (VOC 2007) or
            "101point" (COCO's interpolation, as pycocotools computes it).
    """
    if method in ("11point", "101point"):
        points = np.linspace(0, 1, 11 if method == "11point" else 101)
        # Interpolated precision at r: the best precision at any recall >= r.
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        positions = np.searchsorted(recall, points, side="left")
        values = [envelope[i] if i < len(envelope) else 0.0 for i in positions]
        return float(np.mean(values))
    if method != "area":
        raise ValueError(f"Unknown AP method {method!r}: choose 'area', '11point' or '101point'.")
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    # The envelope: precision at recall r is the best precision at any recall >= r.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def check_same_images(detections: Sequence, ground_truths: Sequence):
    """Raise ValueError unless there is one entry of detections per entry of ground truth."""
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"Got detections for {len(detections)} images but ground truth for {len(ground_truths)}: "
            "pass one entry of each per image, in the same order."
        )


def match_class(detections, ground_truths, class_id, iou_threshold=0.5):
    """Label one class's detections as true or false positives.

    Returns:
        (scores (K,), is_true_positive (K,) bool, number of non-difficult ground truths),
        detections ignored by the difficult rule left out.
    """
    image_ids, scores, boxes = [], [], []
    for image_id, det in enumerate(detections):
        mask = det.labels == class_id
        image_ids.append(np.full(int(mask.sum()), image_id))
        scores.append(det.scores[mask])
        boxes.append(det.boxes[mask].reshape(-1, 4))
    image_ids = np.concatenate(image_ids) if image_ids else np.zeros(0, int)
    scores = np.concatenate(scores) if scores else np.zeros(0)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))

    gt_boxes, gt_difficult, taken = {}, {}, {}
    num_positives = 0
    for image_id, gt in enumerate(ground_truths):
        mask = gt.labels == class_id
        difficult = gt.difficult[mask] if gt.difficult is not None else np.zeros(int(mask.sum()), bool)
        gt_boxes[image_id] = gt.boxes[mask].reshape(-1, 4)
        gt_difficult[image_id] = difficult
        taken[image_id] = np.zeros(int(mask.sum()), bool)
        num_positives += int((~difficult).sum())

    order = np.argsort(-scores, kind="stable")
    kept_scores, true_positive = [], []
    for index in order:
        image_id = image_ids[index]
        candidates = gt_boxes[image_id]
        best_iou, best = 0.0, -1
        if len(candidates):
            overlaps = iou_matrix_np(boxes[index : index + 1], candidates)[0]
            best = int(np.argmax(overlaps))
            best_iou = overlaps[best]
        if best >= 0 and best_iou >= iou_threshold:
            if gt_difficult[image_id][best]:
                continue
            hit = not taken[image_id][best]
            taken[image_id][best] = True
        else:
            hit = False
        kept_scores.append(scores[index])
        true_positive.append(hit)
    return np.array(kept_scores), np.array(true_positive, bool), num_positives


class PrecisionRecall(NamedTuple):
    """Precision-recall curve of one class, one point per counted detection by falling score.

    Fields:
        recall: float64 (K,) cumulative recall after each detection, all zero
            when the class has no (non-difficult) ground truth.
        precision: float64 (K,) cumulative precision after each detection.
        scores: (K,) the detection scores, falling.
        num_ground_truths: the class's ground truths that are not difficult.
    """

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray
    num_ground_truths: int

    def average_precision(self, method: str = "area") -> float:
        """Return the AP of this curve: NaN without ground truth, 0 without detections."""
        if self.num_ground_truths == 0:
            return float("nan")
        if len(self.scores) == 0:
            return 0.0
        return average_precision(self.recall, self.precision, method)


def precision_recall(detections, ground_truths, class_id: int, iou_threshold: float = 0.5) -> PrecisionRecall:
    """Compute the precision-recall curve of one class by the VOC matching of :func:`match_class`.

    Args:
        detections: one :class:`~dl09_keras.inference.postprocess.Detections` per image.
        ground_truths: one :class:`GroundTruth` per image, same order.
        class_id: the 0-based label.
        iou_threshold: IoU at or above which a detection can match. Default 0.5.
    """
    check_same_images(detections, ground_truths)
    scores, hits, num_positives = match_class(detections, ground_truths, class_id, iou_threshold)
    true_positives = np.cumsum(hits)
    false_positives = np.cumsum(~hits)
    recall = true_positives / max(num_positives, 1)
    precision = true_positives / np.maximum(true_positives + false_positives, np.finfo(float).eps)
    return PrecisionRecall(recall, precision, scores, num_positives)


def mean_average_precision(
    detections: Sequence,
    ground_truths: Sequence[GroundTruth],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    method: str = "area",
) -> dict:
    """Compute per-class AP and their mean.

    Args:
        detections: one :class:`~dl09_keras.inference.postprocess.Detections` per image.
        ground_truths: one :class:`GroundTruth` per image, same order.
        class_names: names of the 0-based labels.
        iou_threshold: IoU at or above which a detection can match. Default 0.5.
        method: "area", "11point" or "101point". Default "area".

    Returns:
        ``{"map": float, "ap": {name: float}, "num_ground_truths": {name: int},
        "iou_threshold": float, "method": str}``. A class without ground truth
        has AP NaN and is left out of the mean.
    """
    check_same_images(detections, ground_truths)
    ap, counts = {}, {}
    for class_id, name in enumerate(class_names):
        curve = precision_recall(detections, ground_truths, class_id, iou_threshold)
        counts[name] = curve.num_ground_truths
        ap[name] = curve.average_precision(method)
    valid = [v for v in ap.values() if not np.isnan(v)]
    return {
        "map": float(np.mean(valid)) if valid else float("nan"),
        "ap": ap,
        "num_ground_truths": counts,
        "iou_threshold": iou_threshold,
        "method": method,
    }


def proposal_recall(
    proposals: Sequence[np.ndarray],
    ground_truths: Sequence[GroundTruth],
    counts: Sequence[int] = (100, 300, 1000),
    iou_thresholds: Sequence[float] = (0.5, 0.7),
) -> dict[str, float]:
    """Share of ground-truth boxes covered by an image's top proposals.

    A ground truth counts as recalled at (n, t) when one of the first n
    proposals of its image overlaps it with IoU >= t. Difficult boxes are left out.

    Args:
        proposals: per image, (P, 4) boxes sorted by falling objectness.
        ground_truths: per image, its :class:`GroundTruth`.

    Returns:
        ``{"recall@N_iouT": value}`` for every count and threshold, plus
        ``num_ground_truths``. With no ground truth at all, every recall is nan.
    """
    best = {n: [] for n in counts}
    for boxes, truth in zip(proposals, ground_truths):
        keep = ~np.asarray(truth.difficult, bool) if truth.difficult is not None else np.ones(len(truth.boxes), bool)
        gt_boxes = np.asarray(truth.boxes, np.float64).reshape(-1, 4)[keep]
        if len(gt_boxes) == 0:
            continue
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        for n in counts:
            top = boxes[:n]
            iou = iou_matrix_np(gt_boxes, top) if len(top) else np.zeros((len(gt_boxes), 1))
            best[n].append(iou.max(axis=1))

    total = sum(len(v) for v in best[counts[0]]) if counts else 0
    result = {"num_ground_truths": int(total)}
    for n in counts:
        values = np.concatenate(best[n]) if best[n] else np.zeros(0)
        for t in iou_thresholds:
            result[f"recall@{n}_iou{t}"] = float(np.mean(values >= t)) if len(values) else float("nan")
    return result
