"""Train the same SSD with several optimizers on the same batches and compare their losses.

Every optimizer starts from the same initial weights (one seed) and trains on
the same batches in the same order: augmentation is off and the shuffle is seeded.
Only the optimizer and its learning rate differ, and each learning rate is
constant, so the curves compare the update rules alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time

import keras
import numpy as np

from dl09_keras.optimizers import get_optimizer, parse_optimizer_spec

logger = logging.getLogger(__name__)

# Constant learning rates that train the small default SSD on shapes without diverging. They were chosen by
# hand from a few short runs, not tuned per method, so the table compares update rules, not best results.
DEFAULT_LEARNING_RATES = {
    "sgd": 0.01, "momentum": 0.01, "nesterov": 0.01, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3,
    "adagrad": 0.01, "adadelta": 1.0,
    "dl09_momentum": 0.01, "dl09_nesterov": 0.01, "dl09_adagrad": 0.01, "dl09_adadelta": 1.0,
    "dl09_rmsprop": 1e-3, "dl09_adam": 1e-3,
}
DEFAULT_COMPARED = ("dl09_momentum", "dl09_nesterov", "dl09_adagrad", "dl09_adadelta", "dl09_rmsprop", "dl09_adam")


@dataclasses.dataclass
class ComparisonSettings:
    """Settings that every optimizer in a comparison shares: data, budget and model size.

    Args:
        data: the dataset spec (``shapes``, ``voc:PATH``, ``yolo:PATH``). Default "shapes".
        train_split: the split to train on. Default "train".
        val_split: the split for the final validation loss, or None. Default "val".
        steps: training steps per optimizer. Default 60.
        log_every: steps per point of the loss curve; ``steps`` must be a
            multiple of it. Default 5.
        batch_size: images per step. Default 16.
        input_size: (height, width) of the network input. Default (128, 128).
        width: channel multiplier of the backbone. Default 0.25.
        seed: the seed of the initial weights and of the shuffle. Default 0.
    """

    data: str = "shapes"
    train_split: str = "train"
    val_split: str | None = "val"
    steps: int = 60
    log_every: int = 5
    batch_size: int = 16
    input_size: tuple[int, int] = (128, 128)
    width: float = 0.25
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.log_every < 1 or self.steps % self.log_every:
            raise ValueError(
                f"Invalid budget: steps {self.steps} must be a positive multiple of log_every {self.log_every}."
            )


def learning_rate_for(spec: str, overrides: dict[str, float]) -> float:
    """Return the learning rate for ``spec``: an override by full spec or bare name, else the default."""
    name = parse_optimizer_spec(spec)[0].lower()
    for key in (spec, name):
        if key in overrides:
            return float(overrides[key])
    if name not in DEFAULT_LEARNING_RATES:
        raise ValueError(f"No default learning rate for {name!r}: pass --learning-rate {name}=VALUE.")
    return DEFAULT_LEARNING_RATES[name]


def compare_optimizers(specs, settings: ComparisonSettings, output: str, learning_rates=None) -> list[dict]:
    """Train one SSD per optimizer for the same budget and write the table and the loss curves.

    Args:
        specs: optimizer names as ``get_optimizer`` takes them, e.g.
            ``["dl09_adam", "dl09_adam:granularity=neuron"]``. Each must be unique.
        settings: the shared data, budget and model size.
        output: the folder for ``comparison.md`` (the table),
            ``comparison.json`` (the table and the curves) and ``losses.png``.
        learning_rates: overrides of ``DEFAULT_LEARNING_RATES``, keyed by full
            spec or bare name.

    Returns:
        one row per optimizer: spec, learning rate, loss curve, the loss of
        the untrained model on the first batch, the first and last logged
        training loss, validation loss (None without a validation split) and
        training seconds.
    """
    from dl09_keras.anchors import default_boxes
    from dl09_keras.data import load_dataset, training_pipeline, validation_pipeline
    from dl09_keras.data.augment import NO_AUGMENTATION
    from dl09_keras.losses import SSDLoss
    from dl09_keras.matching import TargetEncoder
    from dl09_keras.models import SSDConfig, build_ssd, feature_shapes
    from dl09_keras.plots import plot_loss_curves
    from dl09_keras.training import choose_box_config

    specs = list(specs)
    if not specs or len(set(specs)) != len(specs):
        raise ValueError(f"Invalid optimizer list {specs}: give one or more distinct names.")
    rates = {spec: learning_rate_for(spec, learning_rates or {}) for spec in specs}

    train_data = load_dataset(settings.data, settings.train_split)
    val_data = load_dataset(settings.data, settings.val_split, train_data.class_names) if settings.val_split else None
    ssd_config = SSDConfig(num_classes=train_data.num_classes, input_size=tuple(settings.input_size),
                           width=settings.width)
    keras.utils.set_random_seed(settings.seed)
    shapes = feature_shapes(build_ssd(ssd_config))
    box_config = choose_box_config("auto", train_data, shapes, ssd_config.input_size)
    ssd_config.box_config = box_config
    encoder = TargetEncoder(default_boxes(shapes, ssd_config.input_size, box_config), box_config.variances)

    rows = []
    for spec in specs:
        logger.info("Training with %s at learning rate %g for %d steps", spec, rates[spec], settings.steps)
        # A fresh Keras session per model frees the previous model and its traced training functions.
        keras.backend.clear_session()
        keras.utils.set_random_seed(settings.seed)
        model = build_ssd(ssd_config)
        model.compile(optimizer=get_optimizer(spec, rates[spec]), loss=SSDLoss())
        pipeline = training_pipeline(train_data, encoder, ssd_config.input_size, settings.batch_size,
                                     NO_AUGMENTATION, seed=settings.seed)

        # The same value for every optimizer shows that they start from the same weights and data. It is computed
        # in inference mode, because a training-mode call would update the batch normalization statistics.
        images, targets = next(iter(pipeline.take(1)))
        initial_loss = float(model.test_on_batch(images, targets))

        start = time.monotonic()
        history = model.fit(pipeline, epochs=settings.steps // settings.log_every, steps_per_epoch=settings.log_every,
                            verbose=0, shuffle=False)
        seconds = time.monotonic() - start
        losses = [float(v) for v in history.history["loss"]]

        val_loss = None
        if val_data is not None:
            val_pipeline = validation_pipeline(val_data, encoder, ssd_config.input_size, settings.batch_size)
            # The step count keeps Keras from warning that the finite pipeline "ran out of data".
            val_steps = math.ceil(len(val_data) / settings.batch_size)
            val_loss = float(model.evaluate(val_pipeline, steps=val_steps, verbose=0))
        rows.append({
            "optimizer": spec,
            "learning_rate": rates[spec],
            "steps": [settings.log_every * (i + 1) for i in range(len(losses))],
            "losses": losses,
            "initial_loss": initial_loss,
            "first_loss": losses[0],
            "final_loss": losses[-1],
            "val_loss": val_loss,
            "diverged": not all(math.isfinite(v) for v in losses),
            "seconds": round(seconds, 1),
        })
        logger.info("%s: training loss %.4f -> %.4f, validation loss %s", spec, losses[0], losses[-1], val_loss)

    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "comparison.md"), "w") as f:
        f.write(comparison_table(rows, settings))
    with open(os.path.join(output, "comparison.json"), "w") as f:
        json.dump({"settings": dataclasses.asdict(settings), "results": rows}, f, indent=2)
    curves = {f"{r['optimizer']} (lr {r['learning_rate']:g})": (np.array(r["steps"]), np.array(r["losses"]))
              for r in rows}
    plot_loss_curves(curves, os.path.join(output, "losses.png"),
                     f"SSD on {settings.data}: mean training loss per {settings.log_every} steps")
    return rows


def comparison_table(rows: list[dict], settings: ComparisonSettings) -> str:
    """Format the rows of :func:`compare_optimizers` as a Markdown table with the shared settings above it."""
    validation = (f"The validation loss is on split `{settings.val_split}` after the last step."
                  if settings.val_split else "No validation split was given.")
    lines = [
        "# Optimizer comparison",
        "",
        f"SSD (width {settings.width}, input {settings.input_size[0]}x{settings.input_size[1]}) on "
        f"`{settings.data}` split `{settings.train_split}`: {settings.steps} steps of {settings.batch_size} images "
        f"per optimizer, the same initial weights and batches (seed {settings.seed}), no augmentation, constant "
        f"learning rates. The initial loss is the untrained model's on the first batch, in inference mode. "
        f"Training loss is the mean "
        f"over the first and the last {settings.log_every} steps. {validation}",
        "",
        "| optimizer | learning rate | initial loss | first training loss | final training loss | validation loss "
        "| seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        val_loss = "-" if row["val_loss"] is None else f"{row['val_loss']:.4f}"
        final = "diverged" if row["diverged"] else f"{row['final_loss']:.4f}"
        lines.append(f"| `{row['optimizer']}` | {row['learning_rate']:g} | {row['initial_loss']:.4f} | "
                     f"{row['first_loss']:.4f} | {final} | {val_loss} | {row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"
