"""The tf.data input pipeline: decode, cache, augment, encode targets, batch, prefetch.

Each element of a training or validation pipeline is ``(image, target)``:
image float32 (B, H, W, 3) RGB in [0, 255] and target float32 (B, A, 5) from
:class:`dl09_keras.matching.TargetEncoder`.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import tensorflow as tf

from dl09_keras.data.augment import NO_AUGMENTATION, AugmentConfig, augment, resize_for_model
from dl09_keras.data.dataset import DetectionDataset
from dl09_keras.data.images import decode_image
from dl09_keras.matching import TargetEncoder

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def _limit_side(image, max_side):
    """Downscale an image whose longer side exceeds ``max_side``; boxes are unaffected."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(1.0, max_side / tf.reduce_max(shape))
    new_size = tf.cast(tf.round(shape * scale), tf.int32)
    resized = tf.image.resize(image, new_size, method="area", antialias=True)
    return tf.cast(tf.round(resized), tf.uint8)


def sample_dataset(dataset: DetectionDataset, max_side: Optional[int] = None, drop_difficult=True) -> tf.data.Dataset:
    """Turn a :class:`DetectionDataset` into a cached tf.data dataset of decoded samples.

    Args:
        dataset: the samples.
        max_side: downscale larger images once, before caching, so augmentation
            and the cache work on fewer pixels. None keeps the full size.
        drop_difficult: leave VOC's difficult boxes out. Default True.

    Returns:
        a dataset of ``{"image": uint8 (H, W, 3), "boxes": (N, 4), "labels": (N,)}``.
    """
    in_memory = dataset.samples and dataset.samples[0].image is not None

    def generate():
        for sample in dataset.samples:
            keep = ~sample.difficult if drop_difficult else np.ones(len(sample.labels), bool)
            source = sample.image if in_memory else sample.path
            orientation, ratio = (sample.info.orientation, sample.info.ratio) if sample.info else (1, 1)
            yield source, orientation, ratio, sample.boxes[keep], sample.labels[keep]

    source_spec = (
        tf.TensorSpec((None, None, 3), tf.uint8) if in_memory else tf.TensorSpec((), tf.string)
    )
    ds = tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            source_spec,
            tf.TensorSpec((), tf.int32),
            tf.TensorSpec((), tf.int32),
            tf.TensorSpec((None, 4), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ),
    )

    def load(source, orientation, ratio, boxes, labels):
        image = source if in_memory else decode_image(source, orientation, ratio)
        if max_side:
            image = _limit_side(image, max_side)
        return {"image": image, "boxes": boxes, "labels": labels}

    ds = ds.map(load, num_parallel_calls=AUTOTUNE)
    # The readers skip broken images with a counted reason, so this only catches a file
    # that changed after reading: it is dropped with a logged warning instead of stopping training.
    ds = ds.ignore_errors(log_warning=True)
    return ds.cache()


def training_pipeline(
    dataset: DetectionDataset,
    encoder: TargetEncoder,
    input_size,
    batch_size: int,
    augment_config: AugmentConfig = AugmentConfig(),
    max_side: Optional[int] = None,
    shuffle: bool = True,
    seed: Optional[int] = None,
    make_example=None,
) -> tf.data.Dataset:
    """Build the endless, augmented training pipeline of full batches.

    Pass ``steps_per_epoch=len(dataset) // batch_size`` to ``model.fit``.
    ``make_example(image, boxes, labels) -> (x, y)`` replaces the default
    ``(image, encoder(boxes, labels))``, e.g. for a model that also takes the
    ground truth as input.
    """
    if len(dataset) < batch_size:
        raise ValueError(
            f"The training split {dataset.split!r} has {len(dataset)} images, fewer than "
            f"batch_size={batch_size}: lower --batch-size."
        )
    input_size = tuple(int(v) for v in input_size)
    ds = sample_dataset(dataset, max_side)
    if shuffle:
        ds = ds.shuffle(len(dataset), seed=seed, reshuffle_each_iteration=True)

    make_example = make_example or (lambda image, boxes, labels: (image, encoder(boxes, labels)))

    def prepare(sample):
        image, boxes, labels = augment(
            sample["image"], sample["boxes"], sample["labels"], input_size, augment_config
        )
        return make_example(image, boxes, labels)

    # Endless: model.fit takes len(dataset) // batch_size steps per epoch.
    ds = ds.repeat().map(prepare, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def validation_pipeline(
    dataset: DetectionDataset,
    encoder: TargetEncoder,
    input_size,
    batch_size: int,
    max_side: Optional[int] = None,
    make_example=None,
) -> tf.data.Dataset:
    """Build the endless pipeline for the validation loss: resize only, no augmentation.

    Pass ``validation_steps=ceil(len(dataset) / batch_size)`` to ``model.fit``; the
    last batch of a pass may be partial. ``make_example`` is as in :func:`training_pipeline`.
    """
    input_size = tuple(int(v) for v in input_size)
    make_example = make_example or (lambda image, boxes, labels: (image, encoder(boxes, labels)))

    def prepare(sample):
        image = resize_for_model(sample["image"], input_size)
        return make_example(image, sample["boxes"], sample["labels"])

    ds = sample_dataset(dataset, max_side).map(prepare, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).repeat().prefetch(AUTOTUNE)


__all__ = [
    "NO_AUGMENTATION",
    "decode_image",
    "sample_dataset",
    "training_pipeline",
    "validation_pipeline",
]
