"""train.py behaviour: resume after an interruption, clear errors, the augmentation preview."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli

TINY = ["--data", "shapes", "--train-split", "val", "--input-size", "64", "--width", "0.25",
        "--batch-size", "16", "--verbose", "2"]


def read_history(run_dir):
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path):
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "train.py", *TINY, "--epochs", "4", "--run-dir", run_dir]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(read_history(run_dir)) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, "training ended before it could be interrupted"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)  # as a crash or a lost machine would
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    interrupted_at = len(read_history(run_dir))
    assert 2 <= interrupted_at < 4
    assert not os.path.isfile(os.path.join(run_dir, "model.keras"))

    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Resuming the unfinished run" in completed.stderr
    epochs = [int(row["epoch"]) for row in read_history(run_dir)]
    # The restarted process trains only the epochs that were missing.
    assert epochs == list(range(4)), epochs
    assert f"Epoch {interrupted_at + 1}/4" in completed.stdout
    assert f"Epoch {interrupted_at}/4" not in completed.stdout
    assert os.path.isfile(os.path.join(run_dir, "model.keras"))


def test_finished_run_is_not_overwritten_by_accident(tmp_path):
    run_dir = str(tmp_path / "run")
    run_cli("train", *TINY, "--epochs", "1", "--run-dir", run_dir)
    completed = run_cli("train", *TINY, "--epochs", "1", "--run-dir", run_dir, check=False)
    assert completed.returncode == 2
    assert "already contains a finished run" in completed.stderr
    assert "--overwrite" in completed.stderr


@pytest.mark.parametrize("args, message", [
    (["--input-size", "32"], "invalid input size '32'"),
    (["--batch-size", "500"], "fewer than batch_size=500"),
    (["--data", "voc:/no/such/folder"], "VOC dataset folder not found: /no/such/folder"),
    (["--optimizer", "adamx"], "Unknown optimizer 'adamx'"),
    (["--scales", "0.5"], "Invalid --scales '0.5'"),
    (["--stop-at-map", "0.5"], "--stop-at-map needs --val-split"),
])
def test_bad_options_get_clear_errors(tmp_path, args, message):
    options = [*TINY, "--epochs", "1", "--run-dir", str(tmp_path / "run")]
    for flag, value in zip(args[::2], args[1::2]):
        index = options.index(flag) if flag in options else None
        if index is None:
            options += [flag, value]
        else:
            options[index + 1] = value
    completed = run_cli("train", *options, check=False)
    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "run").exists()  # a failed start leaves no run folder behind


def test_augment_preview_draws_samples(tmp_path):
    output = tmp_path / "preview"
    completed = run_cli("augment-preview", "--data", "shapes", "--output", str(output), "--count", "4",
                        "--input-size", "128")
    assert "Wrote 4 images" in completed.stdout
    assert sorted(os.listdir(output)) == [f"augmented_{i:03d}.png" for i in range(4)]


def test_history_keeps_the_map_column(tmp_path):
    run_dir = str(tmp_path / "run")
    run_cli("train", *TINY, "--val-split", "test", "--epochs", "2", "--map-every", "2", "--run-dir", run_dir)
    rows = read_history(run_dir)
    assert [row["val_map"] for row in rows][0] == "nan"  # not computed in epoch 1
    assert 0.0 <= float(rows[1]["val_map"]) <= 1.0
