"""Smooth L1 and the SSD loss with hard negative mining."""

from __future__ import annotations

import keras
import tensorflow as tf


def smooth_l1(x):
    """Element-wise smooth L1: ``0.5 x^2`` where ``|x| < 1``, else ``|x| - 0.5``."""
    absolute = tf.abs(x)
    return tf.where(absolute < 1.0, 0.5 * tf.square(x), absolute - 0.5)


def sum_over_replicas(value):
    """Sum a per-replica value over the replicas of a ``tf.distribute`` strategy.

    Outside a replica context, or with one replica, the value is returned as is.
    The losses divide by batch-wide counts (matched boxes, sampled anchors), and
    with N replicas those counts must cover the global batch: Keras sums the
    replicas' gradients and does not rescale a loss of reduction "sum".
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def num_replicas() -> int:
    """Return the replicas of the current ``tf.distribute`` strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="dl09")
class SSDLoss(keras.losses.Loss):
    """SSD training objective ``(L_conf + alpha * L_loc) / N`` (Liu et al., 2016).

    ``N`` is the number of matched (positive) default boxes in the batch.
    ``L_loc`` is the smooth L1 of the offset error over positive boxes.
    ``L_conf`` is the softmax cross-entropy over the positive boxes and the hardest
    negatives: per image, the ``neg_pos_ratio * P`` negatives with the highest
    confidence loss, where ``P`` is that image's number of positive boxes.

    An image without objects (``P = 0``) still teaches "nothing here": its
    ``empty_image_negatives`` hardest negatives enter ``L_conf``. When the whole
    batch has no positive box the sum is divided by 1 instead of ``N = 0``. With
    ``empty_image_negatives=0`` such images contribute nothing and a batch without
    objects has loss 0, the paper's rule.

    Shapes:
        y_true: (B, A, 5) from :class:`dl09_keras.matching.TargetEncoder`: encoded
            offsets, then the class id (0 background).
        y_pred: (B, A, 4 + C + 1) from the SSD heads: offsets, then class logits.

    The per-image values are already divided by ``N``, so the default reduction is
    ``"sum"`` and the batch loss is exactly the formula above.

    Args:
        alpha: weight of the localization term. Default 1.0.
        neg_pos_ratio: negatives kept per positive. Default 3.
        empty_image_negatives: negatives kept in an image without objects. Default 8.
    """

    def __init__(
        self,
        alpha=1.0,
        neg_pos_ratio=3.0,
        empty_image_negatives=8,
        reduction="sum",
        name="ssd_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        if alpha < 0 or neg_pos_ratio < 0 or empty_image_negatives < 0:
            raise ValueError(
                f"Invalid SSDLoss settings alpha={alpha}, neg_pos_ratio={neg_pos_ratio}, "
                f"empty_image_negatives={empty_image_negatives}: all must be >= 0."
            )
        self.alpha = float(alpha)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.empty_image_negatives = int(empty_image_negatives)

    def call(self, y_true, y_pred):
        losses = ssd_loss_terms(
            y_true, y_pred, self.neg_pos_ratio, self.empty_image_negatives
        )
        num_positive = tf.maximum(sum_over_replicas(tf.reduce_sum(losses["num_positive"])), 1.0)
        return (losses["conf"] + self.alpha * losses["loc"]) / num_positive

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            neg_pos_ratio=self.neg_pos_ratio,
            empty_image_negatives=self.empty_image_negatives,
        )
        return config


def hard_negative_mask(positive, cross_entropy, neg_pos_ratio=3.0, empty_image_negatives=8):
    """Choose the hard negatives of each image: the background boxes with the highest confidence loss.

    Args:
        positive: bool (B, A), the matched default boxes.
        cross_entropy: float32 (B, A), the confidence loss of every default box.
        neg_pos_ratio: negatives kept per positive. Default 3.
        empty_image_negatives: negatives kept in an image without positives. Default 8.

    Returns:
        bool (B, A): True for the kept negatives, at most ``neg_pos_ratio * P`` per
        image (P its positives) and never more than its background boxes.
    """
    positive_f = tf.cast(positive, tf.float32)
    num_positive = tf.reduce_sum(positive_f, axis=-1)
    num_negative_available = tf.reduce_sum(1.0 - positive_f, axis=-1)
    requested = tf.where(num_positive > 0, neg_pos_ratio * num_positive, float(empty_image_negatives))
    num_negative = tf.minimum(tf.floor(requested), num_negative_available)

    # Rank the negatives by their loss; positives get -1 and rank last.
    negative_loss = tf.where(positive, -1.0, cross_entropy)
    order = tf.argsort(negative_loss, axis=-1, direction="DESCENDING")
    rank = tf.argsort(order, axis=-1)
    return tf.cast(rank, tf.float32) < num_negative[:, None]


