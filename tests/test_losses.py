import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dl09_keras.losses import SSDLoss, smooth_l1


def logits_for(probabilities):
    return np.log(np.asarray(probabilities, np.float32))


def make_case():
    """One image, 6 default boxes, 2 classes + background; box 0 positive (class 1)."""
    y_true = np.zeros((1, 6, 5), np.float32)
    y_true[0, 0] = [0.5, -0.5, 2.0, 0.0, 1]
    y_pred = np.zeros((1, 6, 4 + 3), np.float32)
    y_pred[0, 0, :4] = [0.0, 0.0, 0.0, 0.0]
    # Background probability of each box; the rest split evenly over the two classes.
    background = [0.5, 0.9, 0.2, 0.6, 0.4, 0.95]
    for i, p in enumerate(background):
        y_pred[0, i, 4:] = logits_for([p, (1 - p) / 2, (1 - p) / 2])
    return y_true, y_pred, background


def test_smooth_l1_hand_values():
    values = smooth_l1(tf.constant([0.0, 0.5, -0.5, 1.0, -2.0, 3.0])).numpy()
    np.testing.assert_allclose(values, [0.0, 0.125, 0.125, 0.5, 1.5, 2.5])


def test_loss_keeps_three_hardest_negatives_per_positive():
    y_true, y_pred, background = make_case()
    loss = SSDLoss()(y_true, y_pred).numpy()
    # Positive: -log(0.25). Hardest negatives: lowest background probability 0.2, 0.4, 0.6.
    conf = -np.log(0.25) - np.log(0.2) - np.log(0.4) - np.log(0.6)
    loc = 0.125 + 0.125 + 1.5 + 0.0  # smooth L1 of the errors 0.5, 0.5, 2, 0
    assert loss == pytest.approx((conf + loc) / 1, rel=1e-5)


def test_mining_ratio_and_alpha_are_configurable():
    y_true, y_pred, _ = make_case()
    loss = SSDLoss(alpha=2.0, neg_pos_ratio=1)(y_true, y_pred).numpy()
    conf = -np.log(0.25) - np.log(0.2)
    assert loss == pytest.approx(conf + 2.0 * 1.75, rel=1e-5)


def test_loss_is_divided_by_positives_of_the_batch():
    y_true, y_pred, _ = make_case()
    single = SSDLoss()(y_true, y_pred).numpy()
    # The same image twice: twice the sum over twice the positives.
    doubled = SSDLoss()(np.concatenate([y_true] * 2), np.concatenate([y_pred] * 2)).numpy()
    assert doubled == pytest.approx(single, rel=1e-5)


def test_batch_without_objects_follows_the_paper_when_asked():
    _, y_pred, _ = make_case()
    empty = np.zeros((1, 6, 5), np.float32)
    assert SSDLoss(empty_image_negatives=0)(empty, y_pred).numpy() == 0.0


def test_background_only_image_still_teaches_nothing_here():
    _, y_pred, background = make_case()
    empty = np.zeros((1, 6, 5), np.float32)
    loss = SSDLoss(empty_image_negatives=2)(empty, y_pred).numpy()
    # N = 0 is replaced by 1; the two hardest negatives have background 0.2 and 0.4.
    assert loss == pytest.approx(-np.log(0.2) - np.log(0.4), rel=1e-5)

    logits = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = SSDLoss(empty_image_negatives=2)(empty, logits)
    gradient = tape.gradient(value, logits).numpy()[0]
    # Gradient descent raises the background logit of exactly the two mined boxes (2 and 4).
    assert gradient[2, 4] < 0
    assert gradient[4, 4] < 0
    np.testing.assert_array_equal(gradient[[0, 1, 3, 5], 4], 0.0)


def test_empty_image_adds_negatives_to_batch():
    y_true, y_pred, _ = make_case()
    empty = np.zeros((1, 6, 5), np.float32)
    alone = SSDLoss(empty_image_negatives=1)(y_true, y_pred).numpy()
    together = SSDLoss(empty_image_negatives=1)(np.concatenate([y_true, empty]), np.concatenate([y_pred, y_pred])).numpy()
    # N stays 1; the empty image adds its hardest negative (background 0.2).
    assert together == pytest.approx(alone - np.log(0.2), rel=1e-5)


def test_loss_config_round_trip():
    loss = SSDLoss(alpha=0.5, neg_pos_ratio=2, empty_image_negatives=4)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, SSDLoss)
    assert (restored.alpha, restored.neg_pos_ratio, restored.empty_image_negatives) == (0.5, 2.0, 4)


def test_invalid_loss_setting_names_the_value():
    with pytest.raises(ValueError, match="neg_pos_ratio=-1"):
        SSDLoss(neg_pos_ratio=-1)


def test_loss_terms_metric_adds_to_loss():
    from dl09_keras.losses import SSDLossTerms

    y_true, y_pred, _ = make_case()
    metric = SSDLossTerms()
    metric.update_state(y_true, y_pred)
    result = {k: float(v) for k, v in metric.result().items()}
    loss = float(SSDLoss()(y_true, y_pred))
    assert result["conf_loss"] + result["loc_loss"] == pytest.approx(loss, rel=1e-6)
    assert result["loc_loss"] > 0.0
    assert SSDLossTerms.from_config(SSDLossTerms(neg_pos_ratio=2.0).get_config()).neg_pos_ratio == 2.0
