"""train.py behaviour: resume after an interruption, clear errors, the augmentation preview."""

import csv
import os

import pytest

from conftest import run_cli

TINY = ["--data", "shapes", "--train-split", "val", "--input-size", "64", "--width", "0.25",
        "--batch-size", "16", "--verbose", "2"]


def read_history(run_dir):
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


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
