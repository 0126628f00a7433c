"""SSD matching of ground-truth boxes to default boxes, and the training targets.

Matching follows the SSD paper in two steps. First each ground-truth box takes
the default box with which it has the highest IoU, so every object is matched
at least once, however small it is. Then every other default box whose best IoU
with some ground truth is at least the threshold (0.5) is matched to that
ground truth. Unmatched default boxes are background (class 0).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dl09_keras.boxes import DEFAULT_VARIANCES, encode_boxes, iou_matrix


def match_default_boxes(gt_boxes, gt_labels, default_boxes, iou_threshold=0.5):
    """Assign each default box a ground truth or the background.

    Args:
        gt_boxes: float32 (G, 4) normalized corners; G may be 0.
        gt_labels: int32 (G,) model classes, 1-based (0 is the background).
        default_boxes: float32 (A, 4) normalized corners.
        iou_threshold: IoU at or above which a default box is matched. Default 0.5.

    Returns:
        matched_boxes: float32 (A, 4), the ground-truth box of each default box
            (the default box itself where it is background, so encoding stays finite).
        matched_labels: int32 (A,), the class of each default box, 0 for background.

    When two ground truths share the same best default box, the later one in
    ``gt_boxes`` keeps it and the earlier one is matched by the threshold rule only.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.int32)
    default_boxes = tf.convert_to_tensor(default_boxes, tf.float32)
    num_defaults = tf.shape(default_boxes)[0]

    def background_only():
        return default_boxes, tf.zeros([num_defaults], tf.int32)

    def with_objects():
        iou = iou_matrix(gt_boxes, default_boxes)  # (G, A)

        # Step 2's candidate for every default box: its best ground truth.
        best_gt = tf.argmax(iou, axis=0, output_type=tf.int32)  # (A,)
        best_iou = tf.reduce_max(iou, axis=0)  # (A,)

        # Step 1 overrides: each ground truth claims its best default box.
        num_gt = tf.shape(gt_boxes)[0]
        best_default = tf.argmax(iou, axis=1, output_type=tf.int32)  # (G,)
        best_gt = tf.tensor_scatter_nd_update(best_gt, best_default[:, None], tf.range(num_gt))
        best_iou = tf.tensor_scatter_nd_update(
            best_iou, best_default[:, None], tf.fill([num_gt], 2.0)
        )

        positive = best_iou >= iou_threshold
        labels = tf.where(positive, tf.gather(gt_labels, best_gt), 0)
        boxes = tf.where(positive[:, None], tf.gather(gt_boxes, best_gt), default_boxes)
        return boxes, labels

    return tf.cond(tf.shape(gt_boxes)[0] > 0, with_objects, background_only)


class TargetEncoder:
    """Turn one sample's boxes and labels into the SSD training target.

    The target of an image is a float32 tensor (A, 5): the encoded offsets
    ``(ty, tx, th, tw)`` of each default box, then its class id (0 background,
    ``label + 1`` for dataset label ``label``). Offsets of background boxes are 0.

    Args:
        default_boxes: float32 array (A, 4) from :func:`dl09_keras.anchors.default_boxes`.
        variances: the encoder's variances. Default (0.1, 0.1, 0.2, 0.2).
        iou_threshold: matching threshold. Default 0.5.
    """

    def __init__(self, default_boxes, variances=DEFAULT_VARIANCES, iou_threshold=0.5):
        self.default_boxes = tf.constant(np.asarray(default_boxes, np.float32))
        self.variances = tuple(float(v) for v in variances)
        self.iou_threshold = float(iou_threshold)

    @property
    def num_default_boxes(self) -> int:
        return int(self.default_boxes.shape[0])

    def __call__(self, boxes, labels):
        """Encode dataset boxes (G, 4) and 0-based labels (G,) into a target (A, 5)."""
        matched_boxes, matched_labels = match_default_boxes(
            boxes, tf.cast(labels, tf.int32) + 1, self.default_boxes, self.iou_threshold
        )
        offsets = encode_boxes(matched_boxes, self.default_boxes, self.variances)
        positive = matched_labels > 0
        offsets = tf.where(positive[:, None], offsets, 0.0)
        return tf.concat([offsets, tf.cast(matched_labels, tf.float32)[:, None]], axis=-1)
