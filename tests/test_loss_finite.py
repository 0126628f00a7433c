"""SSDLoss and its gradients stay finite on background-only batches, the smallest boxes and the largest."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dl09_keras.anchors import DefaultBoxConfig, default_boxes
from dl09_keras.losses import SSDLoss
from dl09_keras.matching import TargetEncoder
from dl09_keras.models import SSDConfig, build_ssd, feature_shapes

SIDE = 64  # input size in pixels
PIXEL = 1.0 / SIDE  # one pixel in normalized coordinates
BATCH = 2

# Each case lists the boxes (normalized corners) of every image in the batch.
CASES = {
    "background_only": [np.zeros((0, 4)), np.zeros((0, 4))],
    "one_pixel_boxes": [
        np.array([[0.5, 0.5, 0.5 + PIXEL, 0.5 + PIXEL]]),
        np.array([[0.0, 0.0, PIXEL, PIXEL], [1.0 - PIXEL, 1.0 - PIXEL, 1.0, 1.0]]),  # image corners
    ],
    # Without the encoder's floor on the box size, log(size) of this box is -inf.
    "zero_size_box": [np.array([[0.3, 0.4, 0.3, 0.4]]), np.zeros((0, 4))],
    "whole_image": [np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]])],
}


def build_model():
    config = SSDConfig(num_classes=3, input_size=(SIDE, SIDE), width=0.25, box_config=DefaultBoxConfig())
    return build_ssd(config)


@pytest.fixture(scope="module")
def model():
    return build_model()


@pytest.fixture(scope="module")
def encoder(model):
    anchors = default_boxes(feature_shapes(model), (SIDE, SIDE), DefaultBoxConfig())
    return TargetEncoder(anchors, DefaultBoxConfig().variances)


def encode(encoder, images_boxes):
    """Encode the targets (B, A, 5) of one batch, with label 0 (class 1) for every box."""
    targets = []
    for boxes in images_boxes:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        targets.append(encoder(boxes, np.zeros(len(boxes), np.int32)))
    return tf.stack(targets)


def images(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (BATCH, SIDE, SIDE, 3)).astype(np.float32)


def assert_all_finite(values, description):
    for value in values:
        assert value is not None, f"{description}: no gradient"
        assert np.all(np.isfinite(np.asarray(value))), f"{description}: not finite"


@pytest.mark.parametrize("case", CASES)
def test_targets_are_finite(encoder, case):
    targets = encode(encoder, CASES[case]).numpy()
    assert np.all(np.isfinite(targets))
    num_boxes = [len(boxes) for boxes in CASES[case]]
    positives = (targets[..., 4] > 0).sum(axis=1)
    for image, count in enumerate(num_boxes):
        # Every object gets at least its best default box, however small or large it is.
        if count:
            assert positives[image] >= count, (image, positives)
        else:
            assert positives[image] == 0, (image, positives)


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_are_finite(model, encoder, case):
    targets = encode(encoder, CASES[case])
    with tf.GradientTape() as tape:
        predictions = model(images(), training=True)
        loss = SSDLoss()(targets, predictions)
    gradients = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(loss.numpy())
    assert loss.numpy() > 0  # background-only images still add mined negatives
    assert_all_finite(gradients, f"{case} weight gradients")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_loss_is_finite_on_extreme_outputs(encoder, case, scale):
    targets = encode(encoder, CASES[case])
    shape = (BATCH, encoder.num_default_boxes, 4 + 3 + 1)
    outputs = tf.Variable(np.random.default_rng(1).normal(0, scale, shape).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = SSDLoss()(targets, outputs)
    assert np.isfinite(loss.numpy())
    assert_all_finite([tape.gradient(loss, outputs)], f"{case} output gradients at scale {scale}")


@pytest.fixture(scope="module")
def compiled_model():
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=SSDLoss())
    return model


@pytest.mark.parametrize("case", CASES)
def test_training_step_is_finite(compiled_model, encoder, case):
    targets = encode(encoder, CASES[case]).numpy()
    loss = compiled_model.train_on_batch(images(), targets)
    assert np.isfinite(loss), f"loss {loss}"
    assert_all_finite([w.numpy() for w in compiled_model.trainable_variables], f"{case} weights after the step")
