"""Box formats, IoU and the SSD box encoder.

Convention used everywhere inside the library: a box is normalized
``[ymin, xmin, ymax, xmax]`` with coordinates in [0, 1] relative to the image
height and width, the order of ``tf.image`` and tensorflow-datasets. Readers
convert at the edge (VOC pixels, YOLO centers); drawing converts back to pixels.

The TensorFlow functions run inside the tf.data pipeline and the model graph.
The NumPy functions (suffix ``_np``) serve post-processing and evaluation,
where no graph is needed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

DEFAULT_VARIANCES = (0.1, 0.1, 0.2, 0.2)


def corners_to_centers(boxes):
    """Convert ``[ymin, xmin, ymax, xmax]`` to ``[cy, cx, h, w]``; shape (..., 4)."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack(
        [(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=-1
    )


def centers_to_corners(boxes):
    """Convert ``[cy, cx, h, w]`` to ``[ymin, xmin, ymax, xmax]``; shape (..., 4)."""
    cy, cx, h, w = tf.unstack(boxes, axis=-1)
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def box_area(boxes):
    """Area of corner boxes, shape (..., 4) to (...); negative extents count as 0."""
    height = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    width = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return height * width


def iou_matrix(boxes_a, boxes_b):
    """Intersection over union of every pair of corner boxes.

    Args:
        boxes_a: float tensor (N, 4).
        boxes_b: float tensor (M, 4).

    Returns:
        float tensor (N, M). A pair whose union is empty has IoU 0.
    """
    top_left = tf.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = tf.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    extent = tf.maximum(bottom_right - top_left, 0.0)
    intersection = extent[..., 0] * extent[..., 1]
    union = box_area(boxes_a)[:, None] + box_area(boxes_b)[None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)


def encode_boxes(boxes, default_boxes, variances=DEFAULT_VARIANCES):
    """Encode corner boxes as SSD offsets against their default boxes.

    The offsets are ``((cy - dcy) / dh, (cx - dcx) / dw, log(h / dh), log(w / dw))``,
    each divided by its variance.

    Args:
        boxes: matched ground-truth boxes, float tensor (A, 4), corners.
        default_boxes: float tensor (A, 4), corners.
        variances: four scale factors for (cy, cx, h, w); default (0.1, 0.1, 0.2, 0.2).

    Returns:
        float tensor (A, 4) of offsets ``(ty, tx, th, tw)``.
    """
    target = corners_to_centers(boxes)
    anchor = corners_to_centers(default_boxes)
    variances = tf.constant(variances, dtype=target.dtype)
    # A degenerate box would give log(0); the floor keeps the offset finite.
    eps = tf.constant(1e-8, dtype=target.dtype)
    center = (target[..., :2] - anchor[..., :2]) / anchor[..., 2:]
    size = tf.math.log(tf.maximum(target[..., 2:], eps) / anchor[..., 2:])
    return tf.concat([center, size], axis=-1) / variances


def decode_boxes(offsets, default_boxes, variances=DEFAULT_VARIANCES):
    """Invert :func:`encode_boxes`: offsets (..., A, 4) to corner boxes (..., A, 4)."""
    anchor = corners_to_centers(default_boxes)
    offsets = offsets * tf.constant(variances, dtype=offsets.dtype)
    center = offsets[..., :2] * anchor[..., 2:] + anchor[..., :2]
    size = tf.exp(offsets[..., 2:]) * anchor[..., 2:]
    return centers_to_corners(tf.concat([center, size], axis=-1))


def iou_matrix_np(boxes_a: np.ndarray, boxes_b: np.ndarray, dtype=np.float64) -> np.ndarray:
    """NumPy twin of :func:`iou_matrix`: corner boxes (N, 4) and (M, 4) to IoU (N, M).

    ``dtype=np.float32`` halves the memory of large matrices (default float64).
    """
    boxes_a = np.asarray(boxes_a, dtype=dtype).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=dtype).reshape(-1, 4)
    height = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2]) - np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    width = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3]) - np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    np.clip(height, 0, None, out=height)
    np.clip(width, 0, None, out=width)
    intersection = height * width
    area_a = np.clip(boxes_a[:, 2] - boxes_a[:, 0], 0, None) * np.clip(boxes_a[:, 3] - boxes_a[:, 1], 0, None)
    area_b = np.clip(boxes_b[:, 2] - boxes_b[:, 0], 0, None) * np.clip(boxes_b[:, 3] - boxes_b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - intersection
    # An empty union means two empty boxes: IoU 0, as in the TensorFlow version.
    return intersection / np.where(union > 0, union, 1)


def to_pixels_xyxy(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalized corners (N, 4) to pixel ``[x1, y1, x2, y2]`` (N, 4), float."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    return boxes[:, [1, 0, 3, 2]] * scale
