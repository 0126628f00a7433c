"""Training-step time of each optimizer against the matching Keras built-in, measured side by side.

Each optimizer trains its own copy of the same SSD (the same initial weights)
on one fixed batch, so the data pipeline adds nothing. A step is one compiled
``tf.function``: forward pass, SSD loss, gradients and the optimizer's update.
The optimizers take turns: every round times ``steps`` steps of each in a
rotating order, and the reported time is the median over the rounds, which
keeps a slow moment of the machine from counting against one optimizer only.

A second figure times the update alone: ``apply_gradients`` with fixed
gradients, which isolates the optimizer from the network's own cost.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

# Each method of the lecture: the project's optimizer and the Keras built-in configured to the same equation.
# Keras' Adagrad starts its accumulator at 0.1 and its RMSprop can add momentum, so both are switched off here.
METHODS = {
    "momentum": ("dl09_momentum", lambda lr: keras.optimizers.SGD(lr, momentum=0.9), False),
    "nesterov": ("dl09_nesterov", lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True), False),
    "adagrad": ("dl09_adagrad", lambda lr: keras.optimizers.Adagrad(lr, initial_accumulator_value=0.0), True),
    "adadelta": ("dl09_adadelta", lambda lr: keras.optimizers.Adadelta(lr), True),
    "rmsprop": ("dl09_rmsprop", lambda lr: keras.optimizers.RMSprop(lr, momentum=0.0, centered=False), True),
    "adam": ("dl09_adam", lambda lr: keras.optimizers.Adam(lr), True),
}
LEARNING_RATES = {"momentum": 0.01, "nesterov": 0.01, "adagrad": 0.01, "adadelta": 1.0, "rmsprop": 1e-3,
                  "adam": 1e-3}


@dataclasses.dataclass
class StepTimeSettings:
    """The shared workload of a step-time measurement.

    Args:
        input_size: (height, width) of the SSD input in pixels. Default (288, 384), BCCD's benchmark size.
        width: backbone channel multiplier. Default 0.5.
        batch_size: images per step. Default 16.
        rounds: rounds of turns; the median over them is reported. Default 15, because the
            training step varies by several percent from one round to the next on a shared CPU.
        steps: timed steps per optimizer and round. Default 5.
        update_steps: timed ``apply_gradients`` calls per optimizer and round. Default 50.
        seed: seed of the weights and the batch. Default 0.
    """

    input_size: tuple[int, int] = (288, 384)
    width: float = 0.5
    batch_size: int = 16
    rounds: int = 15
    steps: int = 5
    update_steps: int = 50
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "rounds", "steps", "update_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"Invalid {name} {getattr(self, name)}: it must be at least 1.")


def _variants(method: str):
    """Return the (label, factory) pairs of one method.

    The Keras built-in comes first, then the project's optimizer per parameter and, with a second moment, per neuron.
    """
    from dl09_keras.optimizers import get_optimizer

    name, builtin, has_granularity = METHODS[method]
    rate = LEARNING_RATES[method]
    variants = [("keras", lambda: builtin(rate)), ("parameter", lambda: get_optimizer(name, rate))]
    if has_granularity:
        variants.append(("neuron", lambda: get_optimizer(name, rate, granularity="neuron")))
    return variants


def _fixed_batch(settings: StepTimeSettings):
    """Return the SSD configuration and one batch of shapes images with their encoded targets."""
    from dl09_keras.anchors import default_boxes
    from dl09_keras.data import load_dataset, training_pipeline
    from dl09_keras.data.augment import NO_AUGMENTATION
    from dl09_keras.matching import TargetEncoder
    from dl09_keras.models import SSDConfig, build_ssd, feature_shapes
    from dl09_keras.training import choose_box_config

    data = load_dataset("shapes", "train")
    config = SSDConfig(num_classes=data.num_classes, input_size=tuple(settings.input_size), width=settings.width)
    shapes = feature_shapes(build_ssd(config))
    config.box_config = choose_box_config("auto", data, shapes, config.input_size)
    encoder = TargetEncoder(default_boxes(shapes, config.input_size, config.box_config), config.box_config.variances)
    pipeline = training_pipeline(data, encoder, config.input_size, settings.batch_size, NO_AUGMENTATION,
                                 seed=settings.seed)
    images, targets = next(iter(pipeline.take(1)))
    return config, images, targets


def _timed_calls(function, calls: int) -> float:
    """Return the seconds per call of ``function`` over ``calls`` calls, the last result fetched to the host."""
    start = time.perf_counter()
    for _ in range(calls):
        result = function()
    np.asarray(result)
    return (time.perf_counter() - start) / calls


def _prepare(config, factory, images, targets, seed):
    """Build one SSD and optimizer; return its compiled training step and update-only step (not yet traced)."""
    from dl09_keras.losses import SSDLoss
    from dl09_keras.models import build_ssd

    keras.utils.set_random_seed(seed)
    model = build_ssd(config)
    optimizer = factory()
    loss_fn = SSDLoss()
    variables = model.trainable_variables

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(images, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    gradients = [tf.random.stateless_normal(v.shape, seed=(seed, i), stddev=1e-3, dtype=v.dtype)
                 for i, v in enumerate(variables)]

    @tf.function
    def update_step():
        optimizer.apply_gradients(zip(gradients, variables))
        return optimizer.iterations

    return train_step, update_step


def measure_method(method: str, settings: StepTimeSettings, images, targets, config) -> list[dict]:
    """Time the built-in and the project's optimizer(s) for one method; return one row per variant."""
    keras.backend.clear_session(free_memory=True)
    variants = _variants(method)
    steps = {label: _prepare(config, factory, images, targets, settings.seed) for label, factory in variants}
    # An untimed round after every model is built: tracing creates the slots, and the first calls that follow
    # the building of another model were seen to take 100 times longer than the next ones.
    for _ in range(2):
        for train_step, update_step in steps.values():
            train_step()
            update_step()

    step_seconds = {label: [] for label, _ in variants}
    update_seconds = {label: [] for label, _ in variants}
    for round_index in range(settings.rounds):
        order = variants[round_index % len(variants):] + variants[:round_index % len(variants)]
        for label, _ in order:
            train_step, update_step = steps[label]
            step_seconds[label].append(_timed_calls(train_step, settings.steps))
            update_seconds[label].append(_timed_calls(update_step, settings.update_steps))

    keras_step = float(np.median(step_seconds["keras"]))
    keras_update = float(np.median(update_seconds["keras"]))
    rows = []
    for label, _ in variants:
        step = float(np.median(step_seconds[label]))
        update = float(np.median(update_seconds[label]))
        rows.append({
            "method": method, "variant": label,
            "step_ms": 1000 * step, "step_ratio": step / keras_step,
            "update_ms": 1000 * update, "update_ratio": update / keras_update,
        })
        logger.info("%s %s: %.1f ms per step (x%.3f), %.2f ms per update (x%.3f)", method, label,
                    1000 * step, step / keras_step, 1000 * update, update / keras_update)
    return rows


