"""Training of the SSD with model.fit, writing a complete run folder.

:func:`train` reads the data, sizes the default boxes, and builds the model and
the tf.data pipelines. It trains with progress bars, checkpoints, resume after an
interruption, a NaN guard, CSV history, TensorBoard and a warm-up plus cosine
learning-rate schedule. Then it saves ``model.keras``, ``saved_model/`` and
``metadata.json``, with the validation mAP when a validation split is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from dl09_keras.anchors import DefaultBoxConfig, default_boxes, fit_scales, match_coverage
from dl09_keras.atomic import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    HistoryCSVLogger,
    atomic_path,
    read_history,
    remove_temporaries,
)
from dl09_keras.data import AugmentConfig, load_dataset, training_pipeline, validation_pipeline
from dl09_keras.data.sources import absolute_spec
from dl09_keras.inference import Detector, KerasRuntime, evaluate_detector
from dl09_keras.losses import SSDLoss, SSDLossTerms
from dl09_keras.matching import TargetEncoder
from dl09_keras.models import SSDConfig, build_inference_model, build_ssd, feature_shapes
from dl09_keras.distribute import fix_multiworker_build, is_chief, make_strategy, set_precision, worker_run_dir
from dl09_keras.optimizers import get_optimizer
from dl09_keras.run import METADATA_VERSION, PREPROCESSING, RunFolder

logger = logging.getLogger(__name__)


class TimeLimit(keras.callbacks.Callback):
    """Stop training once ``minutes`` of wall time have passed since training began."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self.start > self.seconds:
            logger.warning("Time limit of %.1f minutes reached after epoch %d: stopping.", self.seconds / 60, epoch + 1)
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True


class EpochTime(keras.callbacks.Callback):
    """Add ``epoch_seconds`` to the epoch logs: wall seconds of its training steps and validation loss.

    Place it first among the callbacks: the time of the callbacks after it, such as the
    validation mAP, is left out, so the column sums to the training time of a run.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.monotonic() - self.start, 3)


class MeanAveragePrecision(keras.callbacks.Callback):
    """Compute validation mAP@0.5 every ``every`` epochs and add it to the logs as ``val_map``."""

    def __init__(self, dataset, build_inference, every: int):
        super().__init__()
        self.dataset = dataset
        self.build_inference = build_inference
        self.every = every

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if (epoch + 1) % self.every:
            # A value in every epoch keeps the column in history.csv, whose header the first epoch sets.
            logs["val_map"] = float("nan")
            return
        runtime = KerasRuntime(self.build_inference(self.model))
        detector = Detector(runtime, self.dataset.class_names, score_threshold=0.01)
        result = evaluate_detector(detector, self.dataset, progress=False)
        logs["val_map"] = result["map"]
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in result["ap"].items())
        logger.info("Epoch %d: val mAP@0.5 %.4f (%s)", epoch + 1, result["map"], per_class)


class StopAtMeanAveragePrecision(keras.callbacks.Callback):
    """Stop training once ``val_map`` (from :class:`MeanAveragePrecision`) reaches ``target``."""

    def __init__(self, target: float):
        super().__init__()
        self.target = target
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        if logs and logs.get("val_map", -1.0) >= self.target:
            logger.info("Validation mAP@0.5 %.4f reached the target %.4f: stopping.", logs["val_map"], self.target)
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int):
    """Linear warm-up from peak/100 to ``peak``, then cosine decay to peak/100."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak, max(total_steps, 1), alpha=0.01)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 100,
        decay_steps=total_steps - warmup_steps,
        alpha=0.01,
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


def choose_box_config(scales: str, train_dataset, feature_shapes, input_size) -> DefaultBoxConfig:
    """Return default-box settings from ``--scales`` ('auto' or 'MIN,MAX')."""
    if scales == "auto":
        low, high = fit_scales([s.boxes for s in train_dataset.samples], feature_shapes, input_size)
        logger.info("Default-box scales fitted to the training boxes: %.3f to %.3f", low, high)
        return DefaultBoxConfig(min_scale=low, max_scale=high)
    try:
        low, high = (float(v) for v in scales.split(","))
    except ValueError:
        raise ValueError(f"Invalid --scales {scales!r}: expected 'auto' or MIN,MAX such as 0.1,0.9.") from None
    return DefaultBoxConfig(min_scale=low, max_scale=high)