def ssd_loss_terms(y_true, y_pred, neg_pos_ratio=3.0, empty_image_negatives=8):
    """Compute the unnormalized per-image terms of the SSD loss.

    Returns:
        dict of float32 tensors of shape (B,): ``conf`` (cross-entropy over positives
        and mined negatives), ``loc`` (smooth L1 over positives), ``num_positive``.
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    target_offsets = y_true[..., :4]
    labels = tf.cast(y_true[..., 4], tf.int32)
    predicted_offsets = y_pred[..., :4]
    logits = y_pred[..., 4:]

    positive = labels > 0
    positive_f = tf.cast(positive, tf.float32)
    num_positive = tf.reduce_sum(positive_f, axis=-1)  # (B,)

    # Localization: smooth L1 summed over the four offsets of every positive box.
    loc = tf.reduce_sum(smooth_l1(predicted_offsets - target_offsets), axis=-1)
    loc = tf.reduce_sum(loc * positive_f, axis=-1)

    # Confidence loss of every default box.
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    hard_negative = hard_negative_mask(positive, cross_entropy, neg_pos_ratio, empty_image_negatives)
    selected = tf.cast(tf.logical_or(positive, hard_negative), tf.float32)
    conf = tf.reduce_sum(cross_entropy * selected, axis=-1)

    return {"conf": conf, "loc": loc, "num_positive": num_positive}


@keras.saving.register_keras_serializable(package="dl09")
class SSDLossTerms(keras.metrics.Metric):
    """Track the two terms of :class:`SSDLoss` apart: ``conf_loss`` and ``loc_loss``.

    Each batch's term is divided by the batch's positives, as the loss is. So
    with ``alpha = 1`` the two add up to the loss. Epochs average the batches,
    weighted by batch size. ``result()`` returns both, so history.csv gets the
    columns ``conf_loss``, ``loc_loss`` and their ``val_`` twins.
    """

    def __init__(self, neg_pos_ratio=3.0, empty_image_negatives=8, name="ssd_loss_terms", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.empty_image_negatives = int(empty_image_negatives)
        self.conf = keras.metrics.Mean(name="conf_loss")
        self.loc = keras.metrics.Mean(name="loc_loss")

    def update_state(self, y_true, y_pred, sample_weight=None):
        terms = ssd_loss_terms(y_true, y_pred, self.neg_pos_ratio, self.empty_image_negatives)
        # Each replica's share times the replicas, as Keras unscales its loss tracker, so the
        # replicas' mean equals the loss of the global batch.
        scale = float(num_replicas()) / tf.maximum(sum_over_replicas(tf.reduce_sum(terms["num_positive"])), 1.0)
        batch = tf.cast(tf.shape(y_true)[0], tf.float32)
        self.conf.update_state(tf.reduce_sum(terms["conf"]) * scale, sample_weight=batch)
        self.loc.update_state(tf.reduce_sum(terms["loc"]) * scale, sample_weight=batch)

    def result(self):
        return {"conf_loss": self.conf.result(), "loc_loss": self.loc.result()}

    def reset_state(self):
        self.conf.reset_state()
        self.loc.reset_state()

    def get_config(self):
        return {"neg_pos_ratio": self.neg_pos_ratio, "empty_image_negatives": self.empty_image_negatives,
                "name": self.name, "dtype": self.dtype}


# ---------------------------------------------------------------------------
# Faster R-CNN: the region proposal network loss and the Fast R-CNN head loss.
# ---------------------------------------------------------------------------

RPN_NORMALIZATIONS = ("sampled", "paper")


def _rpn_loss_sums(y_true, y_pred):
    """Compute the per-image sums of the RPN loss.

    Returns:
        classification: float32 (B,), cross-entropy summed over sampled anchors.
        regression: float32 (B,), smooth L1 summed over the offsets of positive anchors.
        num_sampled: float32 (B,), anchors with label 0 or 1.
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    labels = tf.cast(y_true[..., 4], tf.int32)
    sampled = tf.cast(labels >= 0, tf.float32)
    positive = tf.cast(tf.equal(labels, 1), tf.float32)

    # Ignored anchors (-1) get a valid dummy class and then weight 0.
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(labels, 0), logits=y_pred[..., :2]
    )
    classification = tf.reduce_sum(cross_entropy * sampled, axis=-1)

    box_loss = tf.reduce_sum(smooth_l1(y_pred[..., 2:6] - y_true[..., :4]), axis=-1)
    regression = tf.reduce_sum(box_loss * positive, axis=-1)
    return classification, regression, tf.reduce_sum(sampled, axis=-1)


