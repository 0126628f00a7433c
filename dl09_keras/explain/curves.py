"""Training curves of a run: its losses per epoch, split into their terms, and the validation mAP.

Read from the run's history.csv (one row per epoch). SSD runs log ``conf_loss``
(classification over positives and mined negatives) and ``loc_loss`` (smooth L1
of the box offsets) beside ``loss``. Every column ending in ``loss`` is drawn,
training solid and validation dashed. ``val_map`` is NaN in epochs without an
mAP evaluation (``--map-every``), and those epochs are skipped.
"""

from __future__ import annotations

import math
import os

import numpy as np

from dl09_keras.atomic import read_history
from dl09_keras.explain.figures import new_figure, save_png


def history_columns(history_csv: str) -> dict[str, np.ndarray]:
    """Read history.csv into float64 columns (epochs counted from 1); raise when it has no row."""
    header, rows = read_history(history_csv)
    if not rows:
        raise FileNotFoundError(f"{history_csv} is missing or has no complete epoch: train the run first.")
    columns = {name: np.array([float(row[name]) if row[name] not in ("", None) else math.nan for row in rows])
               for name in header}
    columns["epoch"] = columns["epoch"] + 1
    return columns


def plot_training_curves(history_csv: str, path: str, title: str | None = None) -> str:
    """Draw the loss terms (log scale) and the validation mAP against the epoch; return the PNG path."""
    columns = history_columns(history_csv)
    epochs = columns["epoch"]
    figure = new_figure(11.0, 4.0)
    losses, quality = figure.subplots(1, 2)

    names = [n for n in columns if n.endswith("loss") and not n.startswith("val_")]
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    for name in names:
        losses.plot(epochs, columns[name], color=colors[name], label=name)
        if f"val_{name}" in columns:
            losses.plot(epochs, columns[f"val_{name}"], color=colors[name], linestyle="--", label=f"val_{name}")
    positive = [v for n in columns if n.endswith("loss") for v in columns[n] if v > 0]
    if positive:
        losses.set_yscale("log")
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss per batch")
    losses.legend(fontsize=8)
    losses.grid(alpha=0.3)

    values = columns.get("val_map", np.full(len(epochs), math.nan))
    measured = ~np.isnan(values)
    if measured.any():
        quality.plot(epochs[measured], values[measured], "o-", color="C3")
        for epoch, value in zip(epochs[measured], values[measured]):
            quality.annotate(f"{value:.3f}", (epoch, value), textcoords="offset points", xytext=(0, 5),
                             fontsize=7, ha="center")
        quality.set_ylim(0, 1)
    else:
        quality.text(0.5, 0.5, "no validation mAP in this run\n(train with --val-split and --map-every N)",
                     ha="center", va="center", transform=quality.transAxes)
    quality.set_xlim(0.5, epochs[-1] + 0.5)
    quality.set_xlabel("epoch")
    quality.set_ylabel("validation mAP@0.5")
    quality.grid(alpha=0.3)
    figure.suptitle(title or os.path.basename(os.path.dirname(os.path.abspath(history_csv))), fontsize=10)
    return save_png(figure, path)
