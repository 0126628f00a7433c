"""Custom Keras layers of the detectors."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from dl09_keras.anchors import DefaultBoxConfig, RPNAnchorConfig, default_boxes, rpn_anchors
from dl09_keras.boxes import decode_boxes


@keras.saving.register_keras_serializable(package="dl09")
class DecodeDetections(keras.layers.Layer):
    """Turn raw SSD head outputs into class probabilities and corner boxes.

    The layer rebuilds its default boxes from the feature-map shapes, the input
    size and the default-box settings, so its config stays small and a reloaded
    model decodes exactly as the saved one. It does no NMS, so the exported graph
    runs in every runtime (NMS lives in :mod:`dl09_keras.inference.postprocess`).

    Args:
        feature_shapes: (height, width) of each feature map, highest resolution first.
        image_size: (height, width) of the network input in pixels.
        box_config: a :class:`DefaultBoxConfig` or its dict.

    Call:
        raw: (B, A, 4 + C + 1) offsets then class logits.

    Returns:
        scores: (B, A, C + 1) softmax probabilities, column 0 the background.
        boxes: (B, A, 4) normalized ``[ymin, xmin, ymax, xmax]``, not clipped.
    """

    def __init__(self, feature_shapes, image_size, box_config=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(box_config, dict):
            box_config = DefaultBoxConfig.from_dict(box_config)
        self.box_config = box_config or DefaultBoxConfig()
        self.feature_shapes = [tuple(int(v) for v in shape) for shape in feature_shapes]
        self.image_size = tuple(int(v) for v in image_size)
        self._default_boxes = default_boxes(self.feature_shapes, self.image_size, self.box_config)

    @property
    def default_boxes(self) -> np.ndarray:
        return self._default_boxes

    def call(self, raw):
        raw = tf.cast(raw, tf.float32)
        boxes = decode_boxes(raw[..., :4], tf.constant(self._default_boxes), self.box_config.variances)
        scores = tf.nn.softmax(raw[..., 4:], axis=-1)
        return scores, boxes

    def compute_output_shape(self, input_shape):
        batch, num_boxes, channels = input_shape
        return (batch, num_boxes, channels - 4), (batch, num_boxes, 4)

    def get_config(self):
        config = super().get_config()
        config.update(
            feature_shapes=[list(shape) for shape in self.feature_shapes],
            image_size=list(self.image_size),
            box_config=self.box_config.to_dict(),
        )
        return config


def _round_half_away_from_zero(values):
    """Round floats as C's ``round()`` does: 2.5 to 3 and -2.5 to -3.

    ``floor(x + 0.5)`` would round up a value just below .5, because the sum is
    rounded to float32 first. The fractional part ``|x| - floor(|x|)`` is exact.
    """
    magnitude = tf.abs(values)
    whole = tf.floor(magnitude)
    rounded = whole + tf.cast(magnitude - whole >= 0.5, values.dtype)
    return tf.where(values < 0, -rounded, rounded)


def _floor_divide(numerator, denominator: int):
    """Compute ``floor(numerator / denominator)`` exactly for whole numbers >= 0 held as floats.

    Graph optimizers rewrite a division by a constant as a product with its
    reciprocal, so a plain ``floor(a / b)`` can differ between eager TensorFlow
    and the exported graphs. Here the exact quotient plus ``0.5 / denominator``
    lies at least that far from a whole number. So the float32 error of the
    product cannot change its floor while the numerator stays under 2 * 10**6.
    """
    return tf.floor((numerator + 0.5) * (1.0 / denominator))


def _roi_bin_edges(starts, ends, size, pool_size):
    """Compute the first and the past-the-end cell of every bin along one axis.

    Args:
        starts, ends: float32 (B, R) normalized roi edges along the axis.
        size: number of feature-map cells along the axis.
        pool_size: number of bins.

    Returns:
        float32 (B, R, pool_size) first cells and (B, R, pool_size) past-the-end
        cells, whole numbers clamped to [0, size].
    """
    size = float(size)
    first = _round_half_away_from_zero(starts * size)
    last = _round_half_away_from_zero(ends * size)
    extent = tf.maximum(last - first + 1.0, 1.0)[..., None]

    # floor(i * extent / pool) and ceil((i + 1) * extent / pool), in whole numbers.
    index = tf.range(pool_size, dtype=tf.float32)
    lower = _floor_divide(index * extent, pool_size) + first[..., None]
    upper = _floor_divide((index + 1.0) * extent + (pool_size - 1), pool_size) + first[..., None]
    return tf.clip_by_value(lower, 0.0, size), tf.clip_by_value(upper, 0.0, size)


def _max_pool_bins(features, row_bins, col_bins):
    """Max-pool features (B, h, w, C) over bins and return the cell of each max too.

    The max runs first over rows and then over columns, with one masked
    ``where`` per feature-map row and column, so the largest tensor is
    (B, R, pool, max(h, w), C). The cell of the max is the first in row-major
    order among equal values, as in Caffe's ROIPooling. The max itself does not
    depend on those cells, so graphs without a gradient prune their ops.

    Args:
        features: float (B, h, w, C) with static h and w.
        row_bins, col_bins: (lower, upper) float32 (B, R, pool) bin edges.

    Returns:
        pooled (B, R, pool, pool, C), the max or the lowest float for an empty
        bin, then the float32 row and column of each max, same shape.
    """
    (row_lower, row_upper), (col_lower, col_upper) = row_bins, col_bins
    # Cells outside a bin count as the lowest float, as Caffe starts its max at -FLT_MAX.
    lowest = tf.constant(features.dtype.min, dtype=features.dtype)

    # Rows: (B, h, w, C) -> (B, R, pool, w, C). Slicing with unstack and
    # expand_dims keeps tf2onnx 1.17's transpose optimizer working, which
    # fails on a strided slice with new axes.
    pooled_rows = arg_rows = None
    for row, values in enumerate(tf.unstack(features, axis=1)):
        inside = ((row_lower <= row) & (row < row_upper))[..., None, None]
        candidate = tf.where(inside, tf.expand_dims(tf.expand_dims(values, 1), 1), lowest)
        if pooled_rows is None:
            pooled_rows, arg_rows = candidate, tf.zeros_like(candidate, tf.float32)
            continue
        arg_rows = tf.where(candidate > pooled_rows, float(row), arg_rows)
        pooled_rows = tf.maximum(pooled_rows, candidate)

    # Columns: (B, R, pool, w, C) -> (B, R, pool, pool, C). On equal values
    # the smaller row wins, then the earlier column.
    pooled = arg_row = arg_col = None
    for col, (values, rows) in enumerate(zip(tf.unstack(pooled_rows, axis=3), tf.unstack(arg_rows, axis=3))):
        inside = ((col_lower <= col) & (col < col_upper))[:, :, None, :, None]
        candidate = tf.where(inside, tf.expand_dims(values, 3), lowest)
        rows = tf.broadcast_to(tf.expand_dims(rows, 3), tf.shape(candidate))
        if pooled is None:
            pooled, arg_row, arg_col = candidate, rows, tf.zeros_like(rows)
            continue
        better = inside & ((candidate > pooled) | ((candidate == pooled) & (rows < arg_row)))
        arg_row = tf.where(better, rows, arg_row)
        arg_col = tf.where(better, float(col), arg_col)
        pooled = tf.maximum(pooled, candidate)
    return pooled, arg_row, arg_col


def _scatter_to_cells(upstream, rows, cols, features_shape):
    """Sum the gradient of each bin (B, R, pool, pool, C) into its max cell of features (B, h, w, C)."""
    batch, height, width, channels = tf.unstack(features_shape)
    shape = tf.shape(upstream)
    image = tf.reshape(tf.range(batch), (-1, 1, 1, 1, 1))
    channel = tf.reshape(tf.range(channels), (1, 1, 1, 1, -1))
    cell = (image * height + tf.cast(rows, tf.int32)) * width + tf.cast(cols, tf.int32)
    flat_index = tf.broadcast_to(cell * channels + channel, shape)
    gradient = tf.math.unsorted_segment_sum(
        tf.reshape(upstream, [-1]), tf.reshape(flat_index, [-1]), batch * height * width * channels
    )
    return tf.reshape(gradient, features_shape)


@keras.saving.register_keras_serializable(package="dl09")
class ROIMaxPooling(keras.layers.Layer):
    """Max-pool each region of interest of a feature map to a fixed grid of bins.

    The semantics are those of Caffe's ``ROIPooling`` layer of Fast and Faster
    R-CNN, with the feature map as the pixel grid. Along the ``h`` rows of the
    feature map:

    - ``start = round(ymin * h)`` and ``end = round(ymax * h)``, rounding 0.5 away from zero;
    - ``bin = max(end - start + 1, 1) / pool_size``;
    - bin ``i`` covers rows ``floor(i * bin) + start`` up to, not including,
      ``ceil((i + 1) * bin) + start``, both clamped to [0, h].

    Columns follow the same rule with ``xmin``, ``xmax`` and the width. Each
    output is the max over the cells of its bin, or 0 for an empty bin.

    NOTE: the bin edges are computed exactly, in whole numbers. Caffe multiplies
    a float32 bin size, so for some roi extents its last bin ends one cell past
    the roi. The smallest such extent is 57 cells at pool_size 7 or 14. Pool
    sizes 2 to 6 and 8 agree with Caffe up to 4096 cells.

    The max runs first over rows and then over columns, with one masked
    ``where`` per feature-map row and column. The graph contains only elementwise
    ops, so it exports to ONNX and TFLite without the ``crop_and_resize`` loop.
    The largest tensor has ``B * R * pool_size * max(h, w) * C`` values. A
    custom gradient sends the gradient of each bin to its max cell, the first
    in row-major order among equal values as in Caffe. So backpropagation keeps
    only the (B, R, pool_size, pool_size, C) max cells, not the per-row tensors.
    No gradient flows into the rois.

    Args:
        pool_size: number of bins along each axis. Default 7.

    Call:
        features: float (B, h, w, C), with static h and w.
        rois: float32 (B, R, 4) normalized ``[ymin, xmin, ymax, xmax]``.

    Returns:
        (B, R, pool_size, pool_size, C) in the dtype of the features.
    """

    def __init__(self, pool_size=7, **kwargs):
        super().__init__(**kwargs)
        if int(pool_size) < 1:
            raise ValueError(f"Invalid pool_size={pool_size}: expected a positive number of bins.")
        self.pool_size = int(pool_size)

    def call(self, features, rois):
        height, width = features.shape[1], features.shape[2]
        if height is None or width is None:
            raise ValueError(
                f"ROIMaxPooling requires a static feature-map size, got shape {features.shape}. "
                "Give the model input a fixed height and width."
            )
        rois = tf.stop_gradient(tf.cast(rois, tf.float32))
        row_bins = _roi_bin_edges(rois[..., 0], rois[..., 2], height, self.pool_size)
        col_bins = _roi_bin_edges(rois[..., 1], rois[..., 3], width, self.pool_size)
        empty = (row_bins[1] <= row_bins[0])[..., :, None] | (col_bins[1] <= col_bins[0])[..., None, :]

        @tf.custom_gradient
        def pool(features):
            pooled, rows, cols = _max_pool_bins(features, row_bins, col_bins)
            pooled = tf.where(empty[..., None], tf.zeros_like(pooled), pooled)

            def gradient(upstream):
                upstream = tf.where(empty[..., None], tf.zeros_like(upstream), upstream)
                return _scatter_to_cells(upstream, rows, cols, tf.shape(features))

            return pooled, gradient

        return pool(features)

    def compute_output_shape(self, features_shape, rois_shape):
        return (rois_shape[0], rois_shape[1], self.pool_size, self.pool_size, features_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size)
        return config


RPN_VARIANCES = (1.0, 1.0, 1.0, 1.0)

# Largest th and tw before exp: log(1000 / 16), the clamp of Detectron and torchvision,
# so that a wild offset gives a huge but finite box.
MAX_LOG_SCALE = math.log(1000.0 / 16.0)


def pairwise_iou(boxes):
    """IoU of every pair of boxes in each batch element: (B, k, 4) corners to (B, k, k).

    A pair whose union is empty has IoU 0, as in :func:`dl09_keras.boxes.iou_matrix`.
    """
    top_left = tf.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = tf.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    extent = tf.maximum(bottom_right - top_left, 0.0)
    intersection = extent[..., 0] * extent[..., 1]

    area = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    union = area[:, :, None] + area[:, None, :] - intersection
    return intersection / tf.where(union > 0.0, union, tf.ones_like(union))


def parallel_greedy_nms(boxes, valid, iou_threshold, rounds):
    """Approximate greedy NMS by a fixed number of parallel rounds and return the kept mask.

    Greedy NMS keeps box i when no kept box before it overlaps it with
    IoU > ``iou_threshold``. Each round applies that rule to all boxes at once,
    using the previous round's kept set, starting from all valid boxes. So
    round 1 is Fast NMS (YOLACT, Bolya et al. 2019), and after ``t`` rounds the
    decisions for boxes 0 to t equal greedy NMS. The graph contains only
    matmul, comparisons and elementwise ops with static shapes.

    NOTE: with fewer than k - 1 rounds this is not always greedy NMS. A chain
    where box 0 suppresses box 1, and box 1 alone would suppress box 2, needs
    one round per link. Odd rounds keep a subset of greedy NMS's boxes: they
    never keep a box that greedy NMS suppresses but may drop one that it keeps.
    Even rounds keep a superset. Rounds >= k - 1 give exactly greedy NMS.

    Args:
        boxes: float32 (B, k, 4) corners, sorted by descending score.
        valid: bool (B, k). Invalid boxes neither suppress other boxes nor are kept.
        iou_threshold: a box is suppressed above this IoU.
        rounds: number of parallel rounds, at least 1.

    Returns:
        bool (B, k), True for kept boxes.
    """
    count = boxes.shape[1]
    index = tf.range(count)
    earlier = index[None, :] < index[:, None]
    suppressors = (pairwise_iou(boxes) > iou_threshold) & earlier[None] & valid[:, None, :]
    suppressors = tf.cast(suppressors, tf.float32)

    valid = tf.cast(valid, tf.float32)
    kept = valid
    for _ in range(min(int(rounds), max(count - 1, 1))):
        # Counts of kept suppressors are whole numbers, exact in float32.
        hits = tf.matmul(suppressors, kept[..., None])[..., 0]
        kept = valid * tf.cast(hits < 0.5, tf.float32)
    return kept > 0.5


def _gather_rows(values, indices):
    """Gather along axis 1: values (B, A, ...) and int32 indices (B, k) to (B, k, ...)."""
    return tf.gather(values, indices, batch_dims=1)


def _check_top_n(name, top_n):
    top_n = tuple(int(v) for v in top_n)
    if len(top_n) != 2 or min(top_n) < 1:
        raise ValueError(f"Invalid {name}={top_n}: expected (before NMS, after NMS), two positive counts.")
    return top_n


@keras.saving.register_keras_serializable(package="dl09")
class ProposalLayer(keras.layers.Layer):
    """Turn the RPN outputs into region proposals, as the Faster R-CNN proposal layer does.

    Steps, for each image:

    1. Decode the offsets against the anchors with variances (1, 1, 1, 1),
       after clamping th and tw to log(1000 / 16), then clip the boxes to [0, 1].
    2. Give the score -1 to boxes under ``min_size`` pixels in height or width,
       so they sort last and are never returned.
    3. Keep the top ``before`` scores, then apply NMS at IoU ``nms_iou``.
    4. Return the top ``after`` boxes that NMS kept, by descending score.

    The NMS is :func:`parallel_greedy_nms` with ``nms_rounds`` rounds, not a
    greedy NMS op, so the graph exports to ONNX and TFLite with plain ops.
    NOTE: when a chain of suppressions is longer than ``nms_rounds``, the layer
    drops some boxes that greedy NMS keeps. It never keeps two boxes with
    IoU above ``nms_iou``. With ``nms_rounds >= before - 1`` it is exactly greedy NMS.
    The rounds cost ``nms_rounds * B * before**2`` multiply-adds.

    The layer rebuilds its anchors from the feature-map shape, the input size
    and the anchor settings, so its config stays small. No gradient flows
    through the proposals.

    Args:
        feature_shape: (height, width) of the RPN feature map.
        image_size: (height, width) of the network input in pixels.
        anchor_config: an :class:`RPNAnchorConfig` or its dict. Default RPNAnchorConfig().
        train_top_n: (before NMS, after NMS) counts when training. Default (2000, 512).
        test_top_n: (before NMS, after NMS) counts at inference. Default (1000, 300).
        nms_iou: IoU above which NMS suppresses a box. Default 0.7.
        min_size: smallest box height and width in input pixels. Default 2.
        nms_rounds: parallel NMS rounds, an odd number. Default 21.

    Call:
        objectness: float (B, A), the probability that each anchor contains an object.
        deltas: float (B, A, 4) offsets ``(ty, tx, th, tw)``.
        training: selects ``train_top_n`` or ``test_top_n``.

    Returns:
        proposals: float32 (B, after, 4) normalized ``[ymin, xmin, ymax, xmax]``.
        scores: float32 (B, after) objectness of each proposal.
        Rows past the number of kept boxes hold the box [0, 0, 0, 0] and score 0.
        ``before`` and ``after`` shrink to A when A is smaller, and the rows up to
        ``after`` stay padded. The row count differs between training and
        inference, so the layers after this one must not fix it. A functional
        model shows the inference count.
    """

    def __init__(self, feature_shape, image_size, anchor_config=None, train_top_n=(2000, 512),
                 test_top_n=(1000, 300), nms_iou=0.7, min_size=2.0, nms_rounds=21, **kwargs):
        super().__init__(**kwargs)
        if isinstance(anchor_config, dict):
            anchor_config = RPNAnchorConfig.from_dict(anchor_config)
        self.anchor_config = anchor_config or RPNAnchorConfig()
        self.feature_shape = tuple(int(v) for v in feature_shape)
        self.image_size = tuple(int(v) for v in image_size)
        self.train_top_n = _check_top_n("train_top_n", train_top_n)
        self.test_top_n = _check_top_n("test_top_n", test_top_n)

        if not 0.0 < float(nms_iou) <= 1.0:
            raise ValueError(f"Invalid nms_iou={nms_iou}: expected an IoU in (0, 1].")
        if float(min_size) < 0.0:
            raise ValueError(f"Invalid min_size={min_size}: expected a size in pixels, 0 or more.")
        if int(nms_rounds) < 1 or int(nms_rounds) % 2 == 0:
            raise ValueError(
                f"Invalid nms_rounds={nms_rounds}: expected an odd positive count, "
                "so that the kept boxes are a subset of greedy NMS's."
            )
        self.nms_iou = float(nms_iou)
        self.min_size = float(min_size)
        self.nms_rounds = int(nms_rounds)
        self._anchors = rpn_anchors(self.feature_shape, self.image_size, self.anchor_config)

    @property
    def anchors(self) -> np.ndarray:
        """float32 (A, 4) anchors, normalized corners, not clipped."""
        return self._anchors

    def call(self, objectness, deltas, training=False):
        before, after = self.train_top_n if training else self.test_top_n
        num_anchors = len(self._anchors)
        if objectness.shape[-1] != num_anchors or deltas.shape[1] != num_anchors:
            raise ValueError(
                f"ProposalLayer expected {num_anchors} anchors for feature_shape={self.feature_shape}, got "
                f"objectness {objectness.shape} and deltas {deltas.shape}. "
                "Reshape the RPN outputs to (B, A) and (B, A, 4) in the anchor order of rpn_anchors."
            )
        scores = tf.stop_gradient(tf.cast(objectness, tf.float32))
        boxes = self._decode(tf.stop_gradient(tf.cast(deltas, tf.float32)))
        scores = tf.where(self._too_small(boxes), -tf.ones_like(scores), scores)

        before = min(before, num_anchors)
        top_scores, top_indices = tf.math.top_k(scores, k=before)
        top_boxes = _gather_rows(boxes, top_indices)
        kept = parallel_greedy_nms(top_boxes, top_scores >= 0.0, self.nms_iou, self.nms_rounds)

        kept_scores = tf.where(kept, top_scores, -tf.ones_like(top_scores))
        out_scores, out_indices = tf.math.top_k(kept_scores, k=min(after, before))
        out_boxes = _gather_rows(top_boxes, out_indices)
        found = out_scores >= 0.0
        out_boxes = tf.where(found[..., None], out_boxes, tf.zeros_like(out_boxes))
        out_scores = tf.where(found, out_scores, tf.zeros_like(out_scores))

        padding = after - min(after, before)
        if padding:
            out_boxes = tf.pad(out_boxes, [[0, 0], [0, padding], [0, 0]])
            out_scores = tf.pad(out_scores, [[0, 0], [0, padding]])
        return out_boxes, out_scores

    def _decode(self, deltas):
        """Decode (B, A, 4) offsets to (B, A, 4) boxes clipped to [0, 1]."""
        deltas = tf.concat([deltas[..., :2], tf.minimum(deltas[..., 2:], MAX_LOG_SCALE)], axis=-1)
        boxes = decode_boxes(deltas, tf.constant(self._anchors), RPN_VARIANCES)
        return tf.clip_by_value(boxes, 0.0, 1.0)

    def _too_small(self, boxes):
        """bool (B, A): True where the box is under min_size pixels in height or width."""
        height = (boxes[..., 2] - boxes[..., 0]) * float(self.image_size[0])
        width = (boxes[..., 3] - boxes[..., 1]) * float(self.image_size[1])
        return (height < self.min_size) | (width < self.min_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            feature_shape=list(self.feature_shape),
            image_size=list(self.image_size),
            anchor_config=self.anchor_config.to_dict(),
            train_top_n=list(self.train_top_n),
            test_top_n=list(self.test_top_n),
            nms_iou=self.nms_iou,
            min_size=self.min_size,
            nms_rounds=self.nms_rounds,
        )
        return config
