"""The Region Proposal Network and the two-stage Faster R-CNN (Ren et al., 2015).

Both share one backbone feature map. The RPN slides a 3 x 3 convolution over
it, then two sibling 1 x 1 convolutions give 2k objectness logits and 4k box
offsets per cell, for the k anchors of :func:`dl09_keras.anchors.rpn_anchors`.
Faster R-CNN adds the detection network: the proposals are max-pooled to a
fixed grid from the same feature map (:class:`ROIMaxPooling`), and two fully
connected layers feed a softmax over the classes plus background and a
class-specific box refinement.

Training is approximate joint training in one ``model.fit``: the training model
samples the head's ROIs from its own proposals and the ground truth, and no
gradient flows through the proposal coordinates.

Models (images are float32 (B, H, W, 3) RGB in [0, 255]):

- RPN training model: image -> ``{"rpn": (B, A, 6)}``, 2 objectness logits
  (background, object) then the offsets ``(ty, tx, th, tw)`` of each anchor.
- Faster R-CNN training model: ``{"image", "gt_boxes" (B, G, 4), "gt_labels"
  (B, G) with -1 padding}`` -> ``{"rpn": (B, A, 6), "head": (B, R, (C + 1) * 5)}``;
  the head loss is added inside the model, because its targets depend on the
  sampled ROIs.
- Inference models: image -> ``{"scores", "boxes"}`` in the format of the SSD's
  (see :func:`build_inference_model`), so export, detect and evaluate treat all
  detectors alike.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import layers

from dl09_keras.anchors import RPNAnchorConfig, rpn_anchors
from dl09_keras.boxes import decode_boxes
from dl09_keras.layers import ProposalLayer, ROIMaxPooling
from dl09_keras.losses import FastRCNNLoss
from dl09_keras.matching import sample_rois
from dl09_keras.models.backbones import BACKBONES, build_backbone
from dl09_keras.models.ssd import fpn_neck
from dl09_keras.training_args import NECKS

MODELS = ("rpn", "faster_rcnn")
FEATURE_STRIDES = (8, 16, 32)
HEAD_VARIANCES = (0.1, 0.1, 0.2, 0.2)


@dataclasses.dataclass
class FasterRCNNConfig:
    """Everything needed to rebuild an RPN or a Faster R-CNN.

    Args:
        num_classes: object classes, background not counted.
        model: "rpn" (proposals only) or "faster_rcnn".
        input_size: (height, width) of the network input. Default (320, 320).
        backbone: one of ``BACKBONES``. Default "resnet".
        width: channel multiplier of the backbone. Default 1.0.
        feature_stride: stride of the shared feature map, 8, 16 or 32. Default 16.
        neck: "none" or "fpn": merge the coarser backbone maps into the shared one
            top-down first, as the SSD's FPN neck does. Default "none".
        neck_channels: channels of the shared map after the FPN neck. Default 96.
        rpn_channels: channels of the RPN's 3 x 3 layer (512 in the paper). Default 256.
        anchor_config: anchor sizes and aspect ratios.
        train_top_n: proposals (before NMS, after NMS) per image in training. Default (1000, 256).
        test_top_n: the same at inference. Default (1000, 300).
        nms_iou: IoU threshold of the proposal NMS. Default 0.7.
        rois_per_image: head ROIs sampled per training image. Default 128.
        foreground_fraction: largest share of foreground among them. Default 0.25.
        pool_size: ROI max-pooling grid. Default 7.
        head_units: units of each of the head's two fully connected layers. Default 256.
    """

    num_classes: int
    model: str = "faster_rcnn"
    input_size: tuple[int, int] = (320, 320)
    backbone: str = "resnet"
    width: float = 1.0
    feature_stride: int = 16
    neck: str = "none"
    neck_channels: int = 96
    rpn_channels: int = 256
    anchor_config: RPNAnchorConfig = dataclasses.field(default_factory=RPNAnchorConfig)
    train_top_n: tuple[int, int] = (1000, 256)
    test_top_n: tuple[int, int] = (1000, 300)
    nms_iou: float = 0.7
    rois_per_image: int = 128
    foreground_fraction: float = 0.25
    pool_size: int = 7
    head_units: int = 256

    def __post_init__(self):
        if isinstance(self.anchor_config, dict):
            self.anchor_config = RPNAnchorConfig.from_dict(self.anchor_config)
        self.input_size = tuple(int(v) for v in self.input_size)
        self.train_top_n = tuple(int(v) for v in self.train_top_n)
        self.test_top_n = tuple(int(v) for v in self.test_top_n)
        if self.model not in MODELS:
            raise ValueError(f"Unknown model {self.model!r}: choose one of {MODELS}.")
        if self.num_classes < 1:
            raise ValueError(f"Invalid num_classes={self.num_classes}: expected at least 1.")
        if len(self.input_size) != 2 or min(self.input_size) < 64:
            raise ValueError(f"Invalid input_size={self.input_size}: expected (height, width), each >= 64.")
        if self.backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {self.backbone!r}: choose one of {BACKBONES}.")
        if self.neck not in NECKS:
            raise ValueError(f"Unknown neck {self.neck!r}: choose one of {NECKS}.")
        if self.feature_stride not in FEATURE_STRIDES:
            raise ValueError(f"Invalid feature_stride={self.feature_stride}: choose one of {FEATURE_STRIDES}.")

    @property
    def task(self) -> str:
        return self.model

    def to_dict(self) -> dict:
        config = dataclasses.asdict(self)
        config["input_size"] = list(self.input_size)
        config["anchor_config"] = self.anchor_config.to_dict()
        config["train_top_n"] = list(self.train_top_n)
        config["test_top_n"] = list(self.test_top_n)
        return config

    @classmethod
    def from_dict(cls, config: dict) -> "FasterRCNNConfig":
        return cls(**config)


@keras.saving.register_keras_serializable(package="dl09")
class ROISampler(keras.layers.Layer):
    """Sample each training image's head ROIs from its proposals and ground truth.

    Call:
        proposals: float32 (B, P, 4) normalized corners (all-zero rows are padding).
        gt_boxes: float32 (B, G, 4) normalized corners.
        gt_labels: int32 (B, G) 0-based labels, -1 for padding.

    Returns:
        rois: float32 (B, R, 4), without gradient.
        targets: float32 (B, R, 6): class (0 background, label + 1), the offsets
            ``(ty, tx, th, tw)`` of the true box against the ROI, and the ROI's
            weight (0 for padding rows).
    """

    def __init__(self, rois_per_image=128, foreground_fraction=0.25, **kwargs):
        super().__init__(**kwargs)
        self.rois_per_image = int(rois_per_image)
        self.foreground_fraction = float(foreground_fraction)

    def _sample_one(self, inputs):
        proposals, gt_boxes, gt_labels = inputs
        # Padding rows become all-zero boxes, which sample_rois never matches, so every
        # shape stays static (XLA compiles it).
        valid = gt_labels >= 0
        rois, classes, box_targets, weights = sample_rois(
            proposals,
            tf.where(valid[:, None], gt_boxes, 0.0),
            tf.maximum(gt_labels, 0),
            num_rois=self.rois_per_image,
            foreground_fraction=self.foreground_fraction,
            variances=HEAD_VARIANCES,
        )
        targets = tf.concat([tf.cast(classes, tf.float32)[:, None], box_targets, weights[:, None]], -1)
        return rois, targets

    def call(self, proposals, gt_boxes, gt_labels):
        proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_labels = tf.cast(gt_labels, tf.int32)
        rois, targets = tf.map_fn(
            self._sample_one,
            (proposals, gt_boxes, gt_labels),
            fn_output_signature=(
                tf.TensorSpec((self.rois_per_image, 4), tf.float32),
                tf.TensorSpec((self.rois_per_image, 6), tf.float32),
            ),
        )
        return tf.stop_gradient(rois), tf.stop_gradient(targets)

    def compute_output_shape(self, proposals_shape, gt_boxes_shape, gt_labels_shape):
        batch = proposals_shape[0]
        return (batch, self.rois_per_image, 4), (batch, self.rois_per_image, 6)

    def get_config(self):
        config = super().get_config()
        config.update(rois_per_image=self.rois_per_image, foreground_fraction=self.foreground_fraction)
        return config


@keras.saving.register_keras_serializable(package="dl09")
class HeadLoss(keras.layers.Layer):
    """Add the Fast R-CNN head loss to the model and pass the head's outputs through.

    Call:
        head: float32 (B, R, (C + 1) * 5) class logits then class-specific offsets.
        targets: float32 (B, R, 6) from :class:`ROISampler`.
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.loss_fn = FastRCNNLoss(self.num_classes)

    def call(self, head, targets):
        self.add_loss(self.loss_fn(targets, head))
        return head

    def compute_output_shape(self, head_shape, targets_shape):
        return head_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