@dataclasses.dataclass
class Recipe:
    """The model-specific parts of a training run; everything else is shared by every detector.

    Args:
        task: "ssd", "rpn" or "faster_rcnn", stored as ``task`` in metadata.json.
        model: the compiled-to-be training model.
        config: the model's config object (``to_dict`` goes to metadata.json).
        anchors: the anchor or default-box facts for metadata.json.
        encoder: turns one image's boxes (N, 4) and labels (N,) into its target.
        loss: the Keras loss, or a dict of losses per output.
        build_inference: training model -> inference model (image -> scores, boxes).
        make_example: (image, boxes, labels) -> (x, y) for the pipeline; None for (image, encoder(boxes, labels)).
        metrics: Keras metrics to compile with, e.g. the loss terms for history.csv.
    """

    task: str
    model: keras.Model
    config: object
    anchors: dict
    encoder: object
    loss: object
    build_inference: object
    make_example: object = None
    metrics: list = None


def augment_settings(args) -> AugmentConfig:
    """Return the augmentation chosen by ``--no-zoom-out`` and ``--no-augment``."""
    if args.no_augment:
        return AugmentConfig(photometric=False, zoom_out_probability=0.0, crop=False, flip_probability=0.0)
    if args.no_zoom_out:
        # The probability is 0 as well, so that metadata.json lists no zoom-out that never runs.
        return AugmentConfig(zoom_out_probability=0.0, zoom_out_max=1.0)
    return AugmentConfig(zoom_out_max=4.0)


def ssd_recipe(args, train_data) -> Recipe:
    """Build the SSD, fit its default boxes to the training boxes and make its target encoder."""
    ssd_config = SSDConfig(
        num_classes=train_data.num_classes,
        input_size=args.input_size,
        backbone=args.backbone,
        width=args.width,
        num_maps=args.num_maps,
        neck=args.neck,
        neck_channels=args.neck_channels,
    )
    model = build_ssd(ssd_config)
    shapes = feature_shapes(model)
    box_config = choose_box_config(args.scales, train_data, shapes, ssd_config.input_size)
    ssd_config.box_config = box_config
    anchors = default_boxes(shapes, ssd_config.input_size, box_config)
    coverage = match_coverage([s.boxes for s in train_data.samples], anchors)
    logger.info(
        "%d default boxes on feature maps %s; %.1f%% of the training boxes have one with IoU >= 0.5",
        len(anchors), shapes, 100 * coverage,
    )
    anchor_facts = {
        "config": box_config.to_dict(),
        "feature_shapes": [list(s) for s in shapes],
        "num_default_boxes": int(len(anchors)),
        "train_coverage_iou_0.5": round(float(coverage), 4),
        "order": "feature map, then cell row-major, then box (aspect ratios, then the extra box)",
    }
    return Recipe(
        task="ssd", model=model, config=ssd_config, anchors=anchor_facts,
        encoder=TargetEncoder(anchors, box_config.variances), loss=SSDLoss(),
        build_inference=lambda trained: build_inference_model(trained, box_config), metrics=[SSDLossTerms()],
    )


def _check_run_folder(args) -> RunFolder:
    """Choose the run folder and refuse to replace a finished run; nothing is created yet."""
    if args.run_dir is None:
        name = args.data.split(":")[0] + time.strftime("-%Y%m%d-%H%M%S")
        args.run_dir = os.path.join("runs", name)
    run = RunFolder(args.run_dir)
    if os.path.isfile(run.model_path) and not args.overwrite:
        raise FileExistsError(
            f"{run.path} already contains a finished run (model.keras): choose another --run-dir "
            "or pass --overwrite."
        )
    return run


def _create_run_folder(run: RunFolder, overwrite: bool) -> dict | None:
    """Create the run folder once the data and the model are ready; clear it for --overwrite.

    Returns:
        the backup state of an unfinished run in the folder, from which training
        resumes (see :meth:`AtomicBackupAndRestore.read_state`), or None.
    """
    if overwrite and os.path.isfile(run.model_path):
        shutil.rmtree(run.path)
    if os.path.isdir(run.path):
        for path in remove_temporaries(run.path):
            logger.info("Removed %s, left by a write that did not finish.", path)

    state = AtomicBackupAndRestore.read_state(run.file("backup"))
    completed_epochs = state["epoch"] if state else 0
    if completed_epochs:
        logger.info("Resuming the unfinished run in %s after epoch %d", run.path, completed_epochs)
    elif run.exists():
        logger.info("Restarting the run in %s from epoch 1 because it completed no epoch.", run.path)
    os.makedirs(run.file("checkpoints"), exist_ok=True)
    return state


