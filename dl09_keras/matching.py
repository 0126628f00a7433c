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


# ---------------------------------------------------------------------------
# Faster R-CNN: RPN anchor targets and the detection head's ROI sampling.
#
# Both run per image in graph mode (tf.data map functions, tf.map_fn) with a
# dynamic number of ground truths G >= 0. A zero-area ground-truth box has IoU 0
# with every box, so it is never matched, and batch padding rows of zeros are harmless.
# ---------------------------------------------------------------------------

from dl09_keras.boxes import box_area, iou_matrix_np  # noqa: E402

# The RPN regresses unscaled offsets, as Ren et al. (2015) define (tx, ty, tw, th).
RPN_VARIANCES = (1.0, 1.0, 1.0, 1.0)


def _sample_indices(mask, count):
    """Draw up to ``count`` random indices, int64 (n,), among the True entries of ``mask`` (N,)."""
    candidates = tf.random.shuffle(tf.where(mask)[:, 0])
    return candidates[:count]


def _indices_to_mask(indices, size):
    """Turn int64 indices (n,) into a boolean mask of length ``size``."""
    updates = tf.ones_like(indices, tf.int32)
    return tf.scatter_nd(indices[:, None], updates, tf.cast([size], tf.int64)) > 0


def _with_empty_box(boxes):
    """Append one all-zero box to (G, 4), so argmax and max over G + 1 columns work for G = 0."""
    return tf.concat([boxes, tf.zeros([1, 4], boxes.dtype)], axis=0)


