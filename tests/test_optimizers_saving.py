"""A model saved with each optimizer reloads in a fresh process and takes the same next step.

The test trains a compiled CNN for three steps, saves it as ``.keras`` and
takes a fourth step in this process. A fresh Python process loads the file
with ``safe_mode=True`` after ``import dl09_keras``, checks nothing else, and
takes the same fourth step on the same batch. The optimizer's slot variables
after loading and the weights after the fourth step must equal this process's
to float32 rounding (rtol 1e-6, atol 1e-7).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras

import dl09_keras  # noqa: F401  (registers the optimizers)
from dl09_keras.optimizers import Adadelta, Adagrad, Adam, Momentum, Nesterov, RMSProp

from conftest import REPO

OPTIMIZERS = {
    "momentum": lambda: Momentum(0.05, momentum=0.9, l2_decay=1e-3),
    "nesterov": lambda: Nesterov(0.05, momentum=0.9),
    "adagrad": lambda: Adagrad(0.05),
    "adagrad_neuron": lambda: Adagrad(0.05, initial_accumulator_value=0.1, granularity="neuron"),
    "adadelta_neuron": lambda: Adadelta(granularity="neuron"),
    "rmsprop_neuron": lambda: RMSProp(0.003, granularity="neuron"),
    "adam": lambda: Adam(0.003),
    "adam_uncorrected_neuron": lambda: Adam(0.003, bias_correction=False, epsilon_inside_sqrt=True,
                                            granularity="neuron"),
}

RELOAD_SCRIPT = """
import json, sys
import numpy as np
import keras
import dl09_keras

folder, names = sys.argv[1], sys.argv[2].split(",")
batch = np.load(f"{folder}/batch.npz")
report = {}
for name in names:
    model = keras.saving.load_model(f"{folder}/{name}.keras", safe_mode=True)
    optimizer = model.optimizer
    np.savez(f"{folder}/{name}_slots_reloaded.npz", *[v.numpy() for v in optimizer.variables])
    model.train_on_batch(batch["x"], batch["y"])
    np.savez(f"{folder}/{name}_next_reloaded.npz", *[v.numpy() for v in model.trainable_variables])
    report[name] = {"class": type(optimizer).__module__ + "." + type(optimizer).__name__,
                    "config": optimizer.get_config()}
print(json.dumps(report))
"""


def compiled_cnn(optimizer):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((10, 10, 3)),
        keras.layers.Conv2D(6, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def arrays(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def test_reload_continues_with_identical_step(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 10, 10, 3)).astype("float32")
    y = rng.integers(0, 4, 16)
    np.savez(tmp_path / "batch.npz", x=x, y=y)

    expected = {}
    for name, make in OPTIMIZERS.items():
        model = compiled_cnn(make())
        for _ in range(3):
            model.train_on_batch(x, y)
        model.save(tmp_path / f"{name}.keras")
        slots = [v.numpy() for v in model.optimizer.variables]
        model.train_on_batch(x, y)
        expected[name] = (model.optimizer, slots, [v.numpy() for v in model.trainable_variables])

    completed = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(tmp_path), ",".join(OPTIMIZERS)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    for name, (optimizer, slots, weights) in expected.items():
        assert report[name]["class"] == f"{type(optimizer).__module__}.{type(optimizer).__name__}", name
        assert report[name]["config"] == json.loads(json.dumps(optimizer.get_config())), name

        reloaded_slots = arrays(tmp_path / f"{name}_slots_reloaded.npz")
        assert len(reloaded_slots) == len(slots), name
        # The iteration count comes first; 3 steps were taken before saving.
        assert reloaded_slots[0] == 3, name
        for index, (actual, wanted) in enumerate(zip(reloaded_slots, slots)):
            np.testing.assert_array_equal(actual, wanted, err_msg=f"{name}: optimizer variable {index}")

        reloaded_weights = arrays(tmp_path / f"{name}_next_reloaded.npz")
        for index, (actual, wanted) in enumerate(zip(reloaded_weights, weights)):
            np.testing.assert_allclose(actual, wanted, rtol=1e-6, atol=1e-7, err_msg=f"{name}: weight {index}")


@pytest.mark.parametrize("name", ["adagrad_neuron", "adam_uncorrected_neuron"])
def test_reloaded_slots_keep_neuron_shape(tmp_path, name):
    model = compiled_cnn(OPTIMIZERS[name]())
    model.train_on_batch(np.zeros((2, 10, 10, 3), "float32"), np.zeros(2, "int32"))
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    shapes = sorted(tuple(v.shape) for v in reloaded.optimizer.variables)
    assert shapes == sorted(tuple(v.shape) for v in model.optimizer.variables)
    assert (1, 1, 1, 6) in shapes
    assert (1, 4) in shapes