def train(args: argparse.Namespace) -> RunFolder:
    """Train an SSD as described by parsed ``train.py`` arguments; return its run folder."""
    if args.model == "rcnn":
        from dl09_keras.rcnn.training import train_rcnn

        return train_rcnn(args)
    # The strategy comes first: a multi-worker strategy must exist before any other TensorFlow work.
    strategy = make_strategy(args.strategy)
    precision = set_precision(args.mixed_precision)
    # Check the cheap options first, so a typo fails before the data is read.
    get_optimizer(args.optimizer, 1e-3)
    if args.scales != "auto":
        choose_box_config(args.scales, None, None, None)
    if args.model == "rpn" and (args.map_every or args.stop_at_map is not None):
        raise ValueError("--map-every and --stop-at-map need class detections: an RPN is measured by its "
                         "proposal recall, which train.py reports at the end for --val-split.")
    if args.stop_at_map is not None and not (args.val_split and args.map_every):
        raise ValueError("--stop-at-map needs --val-split and --map-every N to compute the validation mAP.")
    # The run folder records an absolute path, so export and evaluate work from any directory.
    args.data = absolute_spec(args.data)
    if not is_chief(strategy):
        args.run_dir = worker_run_dir(strategy)
    run = _check_run_folder(args)
    keras.utils.set_random_seed(args.seed)

    train_data = load_dataset(args.data, args.train_split)
    val_data = load_dataset(args.data, args.val_split, train_data.class_names) if args.val_split else None
    logger.info("Training data: %s", train_data.describe())
    if val_data is not None:
        logger.info("Validation data: %s", val_data.describe())

    # Variables created in the strategy's scope are mirrored on every replica.
    with strategy.scope():
        if args.model == "ssd":
            recipe = ssd_recipe(args, train_data)
        else:
            from dl09_keras.training_rcnn import two_stage_recipe

            recipe = two_stage_recipe(args, train_data)
    model = recipe.model
    max_side = args.max_side or 2 * max(args.input_size)
    augment_config = augment_settings(args)
    train_pipe = training_pipeline(
        train_data, recipe.encoder, args.input_size, args.batch_size, augment_config, max_side, seed=args.seed,
        make_example=recipe.make_example,
    )
    val_pipe = (
        validation_pipeline(val_data, recipe.encoder, args.input_size, args.batch_size, max_side,
                            make_example=recipe.make_example)
        if val_data is not None else None
    )

    steps_per_epoch = len(train_data) // args.batch_size
    if args.learning_rate is None:
        is_adadelta = args.optimizer.split(":")[0].lower() in ("adadelta", "dl09_adadelta")
        args.learning_rate = 1.0 if is_adadelta else 2e-3
    schedule = warmup_cosine(
        args.learning_rate, steps_per_epoch * args.epochs, int(args.warmup_epochs * steps_per_epoch)
    )
    options = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    loss = recipe.loss
    with strategy.scope():
        optimizer = get_optimizer(args.optimizer, schedule, **options)
        model.compile(optimizer=optimizer, loss=loss, metrics=recipe.metrics, jit_compile=args.jit)
    fix_multiworker_build(model, strategy)

    metadata = {
        "format_version": METADATA_VERSION,
        "status": "training",
        "task": recipe.task,
        "class_names": train_data.class_names,
        "input_size": list(args.input_size),
        "preprocessing": PREPROCESSING,
        "model": recipe.config.to_dict(),
        "anchors": recipe.anchors,
        "data": {
            "source": args.data,
            "train_split": args.train_split,
            "val_split": args.val_split,
            "train_images": len(train_data),
            "train_boxes": train_data.num_boxes(),
            "train_skipped": train_data.skipped,
            "train_repaired": train_data.repaired,
            "train_noted": train_data.noted,
            "max_side": max_side,
        },
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "optimizer_config": keras.optimizers.serialize(optimizer)["config"] | {"learning_rate": "warmup_cosine"},
            "learning_rate": {"schedule": "linear warm-up, then cosine decay", "peak": args.learning_rate,
                              "warmup_epochs": args.warmup_epochs},
            "loss": {name: item.get_config() for name, item in loss.items()} if isinstance(loss, dict)
            else loss.get_config(),
            "augmentation": dataclasses.asdict(augment_config),
            "seed": args.seed,
            "strategy": {"name": args.strategy, "replicas": strategy.num_replicas_in_sync},
            "precision": precision,
            "jit_compile": bool(args.jit),
        },
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
    }
    state = _create_run_folder(run, args.overwrite)
    completed_epochs = state["epoch"] if state else 0
    metadata["training"]["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if completed_epochs:
        previous = run.read_metadata().get("training", {})
        metadata["training"]["started"] = previous.get("started", metadata["training"]["started"])
        resume = {"after_epoch": completed_epochs, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        metadata["training"]["resumes"] = previous.get("resumes", []) + [resume]
    run.write_metadata(metadata)

    time_limit = TimeLimit(args.time_limit) if args.time_limit else None
    callbacks = [
        EpochTime(),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.TensorBoard(run.file("logs"), update_freq="epoch"),
    ]
    if val_data is not None and args.map_every:
        callbacks.append(MeanAveragePrecision(val_data, recipe.build_inference, args.map_every))
    if args.stop_at_map is not None:
        callbacks.append(StopAtMeanAveragePrecision(args.stop_at_map))
    if time_limit:
        callbacks.append(time_limit)
    # The backup marks an epoch as done for a resume, so the history row comes after it.
    callbacks += [
        AtomicModelCheckpoint(run.file(os.path.join("checkpoints", "last.keras"))),
        AtomicBackupAndRestore(run.file("backup")),
        HistoryCSVLogger(run.file("history.csv"), run.file("backup")),
    ]

    # A run killed after its training loop ended (possibly early, by --time-limit or
    # --stop-at-map) only restores its state, in a fit without epochs, and saves.
    # NOTE: a resumed run draws shuffling and augmentation from a fresh pipeline, so it
    # matches an uninterrupted run in epochs and optimizer state but not bit for bit.
    fit_epochs = completed_epochs if state and state.get("training_ended") else args.epochs
    start = time.monotonic()
    history = model.fit(
        train_pipe,
        validation_data=val_pipe,
        validation_steps=math.ceil(len(val_data) / args.batch_size) if val_data is not None else None,
        epochs=fit_epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=args.verbose,
        shuffle=False,  # the pipeline shuffles
    )
    seconds = time.monotonic() - start
    if any(math.isnan(v) for v in history.history.get("loss", [])):
        raise RuntimeError(f"Training of {run.path} diverged (NaN loss): lower --learning-rate.")
    _, rows = read_history(run.file("history.csv"))
    if not rows:
        raise RuntimeError(f"Training of {run.path} completed no epoch: check --epochs ({args.epochs}).")
    AtomicBackupAndRestore.mark_training_ended(run.file("backup"))

    inference_model = recipe.build_inference(model)
    with atomic_path(run.saved_model_path) as temporary:
        inference_model.export(temporary, format="tf_saved_model", verbose=False)

    updates = {
        "status": "finished",
        "training": metadata["training"] | {
            "seconds_this_process": round(seconds, 1),
            "epochs_run": len(history.history.get("loss", [])),
            "epochs_completed": len(rows),
            "stopped_by_time_limit_after_epoch": time_limit.stopped_epoch if time_limit else None,
            "final_loss": float(rows[-1]["loss"]),
        },
    }
    if val_data is not None and recipe.task == "rpn":
        from dl09_keras.evaluate_run import evaluate_proposals

        result = evaluate_proposals(model, recipe.config, val_data)
        recall = {k: v for k, v in result.items() if k.startswith("recall@")}
        updates["evaluation"] = {f"{args.data} [{args.val_split}] keras": recall | {"when": "end of training"}}
        logger.info("Validation proposal recall on %s: %s", args.val_split, recall)
    elif val_data is not None:
        detector = Detector(KerasRuntime(inference_model), train_data.class_names, score_threshold=0.01)
        result = evaluate_detector(detector, val_data)
        result.update(data=args.data, split=args.val_split, runtime="keras", images=len(val_data))
        # Same key and summary as `dl09 evaluate`, which adds its results next to this one.
        key = f"{args.data} [{args.val_split}] keras"
        updates["evaluation"] = {key: {"map": result["map"], "ap": result["ap"], "images": len(val_data),
                                       "when": "end of training"}}
        logger.info("Validation mAP@0.5 on %s: %.4f %s", args.val_split, result["map"], result["ap"])
    run.update_metadata(**updates)

    # model.keras marks a finished run, so it appears last, and the backup goes after it.
    # NOTE: a kill between the two leaves backup/ in a finished run. No later stage reads it.
    with atomic_path(run.model_path) as temporary:
        model.save(temporary)
    shutil.rmtree(run.file("backup"), ignore_errors=True)
    _write_training_curves(run)
    logger.info("Run folder: %s", run.path)
    return run


def _write_training_curves(run: RunFolder):
    """Draw history.csv into training_curves.png; a drawing failure is logged and does not fail the run."""
    from dl09_keras.explain.curves import plot_training_curves

    try:
        plot_training_curves(run.file("history.csv"), run.file("training_curves.png"))
    except (OSError, ValueError, KeyError) as error:
        logger.warning("Could not draw %s: %s", run.file("training_curves.png"), error)
