"""A synthetic detection dataset of filled shapes, generated in code.

The embedded default dataset: it needs no files, is the same on every machine
for a given seed, and is easy enough that a small SSD learns it in minutes.
Classes: circle, rectangle, triangle, each drawn in a random color over a
smooth random background with noise. Some images have no object at all.
"""

from __future__ import annotations

import numpy as np

import cv2

from dl09_keras.data.dataset import DetectionDataset, Sample

SHAPE_CLASSES = ["circle", "rectangle", "triangle"]
SPLIT_SIZES = {"train": 800, "val": 160, "test": 160}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    image = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    image += rng.normal(0, 8, image.shape).astype(np.float32)
    return image


def _contrasting_color(rng: np.random.Generator, background: np.ndarray) -> tuple:
    mean = background.reshape(-1, 3).mean(axis=0)
    while True:
        color = rng.uniform(0, 255, 3)
        if np.abs(color - mean).sum() > 150:
            return tuple(float(c) for c in color)


def _draw(image, class_id, box_px, color, rng):
    y0, x0, y1, x1 = box_px
    if class_id == 0:
        center = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
        radius = int(round((x1 - x0) / 2))
        cv2.circle(image, center, radius, color, -1, cv2.LINE_AA)
    elif class_id == 1:
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), color, -1, cv2.LINE_AA)
    else:
        apex_x = rng.uniform(x0, x1)
        points = np.array([[apex_x, y0], [x0, y1], [x1, y1]], np.int32)
        cv2.fillPoly(image, [points], color, cv2.LINE_AA)


def generate_shapes_sample(rng: np.random.Generator, size: int = 256, max_objects: int = 4) -> Sample:
    """Draw one image (size x size RGB) with 0 to ``max_objects`` non-overlapping shapes."""
    image = _background(rng, size)
    count = 0 if rng.uniform() < 0.1 else int(rng.integers(1, max_objects + 1))
    boxes, labels = [], []
    for _ in range(count * 10):
        if len(boxes) == count:
            break
        class_id = int(rng.integers(0, len(SHAPE_CLASSES)))
        side = rng.uniform(0.12, 0.45) * size
        aspect = 1.0 if class_id == 0 else rng.uniform(0.6, 1.6)
        height, width = side / np.sqrt(aspect), side * np.sqrt(aspect)
        y0 = rng.uniform(0, size - height)
        x0 = rng.uniform(0, size - width)
        box = np.array([y0, x0, y0 + height, x0 + width])
        # Reject a shape that would touch another: every object stays fully visible.
        if any(
            box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2
            for b in boxes
        ):
            continue
        _draw(image, class_id, box, _contrasting_color(rng, image), rng)
        boxes.append(box)
        labels.append(class_id)
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    normalized = np.array(boxes, np.float32).reshape(-1, 4) / size
    return Sample(None, normalized, labels, image=pixels)


def generate_shapes(split: str = "train", num_images: int | None = None, size: int = 256, seed: int | None = None) -> DetectionDataset:
    """Generate the shapes dataset for a split.

    Args:
        split: ``train``, ``val`` or ``test``; each has its own seed and size
            (800, 160, 160 images) so the splits never share an image.
        num_images: override of the split's image count.
        size: side of the square images in pixels. Default 256.
        seed: override of the split's seed.
    """
    if split not in SPLIT_SEEDS and seed is None:
        raise ValueError(f"Unknown shapes split {split!r}: choose one of {sorted(SPLIT_SEEDS)}.")
    rng = np.random.default_rng(SPLIT_SEEDS.get(split, 0) if seed is None else seed)
    count = SPLIT_SIZES.get(split, 160) if num_images is None else int(num_images)
    samples = [generate_shapes_sample(rng, size) for _ in range(count)]
    return DetectionDataset(list(SHAPE_CLASSES), samples, "shapes", split)