def _rpn_normalizers(y_true, num_sampled, normalization, anchors_per_location):
    """Return (N_cls, N_reg) of the whole batch, each at least 1."""
    num_classification = tf.maximum(sum_over_replicas(tf.reduce_sum(num_sampled)), 1.0)
    if normalization == "sampled":
        return num_classification, num_classification

    shape = tf.shape(y_true)
    num_locations = sum_over_replicas(tf.cast(shape[0] * shape[1], tf.float32)) / float(anchors_per_location)
    return num_classification, tf.maximum(num_locations, 1.0)


def _validate_rpn_loss(normalization, box_weight, anchors_per_location):
    """Check the RPN loss settings and return the box weight, filled in from the normalization."""
    if normalization not in RPN_NORMALIZATIONS:
        raise ValueError(
            f"Invalid RPN loss normalization={normalization!r}: expected one of {RPN_NORMALIZATIONS}."
        )
    if box_weight is None:
        box_weight = 1.0 if normalization == "sampled" else 10.0
    if box_weight < 0:
        raise ValueError(f"Invalid RPN loss box_weight={box_weight}: expected a value >= 0.")
    if int(anchors_per_location) < 1:
        raise ValueError(f"Invalid anchors_per_location={anchors_per_location}: expected an integer >= 1.")
    return float(box_weight)


def rpn_loss_terms(y_true, y_pred, normalization="sampled", box_weight=None, anchors_per_location=9):
    """Compute the two terms of :class:`RPNLoss` for logging. Their sum is the loss.

    Returns:
        (classification, regression): float32 scalars, each already normalized, and
        the regression term multiplied by the box weight.
    """
    box_weight = _validate_rpn_loss(normalization, box_weight, anchors_per_location)
    classification, regression, num_sampled = _rpn_loss_sums(y_true, y_pred)
    num_classification, num_regression = _rpn_normalizers(
        y_true, num_sampled, normalization, anchors_per_location
    )
    return (
        tf.reduce_sum(classification) / num_classification,
        box_weight * tf.reduce_sum(regression) / num_regression,
    )


@keras.saving.register_keras_serializable(package="dl09")
class RPNLoss(keras.losses.Loss):
    """Loss of the region proposal network (Ren et al., 2015, "Faster R-CNN", eq. 1).

    ``L = 1/N_cls * sum_i L_cls(p_i, p_i*) + lambda * 1/N_reg * sum_i p_i* L_reg(t_i, t_i*)``
    with ``L_cls`` the 2-way softmax cross-entropy over sampled anchors and ``L_reg``
    the smooth L1 (beta 1) of the offsets of positive anchors. Both sums run over
    the whole batch, and each divisor is at least 1.

    Normalizations:
        ``"sampled"`` (common form): ``N_reg = N_cls`` = number of sampled anchors,
        ``lambda`` = box_weight, default 1.
        ``"paper"``: ``N_cls`` = sampled anchors, ``N_reg = B * A / anchors_per_location``
        anchor locations, ``lambda`` = box_weight, default 10.

    Shapes:
        y_true: (B, A, 5) from :class:`dl09_keras.matching.RPNTargetEncoder`:
            ``(ty, tx, th, tw, label)`` with label 1, 0 or -1 (ignored).
        y_pred: (B, A, 6): logits of (background, object), then ``(ty, tx, th, tw)``.

    Like :class:`SSDLoss`, ``call`` returns per-image values that are already
    divided by the batch normalizers, so the default reduction is ``"sum"``.

    Args:
        normalization: ``"sampled"`` or ``"paper"``. Default ``"sampled"``.
        box_weight: ``lambda``; None picks the default of the normalization.
        anchors_per_location: k anchors per feature-map cell. Default 9.
    """

    def __init__(self, normalization="sampled", box_weight=None, anchors_per_location=9, name="rpn_loss", **kwargs):
        kwargs.setdefault("reduction", "sum")
        super().__init__(name=name, **kwargs)
        self.box_weight = _validate_rpn_loss(normalization, box_weight, anchors_per_location)
        self.normalization = normalization
        self.anchors_per_location = int(anchors_per_location)

    def call(self, y_true, y_pred):
        classification, regression, num_sampled = _rpn_loss_sums(y_true, y_pred)
        num_classification, num_regression = _rpn_normalizers(
            y_true, num_sampled, self.normalization, self.anchors_per_location
        )
        return classification / num_classification + self.box_weight * regression / num_regression

    def get_config(self):
        config = super().get_config()
        config.update(
            normalization=self.normalization,
            box_weight=self.box_weight,
            anchors_per_location=self.anchors_per_location,
        )
        return config


