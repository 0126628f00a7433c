"""Pictures of the data: augmented training samples with their boxes drawn."""

from __future__ import annotations

import os

import numpy as np


def save_augmented_samples(data: str, split: str, output: str, count: int = 16, input_size=(320, 320), seed: int = 0,
                           config=None) -> list[str]:
    """Augment ``count`` samples of a dataset and save them as PNG files with their boxes.

    The boxes are drawn from the augmented targets, so a box that misses its
    object in a picture shows an inconsistency between images and targets.

    Returns:
        the written file paths.
    """
    import cv2
    import tensorflow as tf

    from dl09_keras.app import class_colors, draw_detections
    from dl09_keras.data import AugmentConfig, augment, load_dataset, sample_dataset
    from dl09_keras.inference import Detections

    tf.random.set_seed(seed)
    dataset = load_dataset(data, split)
    config = config or AugmentConfig()
    colors = class_colors(dataset.num_classes)
    os.makedirs(output, exist_ok=True)
    paths = []
    samples = sample_dataset(dataset).shuffle(len(dataset), seed=seed).take(count)
    for index, sample in enumerate(samples):
        image, boxes, labels = augment(sample["image"], sample["boxes"], sample["labels"], tuple(input_size), config)
        frame = cv2.cvtColor(np.clip(image.numpy(), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        detections = Detections(boxes.numpy(), np.ones(len(labels), np.float32), labels.numpy())
        draw_detections(frame, detections, dataset.class_names, colors)
        path = os.path.join(output, f"augmented_{index:03d}.png")
        cv2.imwrite(path, frame)
        paths.append(path)
    return paths