class RPNTargetEncoder:
    """Turn one image's boxes into the region proposal network's training target.

    Labelling follows Ren et al. (2015), "Faster R-CNN", section 3.1.2. An anchor is
    positive when its IoU with some ground truth is > ``positive_iou``, or when it
    is the highest-IoU anchor of some ground truth and that IoU is > 0. Ties count,
    so every anchor that reaches a ground truth's maximum IoU is positive, as in the
    authors' py-faster-rcnn code. An anchor whose IoU with every ground truth is
    < ``negative_iou`` is negative unless it is positive. The rest are ignored.
    Then up to ``int(samples_per_image * positive_fraction)`` positives are drawn at
    random and negatives fill the sample up to ``samples_per_image``. The draws use
    ``tf.random`` ops, so each epoch samples anew.

    All anchors are kept, including those that cross the image border. Such an
    anchor is often the best match of an object at the border, and Detectron2 keeps
    them by default (``MODEL.RPN.BOUNDARY_THRESH = -1``). Ren et al. ignore them
    during training instead.

    Args:
        anchors: float32 (A, 4) normalized ``[ymin, xmin, ymax, xmax]`` from
            :func:`dl09_keras.anchors.rpn_anchors`.
        positive_iou: IoU above which an anchor is positive. Default 0.7.
        negative_iou: IoU below which an anchor is negative. Default 0.3.
        samples_per_image: anchors sampled per image. Default 256.
        positive_fraction: maximum share of positives in the sample. Default 0.5.

    Call:
        boxes: float32 (G, 4) normalized corners, G >= 0. labels: ignored, because
        the RPN is class-agnostic. The argument keeps the call signature of
        :class:`TargetEncoder`.

    Returns:
        float32 (A, 5): offsets ``(ty, tx, th, tw)`` from
        ``encode_boxes(matched_gt, anchors, RPN_VARIANCES)`` for sampled positives and
        0 elsewhere, then the label: 1 sampled positive, 0 sampled negative,
        -1 ignored (between the thresholds, or not sampled).
    """

    def __init__(self, anchors, positive_iou=0.7, negative_iou=0.3, samples_per_image=256, positive_fraction=0.5):
        if not 0.0 <= negative_iou <= positive_iou <= 1.0:
            raise ValueError(
                f"Invalid RPN thresholds negative_iou={negative_iou}, positive_iou={positive_iou}: "
                "expected 0 <= negative_iou <= positive_iou <= 1."
            )
        if int(samples_per_image) < 1:
            raise ValueError(f"Invalid samples_per_image={samples_per_image}: expected an integer >= 1.")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"Invalid positive_fraction={positive_fraction}: expected a value in [0, 1].")
        anchors = np.asarray(anchors, np.float32)
        if anchors.ndim != 2 or anchors.shape[1] != 4:
            raise ValueError(f"Invalid anchors of shape {anchors.shape}: expected (A, 4) corner boxes.")

        self.anchors = tf.constant(anchors)
        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        self.samples_per_image = int(samples_per_image)
        self.positive_fraction = float(positive_fraction)
        self.max_positives = int(self.samples_per_image * self.positive_fraction)

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    def label_anchors(self, boxes):
        """Label every anchor before sampling.

        Args:
            boxes: float32 (G, 4) normalized corners, G >= 0.

        Returns:
            labels: int32 (A,), 1 positive, 0 negative, -1 ignored.
            matched: int32 (A,), index of each anchor's highest-IoU ground truth.
                It equals G (no ground truth) when the anchor overlaps none.
        """
        targets = _with_empty_box(boxes)
        iou = iou_matrix(self.anchors, targets)  # (A, G + 1)
        best_iou = tf.reduce_max(iou, axis=1)
        matched = tf.argmax(iou, axis=1, output_type=tf.int32)

        # Each ground truth claims all anchors that reach its maximum IoU, unless that maximum is 0.
        # NOTE: ties are exact float32 equality, so IoUs that differ by less than float32
        # precision (symmetric anchors) tie here but may not in a float64 reference.
        gt_best_iou = tf.reduce_max(iou, axis=0)  # (G + 1,)
        is_gt_best = tf.logical_and(tf.equal(iou, gt_best_iou[None, :]), gt_best_iou[None, :] > 0.0)
        positive = tf.logical_or(best_iou > self.positive_iou, tf.reduce_any(is_gt_best, axis=1))
        negative = tf.logical_and(best_iou < self.negative_iou, tf.logical_not(positive))

        labels = tf.where(positive, 1, tf.where(negative, 0, -1))
        matched = tf.where(best_iou > 0.0, matched, tf.shape(boxes)[0])
        return labels, matched

    def sample(self, labels):
        """Keep a random sample of the labelled anchors and set the others to -1, int32 (A,)."""
        positives = _sample_indices(tf.equal(labels, 1), self.max_positives)
        num_negatives = self.samples_per_image - tf.size(positives)
        negatives = _sample_indices(tf.equal(labels, 0), num_negatives)

        keep = tf.logical_or(
            _indices_to_mask(positives, self.num_anchors),
            _indices_to_mask(negatives, self.num_anchors),
        )
        return tf.where(keep, labels, -1)

    def __call__(self, boxes, labels=None):
        """Encode one image's boxes (G, 4) into the RPN target (A, 5)."""
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        anchor_labels, matched = self.label_anchors(boxes)
        anchor_labels = self.sample(anchor_labels)

        matched_boxes = tf.gather(_with_empty_box(boxes), matched)
        offsets = encode_boxes(matched_boxes, self.anchors, RPN_VARIANCES)
        offsets = tf.where(tf.equal(anchor_labels, 1)[:, None], offsets, 0.0)
        return tf.concat([offsets, tf.cast(anchor_labels, tf.float32)[:, None]], axis=-1)


def rpn_labels_np(anchors, boxes, positive_iou=0.7, negative_iou=0.3):
    """Label anchors in NumPy, as a reference for :meth:`RPNTargetEncoder.label_anchors`.

    The steps follow ``anchor_target_layer.py`` of py-faster-rcnn, with two
    differences: positives need IoU > ``positive_iou`` (the paper's text, where the
    code uses >=), and a ground truth that overlaps no anchor claims none.

    Args:
        anchors: (A, 4) normalized corners.
        boxes: (G, 4) normalized corners, G >= 0.

    Returns:
        labels_before_sampling: int8 (A,), 1 positive, 0 negative, -1 ignored.
        matched_gt: int64 (A,), index of each anchor's highest-IoU ground truth
            (the first one on ties), -1 when G = 0.
    """
    anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.full(len(anchors), -1, np.int8)
    if len(boxes) == 0:
        labels[:] = 0
        return labels, np.full(len(anchors), -1, np.int64)

    iou = iou_matrix_np(anchors, boxes)  # (A, G)
    best_iou = iou.max(axis=1)
    matched_gt = iou.argmax(axis=1)

    # Negatives first, so that the positive rules below override them.
    labels[best_iou < negative_iou] = 0
    for g in range(len(boxes)):
        gt_best_iou = iou[:, g].max()
        if gt_best_iou > 0:
            labels[iou[:, g] == gt_best_iou] = 1
    labels[best_iou > positive_iou] = 1
    return labels, matched_gt


