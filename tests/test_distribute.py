"""--strategy, --mixed-precision and --jit: each against the plain single-device float32 step."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

# One tiny SSD, a fixed batch of 8 shapes images and its targets, shared by the checks below.
SETUP = '''
import numpy as np
import keras
from dl09_keras.anchors import DefaultBoxConfig, default_boxes
from dl09_keras.data import generate_shapes
from dl09_keras.data.augment import resize_for_model
from dl09_keras.losses import SSDLoss, SSDLossTerms
from dl09_keras.matching import TargetEncoder
from dl09_keras.models import SSDConfig, build_ssd, feature_shapes

config = SSDConfig(3, (96, 128), width=0.25, num_maps=4)
samples = generate_shapes("val").samples[:8]
images = np.stack([resize_for_model(s.image, config.input_size).numpy() for s in samples])


def build():
    keras.utils.set_random_seed(1)
    return build_ssd(config)


initial = [w.numpy() for w in build().trainable_weights]
encoder = TargetEncoder(default_boxes(feature_shapes(build()), config.input_size, DefaultBoxConfig()))
# The first image keeps all its objects and the others one each, so the two halves of the
# batch hold different numbers of matched boxes: a per-replica normalization would differ.
targets = np.stack([encoder(s.boxes[: None if i == 0 else 1], s.labels[: None if i == 0 else 1]).numpy()
                    for i, s in enumerate(samples)])


def train_step(strategy=None, jit=False):
    import tensorflow as tf

    with (strategy or tf.distribute.get_strategy()).scope():
        model = build()
        model.compile(keras.optimizers.SGD(0.05), SSDLoss(), metrics=[SSDLossTerms()], jit_compile=jit)
    history = model.fit(images, targets, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    return {k: v[0] for k, v in history.items()}, [w.numpy() for w in model.trainable_weights]


def relative_update_difference(weights, reference):
    """|w - w_ref| over |w_ref - w_initial|, over all trainable weights."""
    difference = sum(np.sum((a - b) ** 2) for a, b in zip(weights, reference))
    update = sum(np.sum((b - c) ** 2) for b, c in zip(reference, initial))
    return float(np.sqrt(difference / update))
'''

CHECKS = '''
import json
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
''' + SETUP + '''
from dl09_keras.distribute import make_strategy, set_precision

single, single_weights = train_step()
strategy = make_strategy("mirrored")
mirrored, mirrored_weights = train_step(strategy)
jit, jit_weights = train_step(jit=True)
# Mixed precision last: it changes Keras' global dtype policy.
policy = set_precision(True)
model = build()
outputs = model(images[:2])
mixed, mixed_weights = train_step()
print(json.dumps({
    "single": single,
    "replicas": strategy.num_replicas_in_sync,
    "mirrored": mirrored,
    "mirrored_difference": relative_update_difference(mirrored_weights, single_weights),
    "jit": jit,
    "jit_difference": relative_update_difference(jit_weights, single_weights),
    "policy": policy,
    "mixed": mixed,
    "mixed_difference": relative_update_difference(mixed_weights, single_weights),
    "output_dtype": outputs.dtype.name,
    "weight_dtype": str(mixed_weights[0].dtype),
}))
'''


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Run the single-device, mirrored, XLA and mixed-precision steps in one fresh process."""
    path = tmp_path_factory.mktemp("distribute") / "check.py"
    path.write_text(CHECKS)
    completed = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_mirrored_equals_one_device(steps):
    assert steps["replicas"] == 2
    for name in ("loss", "conf_loss", "loc_loss"):
        assert steps["mirrored"][name] == pytest.approx(steps["single"][name], rel=1e-5), name
    # Summed replica gradients without the global normalization would be about twice the update.
    assert steps["mirrored_difference"] < 0.01


def test_jit_equals_plain_step(steps):
    assert steps["jit"]["loss"] == pytest.approx(steps["single"]["loss"], rel=1e-5)
    assert steps["jit_difference"] < 0.01


def test_mixed_precision_step(steps):
    assert steps["policy"] == "mixed_bfloat16"  # the tests run without a GPU
    assert steps["output_dtype"] == "float32"
    assert steps["weight_dtype"] == "float32"
    # bfloat16 keeps 8 bits of mantissa: the loss agrees to about 1%, the update to about 10%.
    assert steps["mixed"]["loss"] == pytest.approx(steps["single"]["loss"], rel=0.02)
    assert steps["mixed_difference"] < 0.2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multiworker_two_processes(tmp_path):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    run_dir = tmp_path / "run"
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config), TMPDIR=str(tmp_path))
        processes.append(subprocess.Popen(
            [sys.executable, "train.py", "--strategy", "multiworker", "--data", "shapes", "--train-split", "val",
             "--input-size", "96x128", "--width", "0.25", "--epochs", "1", "--batch-size", "16",
             "--run-dir", str(run_dir), "--verbose", "2"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]

    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["status"] == "finished"
    assert metadata["training"]["strategy"] == {"name": "multiworker", "replicas": 2}
    assert (run_dir / "model.keras").is_file()
    # Worker 1 wrote its copy into a temporary folder, never into the chief's run folder.
    copies = [p for p in tmp_path.iterdir() if p.name.startswith("dl09-worker1-")]
    assert len(copies) == 1
    assert "writes its copy of the run" in outputs[1]
    history = np.genfromtxt(run_dir / "history.csv", delimiter=",", names=True)
    assert np.isfinite(history["loss"])
