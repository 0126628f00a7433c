"""Smooth L1 and the SSD loss with hard negative mining."""

from __future__ import annotations

import keras
import tensorflow as tf


def smooth_l1(x):
    """Element-wise smooth L1: ``0.5 x^2`` where ``|x| < 1``, else ``|x| - 0.5``."""
    absolute = tf.abs(x)
    return tf.where(absolute < 1.0, 0.5 * tf.square(x), absolute - 0.5)


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
        num_positive = tf.maximum(tf.reduce_sum(losses["num_positive"]), 1.0)
        return (losses["conf"] + self.alpha * losses["loc"]) / num_positive

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            neg_pos_ratio=self.neg_pos_ratio,
            empty_image_negatives=self.empty_image_negatives,
        )
        return config


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

    # Hard negative mining: rank the negatives by their loss, keep the top k per image.
    num_negative_available = tf.reduce_sum(1.0 - positive_f, axis=-1)
    wanted = tf.where(
        num_positive > 0, neg_pos_ratio * num_positive, float(empty_image_negatives)
    )
    num_negative = tf.minimum(tf.floor(wanted), num_negative_available)
    negative_loss = tf.where(positive, -1.0, cross_entropy)
    order = tf.argsort(negative_loss, axis=-1, direction="DESCENDING")
    rank = tf.argsort(order, axis=-1)
    hard_negative = tf.cast(rank, tf.float32) < num_negative[:, None]
    selected = tf.cast(tf.logical_or(positive, hard_negative), tf.float32)
    conf = tf.reduce_sum(cross_entropy * selected, axis=-1)

    return {"conf": conf, "loc": loc, "num_positive": num_positive}