def sample_rois(
    proposals,
    gt_boxes,
    gt_labels,
    num_rois=128,
    foreground_fraction=0.25,
    foreground_iou=0.5,
    background_iou=(0.0, 0.5),
    variances=DEFAULT_VARIANCES,
):
    """Sample the regions of interest that train the Fast R-CNN head, for one image.

    The ground-truth boxes join the proposals as candidates, as Detectron2 does by
    default (``PROPOSAL_APPEND_GT``), so the head gets foreground rois from the first
    step on. A candidate with zero area (an all-zero padding row of ``proposals`` or
    ``gt_boxes``, or a degenerate box) is never sampled. A candidate is foreground when its highest
    IoU with a ground truth is >= ``foreground_iou`` (class ``label + 1``), and
    background when that IoU is in ``[low, high)`` of ``background_iou`` (class 0).
    Up to ``round(num_rois * foreground_fraction)`` foreground rois are drawn at
    random, then background rois fill up to ``num_rois``. When there are not enough
    candidates, all-zero rows of weight 0 pad the output. Python's ``round`` rounds
    halves to even, as ``np.round`` does in Detectron's ``_sample_rois``.

    Proposals pass through ``tf.stop_gradient``, because the head treats them as
    fixed boxes. All shapes inside are static, so the function runs under
    ``tf.map_fn`` and compiles with XLA (``jit_compile=True``).

    Args:
        proposals: float32 (P, 4) normalized ``[ymin, xmin, ymax, xmax]``.
        gt_boxes: float32 (G, 4) normalized corners, G >= 0.
        gt_labels: int (G,) dataset labels, 0-based.
        num_rois: rois per image. Default 128.
        foreground_fraction: maximum share of foreground rois. Default 0.25.
        foreground_iou: minimum IoU of a foreground roi. Default 0.5.
        background_iou: ``(low, high)`` IoU range of background rois. Default (0.0, 0.5).
        variances: divisors of the encoded offsets. Default (0.1, 0.1, 0.2, 0.2).

    Returns:
        rois: float32 (num_rois, 4), foreground first, then background, then padding.
        classes: int32 (num_rois,), 0 for background and padding.
        box_targets: float32 (num_rois, 4), ``encode_boxes(matched_gt, rois, variances)``
            for foreground rois and 0 otherwise.
        weights: float32 (num_rois,), 1 for sampled rois and 0 for padding.
    """
    max_foreground = _validate_roi_sampling(num_rois, foreground_fraction, foreground_iou, background_iou)
    proposals = tf.stop_gradient(tf.reshape(tf.cast(proposals, tf.float32), [-1, 4]))
    gt_boxes = tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4])
    gt_labels = tf.reshape(tf.cast(gt_labels, tf.int32), [-1])

    # Candidates: proposals and ground truths, with a zero box that makes G = 0 work.
    candidates = tf.concat([proposals, gt_boxes], axis=0)
    valid = box_area(candidates) > 0.0
    targets = _with_empty_box(gt_boxes)
    iou = iou_matrix(candidates, targets)  # (P + G, G + 1)
    best_iou = tf.reduce_max(iou, axis=1)
    matched = tf.argmax(iou, axis=1, output_type=tf.int32)

    foreground = tf.logical_and(valid, best_iou >= foreground_iou)
    low, high = background_iou
    background = valid & (best_iou >= low) & (best_iou < high) & tf.logical_not(foreground)

    # Random draw: foreground first, background fills the rest, padding after that.
    selected, is_sampled, is_foreground = _draw_rois(foreground, background, max_foreground, num_rois)
    candidates = tf.concat([candidates, tf.zeros([num_rois, 4])], axis=0)
    matched = tf.concat([matched, tf.fill([num_rois], tf.shape(gt_boxes)[0])], axis=0)
    rois = tf.where(is_sampled[:, None], tf.gather(candidates, selected), 0.0)

    selected_gt = tf.gather(matched, selected)
    labels = tf.gather(tf.concat([gt_labels, [-1]], axis=0), selected_gt)
    classes = tf.where(is_foreground, labels + 1, 0)

    # Padding rows get a unit box as reference, so that encoding never divides by 0.
    reference = tf.where(is_sampled[:, None], rois, tf.constant([[0.0, 0.0, 1.0, 1.0]]))
    box_targets = encode_boxes(tf.gather(targets, selected_gt), reference, variances)
    box_targets = tf.where(is_foreground[:, None], box_targets, 0.0)
    weights = tf.cast(is_sampled, tf.float32)
    return rois, classes, box_targets, weights


