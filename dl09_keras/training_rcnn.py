"""The RPN and Faster R-CNN parts of a training run: model, anchors, targets, loss.

:func:`dl09_keras.training.train` calls :func:`two_stage_recipe` for
``--model rpn`` and ``--model faster_rcnn`` and shares everything else (the
pipeline, callbacks, run folder and resume) with the SSD.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import tensorflow as tf

from dl09_keras.anchors import RPNAnchorConfig, box_scales, match_coverage, rpn_anchors
from dl09_keras.losses import RPNLoss, RPNLossTerms
from dl09_keras.matching import RPNTargetEncoder
from dl09_keras.models.faster_rcnn import FasterRCNNConfig, build_faster_rcnn, build_inference_model
from dl09_keras.training import Recipe

logger = logging.getLogger(__name__)


def choose_anchor_sizes(text: str, train_data) -> RPNAnchorConfig:
    """Return the anchor config of ``--anchor-sizes``: 'auto' or S1,S2,...

    'auto' spaces three sizes geometrically from the 5% to the 95% quantile of
    the training boxes' scales ``sqrt(h * w)`` (normalized), the unit of the sizes.
    """
    if text != "auto":
        try:
            sizes = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"Invalid --anchor-sizes {text!r}: expected 'auto' or sizes such as 0.1,0.2,0.4.") from None
        return RPNAnchorConfig(sizes=sizes)

    boxes = [s.boxes for s in train_data.samples if len(s.boxes)]
    if not boxes:
        raise ValueError("Cannot fit anchor sizes: the training split has no boxes. Pass --anchor-sizes S1,S2,S3.")
    low, high = np.quantile(box_scales(np.concatenate(boxes)), [0.05, 0.95])
    low = max(float(low), 0.02)
    high = max(float(high), low)
    sizes = (low, math.sqrt(low * high), high)
    logger.info("RPN anchor sizes fitted to the training boxes: %s", ", ".join(f"{v:.3f}" for v in sizes))
    return RPNAnchorConfig(sizes=tuple(round(v, 4) for v in sizes))


class TwoStageExample:
    """Turn one augmented image and its boxes into the model's ``(x, y)``.

    RPN: x is the image. Faster R-CNN: x is ``{"image", "gt_boxes" (G_max, 4),
    "gt_labels" (G_max,)}``, the ground truth cut or padded to ``max_boxes`` with
    label -1. y is ``{"rpn": (A, 5)}`` from :class:`RPNTargetEncoder`.
    """

    def __init__(self, encoder: RPNTargetEncoder, with_ground_truth: bool, max_boxes: int):
        self.encoder = encoder
        self.with_ground_truth = with_ground_truth
        self.max_boxes = int(max_boxes)

    def __call__(self, image, boxes, labels):
        target = {"rpn": self.encoder(boxes, labels)}
        if not self.with_ground_truth:
            return image, target
        count = tf.minimum(tf.shape(boxes)[0], self.max_boxes)
        padding = self.max_boxes - count
        gt_boxes = tf.pad(boxes[:count], [[0, padding], [0, 0]])
        gt_labels = tf.pad(tf.cast(labels[:count], tf.int32), [[0, padding]], constant_values=-1)
        gt_boxes = tf.ensure_shape(gt_boxes, (self.max_boxes, 4))
        gt_labels = tf.ensure_shape(gt_labels, (self.max_boxes,))
        return {"image": image, "gt_boxes": gt_boxes, "gt_labels": gt_labels}, target


def two_stage_recipe(args, train_data) -> Recipe:
    """Build the RPN or Faster R-CNN of ``args.model``, its anchors, target encoder and loss."""
    anchor_config = choose_anchor_sizes(args.anchor_sizes, train_data)
    config = FasterRCNNConfig(
        num_classes=train_data.num_classes,
        model=args.model,
        input_size=args.input_size,
        backbone=args.backbone,
        width=args.width,
        feature_stride=args.feature_stride,
        neck=args.neck,
        neck_channels=args.neck_channels,
        rpn_channels=args.rpn_channels,
        anchor_config=anchor_config,
    )
    model = build_faster_rcnn(config)
    feature_shape = tuple(int(v) for v in model.get_layer("rpn_conv").input.shape[1:3])
    anchors = rpn_anchors(feature_shape, config.input_size, anchor_config)
    boxes = [s.boxes for s in train_data.samples]
    coverage = {f"train_coverage_iou_{t}": round(float(match_coverage(boxes, anchors, t)), 4) for t in (0.5, 0.7)}
    logger.info("%d anchors on a %s feature map; training boxes with an anchor at IoU >= 0.5: %.1f%%, >= 0.7: %.1f%%",
                len(anchors), feature_shape, 100 * coverage["train_coverage_iou_0.5"],
                100 * coverage["train_coverage_iou_0.7"])

    # Every box of the most crowded training image fits; augmentation never adds boxes.
    max_boxes = max(1, max(len(s.boxes) for s in train_data.samples))
    anchor_facts = {
        "config": anchor_config.to_dict(),
        "feature_shape": list(feature_shape),
        "num_anchors": int(len(anchors)),
        **coverage,
        "order": "cell row-major, then size, then aspect ratio",
    }
    per_location = anchor_config.anchors_per_location
    loss = {"rpn": RPNLoss(args.rpn_normalization, anchors_per_location=per_location)}
    # NOTE: Keras 3.15 compiles a metric only for a model whose every output has a target. A Faster
    # R-CNN's "head" output has none, because its loss is added inside the model. So only the RPN
    # logs its two loss terms, and a Faster R-CNN's history.csv has the total loss alone.
    metrics = {"rpn": [RPNLossTerms(args.rpn_normalization, anchors_per_location=per_location)]}
    metrics = metrics if args.model == "rpn" else None
    encoder = RPNTargetEncoder(anchors)
    return Recipe(
        task=args.model, model=model, config=config, anchors=anchor_facts, encoder=encoder, loss=loss,
        build_inference=lambda trained: build_inference_model(trained, config),
        make_example=TwoStageExample(encoder, args.model == "faster_rcnn", max_boxes), metrics=metrics,
    )
