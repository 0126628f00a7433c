"""Shared fixtures: paths to the real datasets and tiny trained runs (SSD, Faster R-CNN) for the later stages."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("DL09_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
BCCD = os.path.join(SHARED, "datasets", "bccd")
AQUARIUM = os.path.join(SHARED, "datasets", "aquarium")
VIDEOS = os.path.join(SHARED, "videos")


def require(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} not found: the real datasets and videos live in ../shared beside the checkout")
    return path


def run_cli(*args, timeout=600, env=None, check=True):
    """Run ``python -m dl09_keras.cli ARGS`` in a fresh process and return the completed process."""
    full_env = dict(os.environ, **(env or {}))
    completed = subprocess.run(
        [sys.executable, "-m", "dl09_keras.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=full_env,
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"dl09 {' '.join(args)} exited with {completed.returncode}\n"
            f"stdout:\n{completed.stdout[-3000:]}\nstderr:\n{completed.stderr[-5000:]}"
        )
    return completed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder trained for one short epoch on shapes and exported to ONNX and TFLite."""
    run_dir = str(tmp_path_factory.mktemp("runs") / "tiny")
    run_cli(
        "train", "--data", "shapes", "--train-split", "val", "--val-split", "test",
        "--input-size", "96x128", "--width", "0.25", "--neck", "fpn", "--neck-channels", "16",
        "--epochs", "1", "--batch-size", "16",
        "--run-dir", run_dir, "--verbose", "2",
    )
    completed = subprocess.run(
        [sys.executable, "-m", "export", run_dir, "--to", "onnx", "tflite",
         "--calibration-images", "16", "--parity-images", "5"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return run_dir


@pytest.fixture(scope="session")
def tiny_rcnn_run(tmp_path_factory):
    """A Faster R-CNN run trained for one short epoch on shapes and exported to ONNX and TFLite."""
    run_dir = str(tmp_path_factory.mktemp("runs") / "faster_rcnn")
    run_cli(
        "train", "--model", "faster_rcnn", "--data", "shapes", "--train-split", "val", "--val-split", "test",
        "--input-size", "96x128", "--width", "0.25", "--rpn-channels", "32", "--epochs", "1",
        "--batch-size", "16", "--run-dir", run_dir, "--verbose", "2",
    )
    completed = subprocess.run(
        [sys.executable, "-m", "export", run_dir, "--to", "onnx", "tflite",
         "--calibration-images", "8", "--parity-images", "3"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return run_dir
