"""Per parameter, each optimizer follows the matching Keras built-in for 100 steps of a small CNN.

Both optimizers start from the same weights and see the same batches. Where a
built-in differs by design, it is configured to the same equation:

- keras.optimizers.Adagrad starts its accumulator at 0.1, Duchi et al. (2011) at 0.
- keras.optimizers.Adadelta multiplies the step by a learning rate, 1 in
  Zeiler's method.
- keras.optimizers.Adam adds epsilon to sqrt(v) before the bias correction of
  v, so its epsilon changes with the step. Both get epsilon = 1e-30, which is
  negligible against sqrt(v_hat) here, so the placement cannot matter.
- keras.optimizers.SGD and Adam cast the momentum and the betas through
  float32, so the runs use 0.875 and 1 - 2**-10, which are exact in float32.
  Keras keeps every learning rate in a float32 variable, for both sides.

Tolerance: every weight agrees to rtol = 1e-6 (atol 1e-12 for weights near 0)
in float64. In float32 the two round differently wherever the built-in orders
its operations differently (Adam), so float32 is checked per variable, as the
largest difference relative to the largest weight, to 1e-5.
"""

import numpy as np
import pytest

import keras
import tensorflow as tf

import dl09_keras  # noqa: F401  (registers the optimizers)
from dl09_keras.optimizers import Adadelta, Adagrad, Adam, Momentum, Nesterov, RMSProp

STEPS = 100
MOMENTUM = 0.875
BETA_2 = 1 - 2.0 ** -10
TINY_EPSILON = 1e-30

PAIRS = {
    "momentum": (lambda: Momentum(0.05, momentum=MOMENTUM),
                 lambda: keras.optimizers.SGD(0.05, momentum=MOMENTUM)),
    "nesterov": (lambda: Nesterov(0.05, momentum=MOMENTUM),
                 lambda: keras.optimizers.SGD(0.05, momentum=MOMENTUM, nesterov=True)),
    "adagrad": (lambda: Adagrad(0.05, epsilon=1e-7),
                lambda: keras.optimizers.Adagrad(0.05, initial_accumulator_value=0.0, epsilon=1e-7)),
    "adadelta": (lambda: Adadelta(1.0, rho=0.95, epsilon=1e-6),
                 lambda: keras.optimizers.Adadelta(1.0, rho=0.95, epsilon=1e-6)),
    "rmsprop": (lambda: RMSProp(0.003, rho=0.9, epsilon=1e-7),
                lambda: keras.optimizers.RMSprop(0.003, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False)),
    "adam": (lambda: Adam(0.003, beta_1=MOMENTUM, beta_2=BETA_2, epsilon=TINY_EPSILON),
             lambda: keras.optimizers.Adam(0.003, beta_1=MOMENTUM, beta_2=BETA_2, epsilon=TINY_EPSILON)),
}


def small_cnn(dtype):
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((12, 12, 3), dtype=dtype),
        keras.layers.Conv2D(8, 3, activation="relu", dtype=dtype),
        keras.layers.Conv2D(8, 3, strides=2, activation="tanh", dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(5, dtype=dtype),
    ])


def train(optimizer, dtype):
    """Train for STEPS steps on four fixed batches; return the weights, the losses and the initial weights."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 16, 12, 12, 3)).astype(dtype)
    labels = rng.integers(0, 5, (4, 16))
    model = small_cnn(dtype)
    initial = [v.numpy() for v in model.trainable_variables]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    losses = [float(step(images[i % 4], labels[i % 4])) for i in range(STEPS)]
    return [v.numpy() for v in model.trainable_variables], losses, initial


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_follows_builtin_float64(name):
    make_ours, make_builtin = PAIRS[name]
    ours, our_losses, initial = train(make_ours(), "float64")
    builtin, builtin_losses, _ = train(make_builtin(), "float64")

    assert builtin_losses[-1] < builtin_losses[0], f"{name}: the built-in did not train, so the check is void"
    for index, (actual, expected) in enumerate(zip(ours, builtin)):
        assert np.max(np.abs(expected - initial[index])) > 1e-3, f"{name}: variable {index} did not move"
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-12, err_msg=f"{name}, variable {index}")
    np.testing.assert_allclose(our_losses, builtin_losses, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_follows_builtin_float32(name):
    make_ours, make_builtin = PAIRS[name]
    ours, _, _ = train(make_ours(), "float32")
    builtin, _, _ = train(make_builtin(), "float32")

    for index, (actual, expected) in enumerate(zip(ours, builtin)):
        relative = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
        assert relative <= 1e-5, f"{name}, variable {index}: relative difference {relative:.2e}"
