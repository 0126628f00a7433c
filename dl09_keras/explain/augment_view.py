"""``dl09 explain augment``: one image through each step of the SSD augmentation, as a grid.

Columns are the steps, drawn one at a time: the resized image, colour
distortion, horizontal flip, zoom-out onto a canvas of up to 4 times the side, a
patch that overlaps an object by a minimum IoU, and a random patch. The last
column is the whole chain, drawn as training draws it. Rows are independent draws. The boxes
drawn are the augmented targets, so a box that misses its object shows a bug.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dl09_keras.data.augment import NO_AUGMENTATION, AugmentConfig
from dl09_keras.explain.figures import class_palette, draw_boxes, new_figure, save_png, show_image


@dataclasses.dataclass
class AugmentTile:
    """One augmented version: its step, draw, image float32 (H, W, 3) in [0, 255], boxes (K, 4), labels (K,)."""

    step: str
    draw: int
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def augment_steps(training: AugmentConfig = AugmentConfig(zoom_out_max=4.0)) -> list[tuple[str, AugmentConfig, object]]:
    """Return (title, config, crop mode) of each column; a crop mode of "iou" draws one of the IoU bounds."""
    alone = NO_AUGMENTATION
    random_patch = len(training.min_ious) + 1
    return [
        ("resized", alone, 0),
        ("colour", dataclasses.replace(alone, photometric=True), 0),
        ("flip", dataclasses.replace(alone, flip_probability=1.0), 0),
        ("zoom-out", dataclasses.replace(alone, zoom_out_probability=1.0, zoom_out_max=training.zoom_out_max), 0),
        ("min-IoU patch", dataclasses.replace(alone, crop=True, min_ious=training.min_ious), "iou"),
        ("random patch", dataclasses.replace(alone, crop=True, min_ious=training.min_ious), random_patch),
        ("all steps", training, None),
    ]


def augment_tiles(image: np.ndarray, boxes, labels, input_size: Sequence[int], draws: int = 2,
                  seed: int = 0) -> list[AugmentTile]:
    """Augment one image with every step of :func:`augment_steps`, ``draws`` times each."""
    import tensorflow as tf

    from dl09_keras.data.augment import augment

    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    tiles = []
    for draw in range(draws):
        for title, config, mode in augment_steps():
            if mode == "iou":
                bound = int(rng.integers(len(config.min_ious)))
                mode, title = bound + 1, f"patch IoU >= {config.min_ious[bound]:g}"
            out_image, out_boxes, out_labels = augment(image, boxes, labels, tuple(input_size), config, crop_mode=mode)
            tiles.append(AugmentTile(title, draw, out_image.numpy(), out_boxes.numpy(), out_labels.numpy()))
    return tiles


def plot_augment(image: np.ndarray, boxes, labels, class_names: Sequence[str], input_size: Sequence[int],
                 path: str, draws: int = 2, seed: int = 0) -> tuple[str, list[AugmentTile]]:
    """Draw the grid of :func:`augment_tiles`; return the PNG path and the tiles."""
    tiles = augment_tiles(image, boxes, labels, input_size, draws, seed)
    columns = len(augment_steps())
    height, width = input_size
    figure = new_figure(2.3 * columns, (2.3 * height / width + 0.35) * draws)
    axes = figure.subplots(draws, columns, squeeze=False).ravel()
    colors = class_palette(len(class_names))
    for axes_, tile in zip(axes, tiles):
        shown = np.clip(tile.image, 0, 255).astype(np.uint8)
        show_image(axes_, shown, f"{tile.step}: {len(tile.labels)}/{len(labels)} boxes")
        draw_boxes(axes_, tile.boxes, shown.shape, [colors[int(k)] for k in tile.labels], linewidth=1.2)
    figure.suptitle("SSD augmentation, one step at a time, then all together (rows: independent draws)", fontsize=10)
    return save_png(figure, path), tiles