@keras.saving.register_keras_serializable(package="dl09")
class DecodeFasterRCNN(keras.layers.Layer):
    """Turn head outputs into per-class scores and boxes in the SSD's output format.

    Each ROI r and class c becomes one row, ``r * C + c``. Its score row contains
    the softmax probability of class c in column ``c + 1``, one minus it in column 0,
    and zeros elsewhere. Its box is the ROI refined by class c's offsets, clipped to
    the image. The shared per-class NMS then treats every row as a
    candidate of one class, which is Faster R-CNN's per-class NMS.

    Call:
        rois: float32 (B, R, 4) normalized corners.
        head: float32 (B, R, (C + 1) * 5).

    Returns:
        scores: (B, R * C, C + 1); boxes: (B, R * C, 4).
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def call(self, rois, head):
        classes = self.num_classes
        rois = tf.cast(rois, tf.float32)
        head = tf.cast(head, tf.float32)
        probabilities = tf.nn.softmax(head[..., : classes + 1], axis=-1)[..., 1:]  # (B, R, C)
        offsets = tf.reshape(head[..., classes + 1 :], (-1, tf.shape(rois)[1], classes + 1, 4))[:, :, 1:]

        boxes = decode_boxes(offsets, rois[:, :, None, :], HEAD_VARIANCES)  # (B, R, C, 4)
        boxes = tf.clip_by_value(boxes, 0.0, 1.0)
        one_hot = tf.eye(classes, dtype=tf.float32)  # row c: class c only
        scores = probabilities[..., None] * one_hot  # (B, R, C, C)
        background = 1.0 - probabilities
        scores = tf.concat([background[..., None], scores], -1)

        batch = tf.shape(rois)[0]
        rows = rois.shape[1] * classes if rois.shape[1] is not None else -1
        return tf.reshape(scores, (batch, rows, classes + 1)), tf.reshape(boxes, (batch, rows, 4))

    def compute_output_shape(self, rois_shape, head_shape):
        rows = None if rois_shape[1] is None else rois_shape[1] * self.num_classes
        return (rois_shape[0], rows, self.num_classes + 1), (rois_shape[0], rows, 4)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


def _backbone_feature(config: FasterRCNNConfig, image):
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit_range")(image)
    maps = build_backbone(config.backbone, x, config.width, num_maps=4)[: len(FEATURE_STRIDES)]
    if config.neck == "fpn":
        maps = fpn_neck(maps, config.neck_channels)
    return maps[FEATURE_STRIDES.index(config.feature_stride)]


def _rpn_head(config: FasterRCNNConfig, feature):
    """Return the raw RPN outputs (B, A, 6): 2 objectness logits, then 4 offsets per anchor."""
    k = config.anchor_config.anchors_per_location
    x = layers.Conv2D(config.rpn_channels, 3, padding="same", activation="relu", name="rpn_conv")(feature)
    logits = layers.Conv2D(2 * k, 1, name="rpn_objectness")(x)
    offsets = layers.Conv2D(4 * k, 1, name="rpn_offsets")(x)
    logits = layers.Reshape((-1, 2), name="rpn_objectness_flat")(logits)
    offsets = layers.Reshape((-1, 4), name="rpn_offsets_flat")(offsets)
    return layers.Concatenate(axis=-1, name="rpn", dtype="float32")([logits, offsets])


def _proposal_layer(config: FasterRCNNConfig, feature) -> ProposalLayer:
    return ProposalLayer(
        tuple(int(v) for v in feature.shape[1:3]), config.input_size, config.anchor_config,
        train_top_n=config.train_top_n, test_top_n=config.test_top_n, nms_iou=config.nms_iou,
        name="proposals",
    )


def _detection_head(config: FasterRCNNConfig, feature, rois):
    """ROI max-pooling, two fully connected layers, then class logits and class-specific offsets."""
    pooled = ROIMaxPooling(config.pool_size, name="roi_pool")(feature, rois)
    size = config.pool_size * config.pool_size * feature.shape[-1]
    x = layers.Reshape((-1, size), name="roi_flat")(pooled)
    x = layers.Dense(config.head_units, activation="relu", name="head_fc1")(x)
    x = layers.Dense(config.head_units, activation="relu", name="head_fc2")(x)
    logits = layers.Dense(config.num_classes + 1, name="head_logits")(x)
    offsets = layers.Dense((config.num_classes + 1) * 4, name="head_offsets")(x)
    return layers.Concatenate(axis=-1, name="head", dtype="float32")([logits, offsets])


@keras.saving.register_keras_serializable(package="dl09")
class SplitRPNOutputs(keras.layers.Layer):
    """Split raw RPN outputs (B, A, 6) into the object probability (B, A) and the offsets (B, A, 4)."""

    def call(self, rpn):
        rpn = tf.cast(rpn, tf.float32)
        return tf.nn.softmax(rpn[..., :2], axis=-1)[..., 1], rpn[..., 2:]

    def compute_output_shape(self, rpn_shape):
        return rpn_shape[:2], (*rpn_shape[:2], 4)


def build_faster_rcnn(config: FasterRCNNConfig) -> keras.Model:
    """Build the training model described by ``config`` (see the module docstring)."""
    height, width = config.input_size
    image = keras.Input((height, width, 3), name="image")
    feature = _backbone_feature(config, image)
    rpn = _rpn_head(config, feature)
    if config.model == "rpn":
        return keras.Model(image, {"rpn": rpn}, name=f"rpn_{config.backbone}")

    gt_boxes = keras.Input((None, 4), name="gt_boxes")
    gt_labels = keras.Input((None,), dtype="int32", name="gt_labels")
    objectness, offsets = SplitRPNOutputs(name="rpn_split")(rpn)
    proposals, _ = _proposal_layer(config, feature)(objectness, offsets)
    rois, targets = ROISampler(config.rois_per_image, config.foreground_fraction, name="roi_sampler")(
        proposals, gt_boxes, gt_labels
    )
    head = _detection_head(config, feature, rois)
    head = HeadLoss(config.num_classes, name="head_loss")(head, targets)
    inputs = {"image": image, "gt_boxes": gt_boxes, "gt_labels": gt_labels}
    return keras.Model(inputs, {"rpn": rpn, "head": head}, name=f"faster_rcnn_{config.backbone}")


def build_inference_model(model: keras.Model, config: FasterRCNNConfig, test_top_n=None) -> keras.Model:
    """Build the inference graph from a training model's layers, with no NMS after the proposals.

    ``test_top_n`` (before NMS, after NMS) replaces the proposal counts of the
    config, e.g. (2000, 1000) to measure the recall of 1,000 proposals.

    Returns:
        a model from the image to ``{"scores", "boxes"}``. RPN: scores (B, N, 2)
        (background, object) and boxes (B, N, 4) of the N proposals. Faster
        R-CNN: scores (B, N * C, C + 1) and boxes (B, N * C, 4) from
        :class:`DecodeFasterRCNN`.
    """
    inputs = model.input
    image = inputs["image"] if isinstance(inputs, dict) else inputs
    feature = model.get_layer("rpn_conv").input
    rpn = model.get_layer("rpn").output
    # Both layers have no weights, so new ones equal those of the training model.
    objectness, offsets = SplitRPNOutputs(name="rpn_split")(rpn)
    if test_top_n is not None:
        config = dataclasses.replace(config, test_top_n=tuple(test_top_n))
    proposals, proposal_scores = _proposal_layer(config, feature)(objectness, offsets)

    if config.model == "rpn":
        scores = RPNScores(name="rpn_scores")(proposal_scores)
        return keras.Model(image, {"scores": scores, "boxes": proposals}, name=f"{model.name}_detector")

    pooled = model.get_layer("roi_pool")(feature, proposals)
    x = model.get_layer("roi_flat")(pooled)
    x = model.get_layer("head_fc2")(model.get_layer("head_fc1")(x))
    head = model.get_layer("head")([model.get_layer("head_logits")(x), model.get_layer("head_offsets")(x)])
    scores, boxes = DecodeFasterRCNN(config.num_classes, name="decode")(proposals, head)
    return keras.Model(image, {"scores": scores, "boxes": boxes}, name=f"{model.name}_detector")


@keras.saving.register_keras_serializable(package="dl09")
class RPNScores(keras.layers.Layer):
    """Turn proposal scores (B, N) into two-column scores (B, N, 2): background, object."""

    def call(self, scores):
        scores = tf.cast(scores, tf.float32)
        return tf.stack([1.0 - scores, scores], -1)

    def compute_output_shape(self, scores_shape):
        return (*scores_shape, 2)