def measure_step_times(methods, settings: StepTimeSettings, output: str | None = None) -> list[dict]:
    """Measure every method in ``methods`` (keys of ``METHODS``); write step_time.md and .json to ``output``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}: choose from {', '.join(METHODS)}.")
    config, images, targets = _fixed_batch(settings)
    parameters = None
    rows = []
    for method in methods:
        logger.info("Timing %s against the Keras built-in", method)
        rows += measure_method(method, settings, images, targets, config)
    if output:
        from dl09_keras.models import build_ssd

        parameters = build_ssd(config).count_params()
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "step_time.md"), "w") as f:
            f.write(step_time_table(rows, settings, parameters))
        with open(os.path.join(output, "step_time.json"), "w") as f:
            json.dump({"settings": dataclasses.asdict(settings), "parameters": parameters, "results": rows}, f,
                      indent=2)
    return rows


def step_time_table(rows: list[dict], settings: StepTimeSettings, parameters: int | None = None) -> str:
    """Format the rows as a Markdown table, each time divided by the Keras built-in's of the same method."""
    size = f"{settings.input_size[0]}x{settings.input_size[1]}"
    model = f"SSD (width {settings.width}, input {size})"
    if parameters:
        model = f"SSD (width {settings.width}, input {size}, {parameters:,} parameters)"
    lines = [
        f"{model}, batch {settings.batch_size}; median over {settings.rounds} rounds of {settings.steps} training "
        f"steps and {settings.update_steps} updates per optimizer, the optimizers taking turns.",
        "",
        "| method | optimizer | training step, ms | ratio to Keras | update alone, ms | ratio to Keras |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        name = "Keras built-in" if row["variant"] == "keras" else f"dl09, per {row['variant']}"
        lines.append(f"| {row['method']} | {name} | {row['step_ms']:.1f} | {row['step_ratio']:.3f} | "
                     f"{row['update_ms']:.2f} | {row['update_ratio']:.3f} |")
    return "\n".join(lines) + "\n"
