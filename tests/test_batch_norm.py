"""The fused batch normalization of the backbones against Keras' BatchNormalization."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from dl09_keras.models.backbones import FusedBatchNormalization


def run_layer(layer, x, upstream, gamma, beta):
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, training=True) * upstream)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return {
        "output": layer(x, training=True).numpy(), "input_gradient": grads[0].numpy(),
        "gamma_gradient": grads[1].numpy(), "beta_gradient": grads[2].numpy(),
        "moving_mean": layer.moving_mean.numpy(), "moving_variance": layer.moving_variance.numpy(),
        "inference": layer(x, training=False).numpy(),
    }


@pytest.mark.parametrize("shape", [(4, 6, 5, 8), (1, 3, 3, 2)])
def test_fused_matches_keras_batch_norm(shape):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, shape).astype(np.float32))
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
    gamma = rng.normal(1.0, 0.2, shape[-1]).astype(np.float32)
    beta = rng.normal(0.0, 0.2, shape[-1]).astype(np.float32)
    reference = run_layer(keras.layers.BatchNormalization(momentum=0.9), x, upstream, gamma, beta)
    fused = run_layer(FusedBatchNormalization(momentum=0.9), x, upstream, gamma, beta)
    for name, expected in reference.items():
        np.testing.assert_allclose(fused[name], expected, rtol=1e-4, atol=2e-5, err_msg=name)


def test_fused_falls_back_for_rank_2():
    layer = FusedBatchNormalization()
    x = tf.constant(np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32))
    reference = keras.layers.BatchNormalization()
    np.testing.assert_allclose(layer(x, training=True), reference(x, training=True), atol=1e-5)


def test_fused_reloads_from_a_keras_file(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(inputs))
    model.get_layer("bn").moving_mean.assign([1.0, 2.0, 3.0])
    path = str(tmp_path / "bn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization)
    np.testing.assert_array_equal(loaded.get_layer("bn").moving_mean.numpy(), [1.0, 2.0, 3.0])
