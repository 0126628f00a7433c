"""Training that survives a kill: atomic run-folder writes, the resume state, and a real SIGKILL."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest

from conftest import REPO
from dl09_keras.atomic import (
    TEMPORARY_PREFIX,
    AtomicBackupAndRestore,
    HistoryCSVLogger,
    atomic_path,
    read_history,
    remove_temporaries,
    write_json,
    write_text,
)
from dl09_keras.run import RunFolder

EPOCHS = 3
BATCH_SIZE = 16
TRAIN_IMAGES = 160  # the shapes "val" split
TINY = ["--data", "shapes", "--train-split", "val", "--input-size", "64", "--width", "0.25",
        "--batch-size", str(BATCH_SIZE), "--verbose", "2"]


def temporaries(folder):
    """Every path under ``folder`` whose name marks an unfinished atomic write."""
    found = []
    for parent, folders, files in os.walk(folder):
        found += [os.path.join(parent, name) for name in folders + files if name.startswith(TEMPORARY_PREFIX)]
    return found


def history_epochs(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


# Atomic writer.

def test_atomic_write_error_keeps_old_file(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(str(path)) as temporary:
            with open(temporary, "w") as f:
                f.write("half of the new con")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert temporaries(tmp_path) == []


def test_atomic_write_replaces_file(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("old")
    write_text(str(path), "epoch,loss\n0,1.5\n")
    assert path.read_text() == "epoch,loss\n0,1.5\n"
    assert temporaries(tmp_path) == []


def test_atomic_write_replaces_folder(tmp_path):
    folder = tmp_path / "saved_model"
    folder.mkdir()
    (folder / "old.pb").write_text("old")
    with atomic_path(str(folder)) as temporary:
        os.makedirs(os.path.join(temporary, "variables"))
        with open(os.path.join(temporary, "saved_model.pb"), "w") as f:
            f.write("new")
    assert sorted(os.listdir(folder)) == ["saved_model.pb", "variables"]
    assert (folder / "saved_model.pb").read_text() == "new"
    assert temporaries(tmp_path) == []


def test_atomic_write_without_output_raises(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old")
    with pytest.raises(FileNotFoundError, match="Nothing was written"):
        with atomic_path(str(path)):
            pass
    assert path.read_text() == "old"


def test_killed_atomic_write_keeps_old_file(tmp_path):
    path = tmp_path / "metadata.json"
    write_json(str(path), {"status": "old"})
    script = (
        "import os, signal, sys\n"
        "from dl09_keras.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as temporary:\n"
        "    with open(temporary, 'w') as f:\n"
        "        f.write('{\"status\": \"ne')\n"
        "        f.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, timeout=120)
    assert completed.returncode == -signal.SIGKILL, completed.stderr[-2000:]
    assert json.loads(path.read_text()) == {"status": "old"}

    left = temporaries(tmp_path)
    assert len(left) == 1
    assert remove_temporaries(str(tmp_path)) == left
    assert temporaries(tmp_path) == []
    assert json.loads(path.read_text()) == {"status": "old"}


# History and backup callbacks, in process.

def write_history(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def write_backup_state(backup_dir, epoch, logs):
    os.makedirs(backup_dir, exist_ok=True)
    write_json(os.path.join(backup_dir, "training_metadata.json"),
               {"epoch": epoch, "batch": 0, "weights": f"epoch-{epoch:04d}.weights.h5", "logs": logs})


def test_history_drops_rows_of_uncommitted_epochs(tmp_path):
    history = tmp_path / "history.csv"
    write_history(history, ["epoch,loss", "0,3.0", "1,2.0", "2,1.0"])
    write_backup_state(str(tmp_path / "backup"), 2, {"loss": "2.0"})
    HistoryCSVLogger(str(history), str(tmp_path / "backup")).on_train_begin()
    fieldnames, rows = read_history(str(history))
    assert fieldnames == ["epoch", "loss"]
    assert [row["epoch"] for row in rows] == ["0", "1"]


def test_history_restores_row_from_backup(tmp_path):
    history = tmp_path / "history.csv"
    write_history(history, ["epoch,loss,val_loss", "0,3.0,3.5"])
    write_backup_state(str(tmp_path / "backup"), 2, {"loss": "2.0", "val_loss": "2.5"})
    HistoryCSVLogger(str(history), str(tmp_path / "backup")).on_train_begin()
    _, rows = read_history(str(history))
    assert rows == [{"epoch": "0", "loss": "3.0", "val_loss": "3.5"},
                    {"epoch": "1", "loss": "2.0", "val_loss": "2.5"}]


def test_history_without_backup_starts_empty(tmp_path):
    history = tmp_path / "history.csv"
    write_history(history, ["epoch,loss", "0,3.0"])
    logger = HistoryCSVLogger(str(history), str(tmp_path / "backup"))
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 2.5})
    _, rows = read_history(str(history))
    assert rows == [{"epoch": "0", "loss": "2.5"}]


def test_read_history_drops_cut_last_row(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss\n0,3.0,3.5\n1,2.0")  # killed mid-row
    fieldnames, rows = read_history(str(history))
    assert fieldnames == ["epoch", "loss", "val_loss"]
    assert [row["epoch"] for row in rows] == ["0"]


def small_model():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def test_backup_restores_weights_and_optimizer(tmp_path):
    backup_dir = str(tmp_path / "backup")
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    first = small_model()
    first.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup_dir)])
    state = AtomicBackupAndRestore.read_state(backup_dir)
    assert state["epoch"] == 2
    assert state["weights"] == "epoch-0002.weights.h5"
    assert float(state["logs"]["loss"]) > 0
    assert sorted(os.listdir(backup_dir)) == ["epoch-0002.weights.h5", "training_metadata.json"]

    restored = small_model()
    callback = AtomicBackupAndRestore(backup_dir)
    callback.set_model(restored)
    callback.on_train_begin()
    for expected, actual in zip(first.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(actual, expected)
    assert int(restored.optimizer.iterations.numpy()) == 2 * 4

    # A weights file without a commit, as a kill right before the JSON replace leaves it.
    with open(os.path.join(backup_dir, "epoch-0003.weights.h5"), "wb") as f:
        f.write(b"not an HDF5 file")
    second = small_model()
    history = second.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[AtomicBackupAndRestore(backup_dir)])
    assert len(history.history["loss"]) == 1  # only the third epoch ran
    assert int(second.optimizer.iterations.numpy()) == 3 * 4
    assert sorted(os.listdir(backup_dir)) == ["epoch-0003.weights.h5", "training_metadata.json"]


def test_backup_marks_training_ended(tmp_path):
    backup_dir = str(tmp_path / "backup")
    write_backup_state(backup_dir, 2, {"loss": "2.0"})
    AtomicBackupAndRestore.mark_training_ended(backup_dir)
    state = AtomicBackupAndRestore.read_state(backup_dir)
    assert state["training_ended"] is True
    assert state["epoch"] == 2
    assert state["logs"] == {"loss": "2.0"}


def test_backup_with_unreadable_weights_names_the_fix(tmp_path):
    backup_dir = str(tmp_path / "backup")
    write_backup_state(backup_dir, 1, {"loss": "2.0"})
    with open(os.path.join(backup_dir, "epoch-0001.weights.h5"), "wb") as f:
        f.write(b"not an HDF5 file")
    model = small_model()
    with pytest.raises(RuntimeError, match="delete .*backup to restart"):
        model.fit(np.zeros((8, 3)), np.zeros((8, 1)), epochs=2, verbose=0,
                  callbacks=[AtomicBackupAndRestore(backup_dir)])


# A real training process, killed and started again.

def check_run_folder_is_readable(run_dir):
    """Assert that every file a later stage or a resume reads is complete."""
    assert temporaries(run_dir) == []
    assert RunFolder(run_dir).read_metadata()["status"] == "training"
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))
    assert not os.path.exists(os.path.join(run_dir, "saved_model"))

    state = AtomicBackupAndRestore.read_state(os.path.join(run_dir, "backup"))
    assert os.path.isfile(os.path.join(run_dir, "backup", state["weights"]))
    with zipfile.ZipFile(os.path.join(run_dir, "checkpoints", "last.keras")) as archive:
        assert archive.testzip() is None
    # The row of the last committed epoch is missing after a kill right after the
    # commit. The resume restores it from the backup.
    epochs = history_epochs(run_dir)
    assert epochs == list(range(len(epochs)))
    assert state["epoch"] - 1 <= len(epochs) <= state["epoch"]
    return state["epoch"]


def kill_after_first_epoch(command, run_dir, log_path):
    """Start ``command``, SIGKILL it once an epoch is committed and the next one runs, and return its exit code."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            history = os.path.join(run_dir, "history.csv")
            # The history row is written after the backup commit, as the last step of an epoch.
            while not (os.path.isfile(history) and read_history(history)[1]):
                assert process.poll() is None, open(log_path).read()[-3000:]
                assert time.monotonic() < deadline, "no epoch finished in 300 s"
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)  # as a crash or a lost machine would
            return process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_killed_training_resumes_and_finishes(tmp_path):
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "train.py", *TINY, "--epochs", str(EPOCHS), "--run-dir", run_dir]
    returncode = kill_after_first_epoch(command, run_dir, tmp_path / "first.log")
    assert returncode == -signal.SIGKILL
    committed = check_run_folder_is_readable(run_dir)
    assert 1 <= committed < EPOCHS

    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"Resuming the unfinished run in {run_dir} after epoch {committed}" in completed.stderr
    assert f"Epoch {committed + 1}/{EPOCHS}" in completed.stdout
    assert f"Epoch {committed}/{EPOCHS}" not in completed.stdout

    assert history_epochs(run_dir) == list(range(EPOCHS))
    assert temporaries(run_dir) == []
    assert not os.path.exists(os.path.join(run_dir, "backup"))
    assert os.path.isfile(os.path.join(run_dir, "saved_model", "saved_model.pb"))

    metadata = RunFolder(run_dir).read_metadata()
    assert metadata["status"] == "finished"
    assert metadata["training"]["epochs_completed"] == EPOCHS
    assert metadata["training"]["epochs_run"] == EPOCHS - committed
    assert [resume["after_epoch"] for resume in metadata["training"]["resumes"]] == [committed]

    model = RunFolder(run_dir).load_training_model()
    # The optimizer state was restored: its step counter covers every epoch, not only the resumed ones.
    assert int(model.optimizer.iterations.numpy()) == EPOCHS * (TRAIN_IMAGES // BATCH_SIZE)


@pytest.mark.slow
def test_kill_while_saving_results_resumes_without_training(tmp_path):
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "train.py", *TINY, "--epochs", "1", "--run-dir", run_dir]
    backup_dir = os.path.join(run_dir, "backup")
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            # The training loop has ended, and saved_model/, metadata.json and model.keras come next.
            while not (AtomicBackupAndRestore.read_state(backup_dir) or {}).get("training_ended"):
                assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))
    assert history_epochs(run_dir) == [0]

    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Epoch 1/1" not in completed.stdout  # the state is restored, no epoch runs again
    assert history_epochs(run_dir) == [0]
    assert temporaries(run_dir) == []
    metadata = RunFolder(run_dir).read_metadata()
    assert metadata["status"] == "finished"
    assert metadata["training"]["epochs_run"] == 0
    assert metadata["training"]["epochs_completed"] == 1
    model = RunFolder(run_dir).load_training_model()
    assert int(model.optimizer.iterations.numpy()) == TRAIN_IMAGES // BATCH_SIZE
