"""The optimizers under XLA, in mixed precision and under tf.distribute.MirroredStrategy.

Every optimizer runs in its hardest configuration here: per neuron where it has
a second moment, with the L2 term for momentum and Nesterov.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras
import tensorflow as tf

import dl09_keras  # noqa: F401  (registers the optimizers)
from dl09_keras.optimizers import Adadelta, Adagrad, Adam, Momentum, Nesterov, RMSProp

from conftest import REPO

OPTIMIZERS = {
    "momentum": lambda: Momentum(0.05, momentum=0.9, l2_decay=1e-3),
    "nesterov": lambda: Nesterov(0.05, momentum=0.9, l2_decay=1e-3),
    "adagrad": lambda: Adagrad(0.05, granularity="neuron"),
    "adadelta": lambda: Adadelta(granularity="neuron"),
    "rmsprop": lambda: RMSProp(0.003, granularity="neuron"),
    "adam": lambda: Adam(0.003, granularity="neuron"),
    "adam_uncorrected": lambda: Adam(0.003, bias_correction=False, epsilon_inside_sqrt=True, granularity="neuron"),
}


def cnn(output_dtype=None):
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((10, 10, 3)),
        keras.layers.Conv2D(6, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dense(4, dtype=output_dtype),
    ])


def batches():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 10, 10, 3)).astype("float32"), rng.integers(0, 4, 64)


def largest_relative_difference(actual, expected):
    """The largest absolute difference of each variable, relative to its largest magnitude; max over variables."""
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(actual, expected))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_xla_update_matches_graph_update(name):
    # The optimizer alone, on fixed gradients, so only its own arithmetic is compared: rtol 1e-6 per variable.
    rng = np.random.default_rng(1)
    shapes = [(6, 4), (3, 3, 2, 5), (5,)]
    initial = [rng.normal(size=s).astype("float32") for s in shapes]
    gradients = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(20)]

    results = {}
    for jit_compile in (False, True):
        variables = [keras.Variable(w) for w in initial]
        optimizer = OPTIMIZERS[name]()
        apply = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=jit_compile)
        for grads in gradients:
            apply([tf.constant(g) for g in grads])
        results[jit_compile] = [v.numpy() for v in variables]

    assert largest_relative_difference(results[False], initial) > 1e-3, "the variables did not move"
    assert largest_relative_difference(results[True], results[False]) <= 1e-6


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_with_jit_compile(name):
    # XLA compiles the whole training step, forward and backward passes included, and rounds differently from the
    # graph run there, so whole-model training is held to 1e-4 relative per variable.
    x, y = batches()
    weights = {}
    for jit_compile in (False, True):
        model = cnn()
        model.compile(OPTIMIZERS[name](), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit_compile)
        history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        weights[jit_compile] = [v.numpy() for v in model.trainable_variables]
    assert largest_relative_difference(weights[True], weights[False]) <= 1e-4


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mixed_precision_fit(name, mixed_float16):
    x, y = batches()
    model = cnn(output_dtype="float32")
    initial = [v.numpy() for v in model.trainable_variables]
    model.compile(OPTIMIZERS[name](), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)

    # Keras wraps the optimizer to scale the loss; the float16 forward pass keeps float32 variables and slots.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = model.optimizer.inner_optimizer
    assert type(inner) is type(OPTIMIZERS[name]())
    assert int(inner.iterations.numpy()) == 4, "a step was skipped for an overflow"
    assert model.layers[0].compute_dtype == "float16"
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    # Every optimizer variable but the int64 step counter: the learning rate and the slots.
    assert {v.dtype for v in inner.variables if v is not inner.iterations} == {"float32"}
    mixed = [v.numpy() for v in model.trainable_variables]
    assert all(np.all(np.isfinite(w)) for w in mixed)

    # The same steps in float32 move the weights the same way, up to the float16 rounding of the forward pass:
    # each variable's step agrees to 25% of its largest element, which a momentum step on a gradient still
    # multiplied by the loss scale would fail.
    keras.config.set_dtype_policy("float32")
    reference = cnn()
    reference.compile(OPTIMIZERS[name](), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    mixed_steps = [w - w0 for w, w0 in zip(mixed, initial)]
    float32_steps = [v.numpy() - w0 for v, w0 in zip(reference.trainable_variables, initial)]
    assert largest_relative_difference(mixed_steps, float32_steps) <= 0.25


MIRRORED_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import dl09_keras
from dl09_keras.optimizers import get_optimizer

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 10, 10, 3)).astype("float32")
y = rng.integers(0, 4, 32)


def train(spec, strategy):
    with strategy.scope():
        keras.utils.set_random_seed(3)
        # No batch normalization: each replica would normalize with its own half of the batch.
        model = keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Conv2D(6, 3, activation="relu"),
                                  keras.layers.Flatten(), keras.layers.Dense(4)])
        initial = [v.numpy() for v in model.trainable_variables]
        # Adadelta has no learning rate of its own; 1 keeps its steps unscaled.
        learning_rate = 1.0 if spec.startswith("dl09_adadelta") else 0.01
        model.compile(get_optimizer(spec, learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model, initial


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
report = {}
for spec in sys.argv[1].split(";"):
    single, initial = train(spec, tf.distribute.get_strategy())
    replicated, _ = train(spec, mirrored)
    copies = [[c.numpy() for c in mirrored.experimental_local_results(v.value)] for v in replicated.optimizer.variables]
    single_weights = [v.numpy() for v in single.trainable_variables]
    report[spec] = {
        "class": type(replicated.optimizer).__name__,
        "replicas": mirrored.num_replicas_in_sync,
        "fewest_copies_of_a_slot": min(len(c) for c in copies),
        "largest_gap_between_copies": max(float(np.max(np.abs(c - group[0]))) for group in copies for c in group),
        "iterations": int(replicated.optimizer.iterations.numpy()),
        "single_moved": min(float(np.max(np.abs(w - w0))) for w, w0 in zip(single_weights, initial)),
        "relative_difference": max(
            float(np.max(np.abs(v.numpy() - w)) / np.max(np.abs(w)))
            for v, w in zip(replicated.trainable_variables, single_weights)
        ),
    }
print(json.dumps(report))
"""

MIRRORED_SPECS = [
    "dl09_momentum:l2_decay=0.001",
    "dl09_nesterov:l2_decay=0.001",
    "dl09_adagrad:granularity=neuron",
    "dl09_adadelta:granularity=neuron",
    "dl09_rmsprop:granularity=neuron",
    "dl09_adam:granularity=neuron",
]


def test_mirrored_strategy_matches_one_device():
    # Two logical CPU devices, 4 steps of a global batch of 8; the replicas' summed gradients equal the
    # one-device gradient up to float32 summation order, so the weights agree to 1e-5 relative.
    completed = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, ";".join(MIRRORED_SPECS)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    for spec in MIRRORED_SPECS:
        entry = report[spec]
        assert entry["replicas"] == 2, spec
        assert entry["fewest_copies_of_a_slot"] == 2, f"{spec}: a slot variable is not mirrored"
        assert entry["largest_gap_between_copies"] == 0.0, f"{spec}: the replicas' slots diverged"
        assert entry["iterations"] == 4, spec
        assert entry["single_moved"] > 1e-4, f"{spec}: a variable did not move, so the comparison is void"
        assert entry["relative_difference"] <= 1e-5, spec
