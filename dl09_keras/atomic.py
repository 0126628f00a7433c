"""Atomic writes into the run folder, and the Keras callbacks of training that use them.

A file or folder written with :func:`atomic_path` appears under its final name
only once it is complete and flushed to disk. It is written into a staging
folder next to it (named ``.tmp-NAME-RANDOM``), synced with fsync, and moved
into place with ``os.replace``. A process killed mid-write leaves the previous
version intact, plus a staging folder that :func:`remove_temporaries` deletes.

The callbacks replace Keras 3.15's ``BackupAndRestore``, ``ModelCheckpoint`` and
``CSVLogger``, which write their files in place: ``model.save_weights``,
``model.save``, ``open(path, "w")`` and an append-mode CSV file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile

import keras

logger = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".tmp-"


def _fsync_tree(path: str):
    """Flush a file, or every file and folder under a folder, to disk."""
    if os.path.isfile(path):
        _fsync(path, os.O_RDONLY)
        return
    for folder, _, files in os.walk(path):
        for name in files:
            _fsync(os.path.join(folder, name), os.O_RDONLY)
        _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str, flags: int):
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _move_into_place(source: str, destination: str, staging: str):
    """Rename ``source`` to ``destination``, moving an existing folder there into ``staging`` first.

    A file replaces a file atomically. A folder cannot replace a non-empty folder
    in one ``os.replace``, so the old folder goes first.
    """
    if os.path.isdir(destination) and not os.path.islink(destination):
        # NOTE: between these two renames the folder is missing. A kill there leaves
        # the old one inside the staging folder, which remove_temporaries deletes.
        os.rename(destination, os.path.join(staging, "previous"))
    os.replace(source, destination)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write ``path`` to, and move the result into place if the block succeeds.

    The temporary path has the same base name as ``path`` (Keras checks the
    ``.keras`` and ``.weights.h5`` suffixes) and lies in a staging folder in the
    same folder, so the final rename never crosses file systems. The block may
    create a file or a folder there. If the block raises, ``path`` keeps its
    previous content and the staging folder is removed.

    Raises:
        FileNotFoundError: the block wrote nothing at the temporary path.
    """
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{name}-", dir=directory)
    temporary = os.path.join(staging, name)
    try:
        yield temporary
        if not os.path.exists(temporary):
            raise FileNotFoundError(f"Nothing was written to {temporary}, so {path} was not replaced.")
        _fsync_tree(temporary)
        _move_into_place(temporary, path, staging)
        _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str, text: str):
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path: str, value):
    """Write ``value`` as indented JSON with a final newline to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def remove_temporaries(folder: str) -> list[str]:
    """Delete the staging folders that killed writers left anywhere under ``folder``, and return their paths."""
    removed = []
    for parent, folders, files in os.walk(folder):
        for name in list(folders) + files:
            if not name.startswith(TEMPORARY_PREFIX):
                continue
            path = os.path.join(parent, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
                folders.remove(name)
            else:
                os.remove(path)
            removed.append(path)
    return removed


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes each model or weights file with :func:`atomic_path`."""

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, batch, logs, filepath):
            return
        with atomic_path(filepath) as temporary:
            if self.save_weights_only:
                self.model.save_weights(temporary, overwrite=True)
            else:
                self.model.save(temporary, overwrite=True)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose saved state is never half-written or mismatched.

    Each backup writes the weights (which include the optimizer variables) to
    ``epoch-NNNN.weights.h5``, then replaces ``training_metadata.json``, which
    names that file and the number of completed epochs. The JSON file is the
    commit point: a kill before it leaves the previous state in force. Older
    weights files are deleted after the commit.

    Differences from Keras: only ``save_freq="epoch"`` is supported, and the
    backup is kept at the end of ``fit`` because the caller deletes it once the
    run's results are saved. An epoch whose loss is not finite is not backed up,
    so a resume starts from the last finite state.
    """

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self._epoch_logs = {}

    @staticmethod
    def read_state(backup_dir: str) -> dict | None:
        """Return the committed state or None when there is none.

        The state is a dict with ``epoch`` (completed epochs), ``weights`` (file
        name in ``backup_dir``) and, once :meth:`mark_training_ended` ran,
        ``training_ended``.
        """
        path = os.path.join(backup_dir, "training_metadata.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        # A backup written by keras.callbacks.BackupAndRestore has no "weights" entry.
        state.setdefault("weights", "latest.weights.h5")
        return state

    @staticmethod
    def mark_training_ended(backup_dir: str):
        """Record in the committed state that the training loop ended, so a resume runs no more epochs."""
        state = AtomicBackupAndRestore.read_state(backup_dir)
        if state is not None:
            write_json(os.path.join(backup_dir, "training_metadata.json"), state | {"training_ended": True})

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        state = self.read_state(self.backup_dir)
        if state is None:
            return
        weights_path = os.path.join(self.backup_dir, state["weights"])
        if self.model.optimizer is not None and not self.model.optimizer.built:
            # The optimizer variables must exist before load_weights can fill them.
            self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(weights_path)
        except (OSError, ValueError) as error:
            raise RuntimeError(
                f"Cannot restore the training state from {weights_path} ({error}): delete "
                f"{self.backup_dir} to restart this run from epoch 1."
            ) from error
        self.model._initial_epoch = int(state["epoch"])
        logger.info("Restored the state after epoch %d from %s", state["epoch"], weights_path)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            logger.warning("Epoch %d ended with loss %s: it is not backed up.", epoch + 1, loss)
            return
        self._epoch_logs = dict(logs or {})
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights_name = f"epoch-{self._current_epoch:04d}.weights.h5"
        with atomic_path(os.path.join(self.backup_dir, weights_name)) as temporary:
            self.model.save_weights(temporary, overwrite=True)
        # The logs let HistoryCSVLogger restore the epoch's row if a kill comes right after the commit.
        logs = {key: csv_value(value) for key, value in self._epoch_logs.items()}
        state = {"epoch": self._current_epoch, "batch": 0, "weights": weights_name, "logs": logs}
        write_json(os.path.join(self.backup_dir, "training_metadata.json"), state)

        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name != weights_name:
                os.remove(os.path.join(self.backup_dir, name))


class HistoryCSVLogger(keras.callbacks.Callback):
    """Write one row per completed epoch to a CSV file, rewriting the whole file atomically.

    Columns are ``epoch`` (0-based), then the sorted log keys of the first epoch
    written. A key missing in a later epoch is written as ``NA``. The header of an
    existing file is kept.

    Place it after :class:`AtomicBackupAndRestore` in the callback list, so a row
    is written only once the backup has committed its epoch. On a resume after
    ``k`` committed epochs it keeps the rows of epochs ``0..k-1`` and drops later
    ones, and it restores the row of epoch ``k-1`` from the backup if a kill came
    between the commit and the row. Each epoch thus appears once.

    Args:
        filename: the CSV file.
        backup_dir: the folder of the run's :class:`AtomicBackupAndRestore`.
    """

    def __init__(self, filename: str, backup_dir: str):
        super().__init__()
        self.filename = filename
        self.backup_dir = backup_dir
        self.fieldnames = None
        self.rows = []

    def on_train_begin(self, logs=None):
        self.fieldnames, rows = read_history(self.filename)
        state = AtomicBackupAndRestore.read_state(self.backup_dir) or {"epoch": 0}
        committed = int(state["epoch"])
        self.rows = [row for row in rows if int(row["epoch"]) < committed]
        if len(self.rows) < len(rows):
            logger.info("Dropped %d rows of epochs after epoch %d from %s: those epochs run again.",
                        len(rows) - len(self.rows), committed, self.filename)

        has_last_row = any(int(row["epoch"]) == committed - 1 for row in self.rows)
        if committed and not has_last_row and "logs" in state:
            self._add_row(committed - 1, state["logs"])
            logger.info("Restored the row of epoch %d in %s from the backup.", committed, self.filename)
        if self.rows != rows:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._add_row(epoch, logs or {})
        self._write()

    def _add_row(self, epoch: int, logs: dict):
        if self.fieldnames is None:
            self.fieldnames = ["epoch"] + sorted(logs)
        row = {"epoch": str(epoch)}
        for key in self.fieldnames[1:]:
            row[key] = csv_value(logs.get(key, "NA"))
        self.rows.append(row)

    def _write(self):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fieldnames or ["epoch"], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.filename, buffer.getvalue())


def csv_value(value) -> str:
    """Format a log value as CSVLogger does: scalars by ``str``, sequences as ``[a, b]``."""
    is_sequence = isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0
    if is_sequence:
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def read_history(filename: str) -> tuple[list[str] | None, list[dict[str, str]]]:
    """Return the header and the complete rows of a history CSV file, or (None, []) when there is none.

    A row with missing fields or a non-integer epoch, such as the cut last line
    that an append-mode writer leaves when it is killed, is dropped with a warning.
    """
    if not os.path.isfile(filename):
        return None, []
    with open(filename, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fieldnames = reader.fieldnames

    complete = [row for row in rows if _is_complete(row)]
    if len(complete) < len(rows):
        logger.warning("Dropped %d incomplete rows from %s.", len(rows) - len(complete), filename)
    return fieldnames, complete


def _is_complete(row: dict) -> bool:
    if None in row or any(value is None for value in row.values()):
        return False
    return row.get("epoch", "").isdigit()