def _draw_rois(foreground, background, max_foreground, num_rois):
    """Draw the rois of :func:`sample_rois` with static shapes only, so the graph compiles with XLA.

    Every candidate gets a random key in [0, 1). The foreground draw takes the
    ``max_foreground`` highest keys with all other candidates set to -1, and the
    background draw the ``num_rois`` highest keys likewise. A draw with key -1 is
    not sampled. A stable sort then moves the sampled draws to the front and keeps
    foreground before background.

    Args:
        foreground: bool (N,), the foreground candidates.
        background: bool (N,), the background candidates, disjoint from foreground.

    Returns:
        indices: int32 (num_rois,) into the N candidates followed by ``num_rois``
            padding rows. Entries that are not sampled hold arbitrary valid indices.
        is_sampled: bool (num_rois,), False for padding rows.
        is_foreground: bool (num_rois,).
    """
    keys = tf.random.uniform(tf.shape(foreground))
    # Padding with num_rois keys of -1 keeps top_k valid when N < num_rois.
    padding = tf.fill([num_rois], -1.0)
    foreground_keys = tf.concat([tf.where(foreground, keys, -1.0), padding], axis=0)
    background_keys = tf.concat([tf.where(background, keys, -1.0), padding], axis=0)
    foreground_values, foreground_indices = tf.math.top_k(foreground_keys, k=max_foreground)
    background_values, background_indices = tf.math.top_k(background_keys, k=num_rois)

    indices = tf.concat([foreground_indices, background_indices], axis=0)
    is_sampled = tf.concat([foreground_values >= 0.0, background_values >= 0.0], axis=0)
    is_foreground = tf.concat([tf.ones([max_foreground], tf.bool), tf.zeros([num_rois], tf.bool)], axis=0)

    order = tf.argsort(tf.cast(is_sampled, tf.int32), direction="DESCENDING", stable=True)[:num_rois]
    is_sampled = tf.gather(is_sampled, order)
    is_foreground = tf.logical_and(tf.gather(is_foreground, order), is_sampled)
    return tf.gather(indices, order), is_sampled, is_foreground


def _validate_roi_sampling(num_rois, foreground_fraction, foreground_iou, background_iou):
    """Check the settings of :func:`sample_rois` and return the maximum number of foreground rois."""
    if int(num_rois) < 1:
        raise ValueError(f"Invalid num_rois={num_rois}: expected an integer >= 1.")
    if not 0.0 <= foreground_fraction <= 1.0:
        raise ValueError(f"Invalid foreground_fraction={foreground_fraction}: expected a value in [0, 1].")
    if not 0.0 < foreground_iou <= 1.0:
        raise ValueError(f"Invalid foreground_iou={foreground_iou}: expected a value in (0, 1].")
    if len(background_iou) != 2 or not 0.0 <= background_iou[0] <= background_iou[1] <= 1.0:
        raise ValueError(f"Invalid background_iou={background_iou}: expected (low, high) with 0 <= low <= high <= 1.")
    return int(round(num_rois * foreground_fraction))