@keras.saving.register_keras_serializable(package="dl09")
class FastRCNNLoss(keras.losses.Loss):
    """Loss of the Fast R-CNN detection head over the sampled rois.

    ``L = sum_r w_r CE_r / sum_r w_r + box_weight * sum_{r foreground} w_r smoothL1_r / sum_r w_r``
    where ``CE_r`` is the softmax cross-entropy over the C + 1 classes and
    ``smoothL1_r`` the smooth L1 (beta 1) of the deltas predicted for the roi's true
    class. Sums run over the whole batch, and the divisor is at least 1.
    :func:`dl09_keras.matching.sample_rois` gives weight 1 to sampled rois and 0 to
    padding.

    Shapes:
        y_true: (B, R, 6): class id as float (0 background), ``(ty, tx, th, tw)``, weight.
        y_pred: (B, R, (C + 1) * 5): C + 1 class logits, then the class-specific
            deltas, class-major: class ``c`` at ``[C + 1 + 4c, C + 1 + 4c + 4)``.

    Like :class:`SSDLoss`, ``call`` returns per-image values that are already
    divided by the batch weight, so the default reduction is ``"sum"``.

    Args:
        num_classes: C, the number of object classes without the background.
        box_weight: weight of the box term. Default 1.0.
    """

    def __init__(self, num_classes, box_weight=1.0, name="fast_rcnn_loss", **kwargs):
        kwargs.setdefault("reduction", "sum")
        super().__init__(name=name, **kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"Invalid num_classes={num_classes}: expected the number of object classes, >= 1.")
        if box_weight < 0:
            raise ValueError(f"Invalid FastRCNNLoss box_weight={box_weight}: expected a value >= 0.")
        self.num_classes = int(num_classes)
        self.box_weight = float(box_weight)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        num_outputs = self.num_classes + 1
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != num_outputs * 5:
            raise ValueError(
                f"Invalid FastRCNNLoss y_pred with {y_pred.shape[-1]} channels: expected "
                f"(num_classes + 1) * 5 = {num_outputs * 5} for num_classes={self.num_classes}."
            )

        classes = tf.cast(y_true[..., 0], tf.int32)
        weights = y_true[..., 5]
        total_weight = tf.maximum(tf.reduce_sum(weights), 1.0)

        logits = y_pred[..., :num_outputs]
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=logits)
        classification = tf.reduce_sum(cross_entropy * weights, axis=-1)

        # Deltas (B, R, C + 1, 4); each roi regresses the deltas of its true class.
        deltas = tf.reshape(y_pred[..., num_outputs:], tf.concat([tf.shape(logits)[:-1], [num_outputs, 4]], 0))
        class_deltas = tf.gather(deltas, classes, axis=2, batch_dims=2)
        box_loss = tf.reduce_sum(smooth_l1(class_deltas - y_true[..., 1:5]), axis=-1)
        foreground = tf.cast(classes > 0, tf.float32)
        regression = tf.reduce_sum(box_loss * foreground * weights, axis=-1)

        return (classification + self.box_weight * regression) / total_weight

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, box_weight=self.box_weight)
        return config


@keras.saving.register_keras_serializable(package="dl09")
class RPNLossTerms(keras.metrics.Metric):
    """Track the two terms of :class:`RPNLoss` apart: ``rpn_cls_loss`` and ``rpn_box_loss``.

    Each batch's terms come from :func:`rpn_loss_terms` with the loss's settings,
    so they add up to the RPN loss. Epochs average the batches, weighted by batch
    size. In a Faster R-CNN the rest of ``loss`` is the detection head's loss.
    """

    def __init__(self, normalization="sampled", box_weight=None, anchors_per_location=9, name="rpn_loss_terms",
                 dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.normalization = normalization
        self.box_weight = box_weight
        self.anchors_per_location = int(anchors_per_location)
        _validate_rpn_loss(normalization, box_weight, anchors_per_location)
        self.classification = keras.metrics.Mean(name="rpn_cls_loss")
        self.regression = keras.metrics.Mean(name="rpn_box_loss")

    def update_state(self, y_true, y_pred, sample_weight=None):
        classification, regression = rpn_loss_terms(
            y_true, y_pred, self.normalization, self.box_weight, self.anchors_per_location
        )
        batch = tf.cast(tf.shape(y_true)[0], tf.float32)
        scale = float(num_replicas())  # as for SSDLossTerms: the replicas' mean is the global loss
        self.classification.update_state(classification * scale, sample_weight=batch)
        self.regression.update_state(regression * scale, sample_weight=batch)

    def result(self):
        return {"rpn_cls_loss": self.classification.result(), "rpn_box_loss": self.regression.result()}

    def reset_state(self):
        self.classification.reset_state()
        self.regression.reset_state()

    def get_config(self):
        return {"normalization": self.normalization, "box_weight": self.box_weight,
                "anchors_per_location": self.anchors_per_location, "name": self.name, "dtype": self.dtype}
