"""Regions of R-CNN: proposals labelled by IoU with the ground truth, and warped to a fixed size.

Boxes are normalized ``[ymin, xmin, ymax, xmax]``; labels are 0-based classes, and
``BACKGROUND`` (-1) marks a region of no class.
"""

from __future__ import annotations

import cv2
import numpy as np

from dl09_keras.boxes import iou_matrix_np

BACKGROUND = -1


def best_matches(proposals: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index (N,) int64 and IoU (N,) float32 of each proposal's best ground-truth box.

    With no ground truth, every index is 0 and every IoU 0.
    """
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return np.zeros(len(proposals), np.int64), np.zeros(len(proposals), np.float32)
    iou = iou_matrix_np(proposals, gt_boxes)
    best = iou.argmax(axis=1)
    return best, iou[np.arange(len(proposals)), best].astype(np.float32)


def label_regions(proposals: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                  foreground_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Label each proposal for the region classifier, as R-CNN fine-tunes its CNN.

    A proposal whose highest IoU with a ground-truth box is at least ``foreground_iou``
    takes that box's class; every other proposal is background.

    Args:
        proposals: (N, 4) boxes.
        gt_boxes: (M, 4) boxes; M may be 0.
        gt_labels: (M,) 0-based classes.
        foreground_iou: IoU threshold of a class label. Default 0.5.

    Returns:
        labels (N,) int32 (class or ``BACKGROUND``) and best IoU (N,) float32.
    """
    best, best_iou = best_matches(proposals, gt_boxes)
    labels = np.full(len(best), BACKGROUND, np.int32)
    foreground = best_iou >= foreground_iou
    labels[foreground] = np.asarray(gt_labels, np.int32)[best[foreground]]
    return labels, best_iou


def svm_negatives(proposals: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, class_id: int,
                  negative_iou: float = 0.3) -> np.ndarray:
    """Boolean mask of the proposals that are negatives for the SVM of ``class_id``.

    A negative overlaps every ground-truth box of that class with IoU below
    ``negative_iou`` (0.3 in R-CNN). Proposals in between are left out of that SVM;
    its positives are the ground-truth boxes themselves.
    """
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    mine = np.asarray(gt_boxes, np.float32).reshape(-1, 4)[np.asarray(gt_labels) == class_id]
    if len(mine) == 0:
        return np.ones(len(proposals), bool)
    return iou_matrix_np(proposals, mine).max(axis=1) < negative_iou


def warp_regions(image_rgb: np.ndarray, boxes: np.ndarray, size: int, context: float = 0.0) -> np.ndarray:
    """Cut each box out of the image and stretch it to ``size`` x ``size`` pixels.

    Args:
        image_rgb: uint8 (H, W, 3).
        boxes: (N, 4) normalized boxes.
        size: side of the warped region in pixels.
        context: border added around each box, as a fraction of its height and width
            (R-CNN pads 16 of 227 pixels, about 0.08). The part outside the image is
            filled with the image's mean colour.

    Returns:
        uint8 (N, size, size, 3).
    """
    height, width = image_rgb.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    fill = image_rgb.reshape(-1, 3).mean(axis=0)
    for i, (ymin, xmin, ymax, xmax) in enumerate(boxes):
        pad_y, pad_x = context * (ymax - ymin), context * (xmax - xmin)
        top, bottom = (ymin - pad_y) * height, (ymax + pad_y) * height
        left, right = (xmin - pad_x) * width, (xmax + pad_x) * width
        # An affine map from the box onto the output square; OpenCV puts pixel centres at
        # whole numbers, hence the half-pixel terms (the whole image maps onto itself).
        scale_x = size / max(right - left, 1e-3)
        scale_y = size / max(bottom - top, 1e-3)
        matrix = np.array([[scale_x, 0, scale_x * (0.5 - left) - 0.5],
                           [0, scale_y, scale_y * (0.5 - top) - 0.5]], np.float32)
        out[i] = cv2.warpAffine(image_rgb, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in fill))
    return out
