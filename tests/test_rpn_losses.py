"""RPNLoss and FastRCNNLoss against hand-computed values and a NumPy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dl09_keras.losses import FastRCNNLoss, RPNLoss, rpn_loss_terms


def smooth_l1_np(x):
    x = np.abs(x)
    return np.where(x < 1.0, 0.5 * x ** 2, x - 0.5)


def cross_entropy_np(logits, labels):
    logits = np.asarray(logits, np.float64)
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    return -np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]


def rpn_loss_np(y_true, y_pred, normalization, box_weight, anchors_per_location):
    """Faster R-CNN eq. 1 summed over the batch, with N_cls and N_reg of the chosen form."""
    labels = y_true[..., 4].astype(np.int64)
    sampled = labels >= 0
    positive = labels == 1
    classification = cross_entropy_np(y_pred[..., :2], np.maximum(labels, 0))[sampled].sum()
    regression = smooth_l1_np(y_pred[..., 2:] - y_true[..., :4]).sum(-1)[positive].sum()
    num_classification = max(sampled.sum(), 1)
    if normalization == "sampled":
        num_regression = num_classification
    else:
        num_regression = max(y_true.shape[0] * y_true.shape[1] / anchors_per_location, 1)
    return classification / num_classification + box_weight * regression / num_regression


def fast_rcnn_loss_np(y_true, y_pred, num_classes, box_weight):
    classes = y_true[..., 0].astype(np.int64)
    weights = y_true[..., 5]
    classification = (cross_entropy_np(y_pred[..., :num_classes + 1], classes) * weights).sum()
    deltas = y_pred[..., num_classes + 1:].reshape(*classes.shape, num_classes + 1, 4)
    regression = 0.0
    for index in np.ndindex(classes.shape):
        if classes[index] > 0:
            error = deltas[index][classes[index]] - y_true[index][1:5]
            regression += weights[index] * smooth_l1_np(error).sum()
    return (classification + box_weight * regression) / max(weights.sum(), 1)


# --- RPNLoss ---

def rpn_hand_case():
    """One image, three anchors: a positive, a negative and an ignored one."""
    y_true = np.zeros((1, 3, 5), np.float32)
    y_true[0, :, 4] = [1, 0, -1]
    y_pred = np.zeros((1, 3, 6), np.float32)
    y_pred[0, 0] = [0.0, np.log(3.0), 0.5, -2.0, 0.0, 0.0]  # p(object) = 0.75, box error 0.125 + 1.5
    y_pred[0, 1] = [np.log(4.0), 0.0, 9.0, 9.0, 9.0, 9.0]  # p(background) = 0.8, deltas unused
    y_pred[0, 2] = [5.0, -5.0, 9.0, 9.0, 9.0, 9.0]  # ignored
    return y_true, y_pred


def test_rpn_loss_sampled_hand_value():
    y_true, y_pred = rpn_hand_case()
    expected = (-np.log(0.75) - np.log(0.8) + 1.625) / 2
    assert RPNLoss()(y_true, y_pred).numpy() == pytest.approx(expected, rel=1e-5)


def test_rpn_loss_paper_hand_value():
    y_true, y_pred = rpn_hand_case()
    # N_cls = 2 sampled anchors, N_reg = 1 image * 3 anchors / 3 per location = 1, lambda = 10.
    expected = (-np.log(0.75) - np.log(0.8)) / 2 + 10 * 1.625 / 1
    loss = RPNLoss(normalization="paper", anchors_per_location=3)(y_true, y_pred).numpy()
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("normalization,box_weight", [("sampled", None), ("sampled", 2.0), ("paper", None), ("paper", 1.0)])
def test_rpn_loss_matches_numpy_reference(normalization, box_weight):
    rng = np.random.default_rng(0)
    y_true = np.zeros((2, 18, 5), np.float32)
    y_true[..., :4] = rng.normal(0, 0.5, (2, 18, 4))
    y_true[..., 4] = rng.choice([-1, 0, 1], (2, 18))
    y_pred = rng.normal(0, 1.5, (2, 18, 6)).astype(np.float32)

    default_weight = 1.0 if normalization == "sampled" else 10.0
    expected = rpn_loss_np(y_true, y_pred, normalization, box_weight or default_weight, 9)
    loss = RPNLoss(normalization=normalization, box_weight=box_weight)(y_true, y_pred).numpy()
    assert loss == pytest.approx(expected, rel=1e-5)

    classification, regression = rpn_loss_terms(y_true, y_pred, normalization, box_weight)
    assert float(classification + regression) == pytest.approx(expected, rel=1e-5)


def test_rpn_loss_sums_over_the_batch():
    y_true, y_pred = rpn_hand_case()
    empty = np.full((1, 3, 5), -1, np.float32)
    # The second image samples nothing, so N_cls stays 2 and the loss is unchanged.
    batch = RPNLoss()(np.concatenate([y_true, empty]), np.concatenate([y_pred, y_pred])).numpy()
    assert batch == pytest.approx(RPNLoss()(y_true, y_pred).numpy(), rel=1e-6)
    assert RPNLoss()(empty, y_pred).numpy() == 0.0


def test_rpn_loss_terms_split_the_loss():
    y_true, y_pred = rpn_hand_case()
    classification, regression = rpn_loss_terms(y_true, y_pred)
    assert float(classification) == pytest.approx((-np.log(0.75) - np.log(0.8)) / 2, rel=1e-5)
    assert float(regression) == pytest.approx(1.625 / 2, rel=1e-5)


def test_rpn_loss_invalid_normalization():
    with pytest.raises(ValueError, match="normalization='mean'.*'sampled', 'paper'"):
        RPNLoss(normalization="mean")
    with pytest.raises(ValueError, match="box_weight=-1"):
        RPNLoss(box_weight=-1)


def test_rpn_loss_config_round_trip():
    loss = RPNLoss(normalization="paper", box_weight=3.0, anchors_per_location=15)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, RPNLoss)
    assert (restored.normalization, restored.box_weight, restored.anchors_per_location) == ("paper", 3.0, 15)
    assert restored.reduction == "sum"

    default = RPNLoss.from_config(RPNLoss(normalization="paper").get_config())
    assert default.box_weight == 10.0


# --- FastRCNNLoss ---

def fast_rcnn_hand_case():
    """One image, C = 2: a foreground roi of class 2, a background roi and a padding roi."""
    y_true = np.zeros((1, 3, 6), np.float32)
    y_true[0, 0] = [2, 0.5, 0.0, 0.0, 0.0, 1]
    y_true[0, 1] = [0, 0.0, 0.0, 0.0, 0.0, 1]
    y_true[0, 2] = [0, 0.0, 0.0, 0.0, 0.0, 0]
    y_pred = np.full((1, 3, 15), 7.0, np.float32)  # unused deltas are large on purpose
    y_pred[0, 0, :3] = np.log([0.2, 0.3, 0.5])
    y_pred[0, 0, 3 + 8:3 + 12] = [0.0, 0.0, 3.0, 0.0]  # class 2: errors -0.5 and 3
    y_pred[0, 1, :3] = np.log([0.6, 0.2, 0.2])
    y_pred[0, 2, :3] = [0.0, 9.0, 0.0]
    return y_true, y_pred


def test_fast_rcnn_loss_hand_value():
    y_true, y_pred = fast_rcnn_hand_case()
    # CE -log 0.5 and -log 0.6, smooth L1 0.125 + 2.5, divided by the weight sum 2.
    expected = (-np.log(0.5) - np.log(0.6) + 2.625) / 2
    assert FastRCNNLoss(2)(y_true, y_pred).numpy() == pytest.approx(expected, rel=1e-5)
    expected = (-np.log(0.5) - np.log(0.6) + 2 * 2.625) / 2
    assert FastRCNNLoss(2, box_weight=2.0)(y_true, y_pred).numpy() == pytest.approx(expected, rel=1e-5)


def test_fast_rcnn_loss_trains_true_class_deltas_only():
    y_true, y_pred = fast_rcnn_hand_case()
    prediction = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        loss = FastRCNNLoss(2)(y_true, prediction)
    gradient = tape.gradient(loss, prediction).numpy()[0]
    assert np.abs(gradient[0, 3 + 8:3 + 12]).sum() > 0
    np.testing.assert_array_equal(gradient[0, 3:3 + 8], 0.0)
    np.testing.assert_array_equal(gradient[1, 3:], 0.0)
    np.testing.assert_array_equal(gradient[2], 0.0)


def test_fast_rcnn_loss_matches_numpy_reference():
    rng = np.random.default_rng(1)
    num_classes = 3
    y_true = np.zeros((2, 5, 6), np.float32)
    y_true[..., 0] = rng.integers(0, num_classes + 1, (2, 5))
    y_true[..., 1:5] = rng.normal(0, 1.0, (2, 5, 4))
    y_true[..., 5] = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    y_true[..., 0] *= y_true[..., 5]  # padding rows are background
    y_pred = rng.normal(0, 1.5, (2, 5, (num_classes + 1) * 5)).astype(np.float32)

    expected = fast_rcnn_loss_np(y_true, y_pred, num_classes, 1.5)
    loss = FastRCNNLoss(num_classes, box_weight=1.5)(y_true, y_pred).numpy()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_fast_rcnn_loss_without_weight_is_zero():
    y_true, y_pred = fast_rcnn_hand_case()
    y_true[..., 5] = 0.0
    assert FastRCNNLoss(2)(y_true, y_pred).numpy() == 0.0


def test_fast_rcnn_loss_rejects_wrong_channels():
    y_true, y_pred = fast_rcnn_hand_case()
    with pytest.raises(ValueError, match="15 channels.*20 for num_classes=3"):
        FastRCNNLoss(3)(y_true, y_pred)
    with pytest.raises(ValueError, match="num_classes=0"):
        FastRCNNLoss(0)


def test_fast_rcnn_loss_config_round_trip():
    loss = FastRCNNLoss(5, box_weight=2.0)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, FastRCNNLoss)
    assert (restored.num_classes, restored.box_weight, restored.name) == (5, 2.0, "fast_rcnn_loss")
    assert restored.reduction == "sum"


def test_rpn_loss_terms_metric():
    from dl09_keras.losses import RPNLossTerms

    y_true, y_pred = rpn_hand_case()
    metric = RPNLossTerms()
    metric.update_state(y_true, y_pred)
    metric.update_state(y_true, y_pred)
    result = {k: float(v) for k, v in metric.result().items()}
    assert result["rpn_cls_loss"] == pytest.approx((-np.log(0.75) - np.log(0.8)) / 2, rel=1e-5)
    assert result["rpn_box_loss"] == pytest.approx(1.625 / 2, rel=1e-5)
    metric.reset_state()
    assert float(metric.result()["rpn_cls_loss"]) == 0.0
    assert RPNLossTerms.from_config(RPNLossTerms("paper").get_config()).normalization == "paper"
