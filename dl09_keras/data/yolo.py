"""Reader of YOLO txt folders: ``SPLIT/images/*.jpg``, ``SPLIT/labels/*.txt``, ``data.yaml``.

Each label line is ``class cx cy w h`` with coordinates normalized to [0, 1].
An image without a label file, or with an empty one, has no objects. The
layout ``images/SPLIT`` with ``labels/SPLIT`` (Ultralytics') is read too.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np
import yaml
from tqdm import tqdm

from dl09_keras.data.dataset import DetectionDataset, Sample, SkipCounter
from dl09_keras.data.voc import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)


def yolo_class_names(path: str) -> list[str]:
    """Read the class names from ``data.yaml`` (or ``data.yml``) in ``path``.

    ``names`` may be a list or a mapping from index to name.
    """
    for file in ("data.yaml", "data.yml"):
        yaml_path = os.path.join(path, file)
        if os.path.isfile(yaml_path):
            break
    else:
        raise FileNotFoundError(
            f"No data.yaml in {path}: a YOLO dataset needs one with a 'names' list of classes."
        )
    with open(yaml_path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    names = config.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise ValueError(f"Invalid 'names' in {yaml_path}: expected a non-empty list, got {names!r}.")
    return [str(n) for n in names]


def _split_folders(path: str, split: str) -> tuple[str, str]:
    layouts = [
        (os.path.join(path, split, "images"), os.path.join(path, split, "labels")),
        (os.path.join(path, "images", split), os.path.join(path, "labels", split)),
    ]
    for images, labels in layouts:
        if os.path.isdir(images):
            return images, labels
    raise FileNotFoundError(
        f"Split {split!r} not found in {path}: expected {layouts[0][0]} or {layouts[1][0]}."
    )


def _parse_label_file(label_path, num_classes, skips: SkipCounter):
    boxes, labels = [], []
    with open(label_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{number}"
        try:
            if len(fields) != 5:
                raise ValueError(f"expected 5 fields, got {len(fields)}")
            class_id = int(float(fields[0]))
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError as error:
            skips.skip("malformed label line", where, f"{line.strip()!r}: {error}")
            continue
        if not 0 <= class_id < num_classes:
            raise ValueError(
                f"Invalid class {class_id} in {where}: data.yaml lists {num_classes} classes "
                f"(0 to {num_classes - 1}). Fix the label or the 'names' list."
            )
        if w <= 0 or h <= 0:
            skips.skip("zero-area box", where, f"w={w:g} h={h:g}")
            continue
        corners = np.clip([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 0.0, 1.0)
        if corners[2] <= corners[0] or corners[3] <= corners[1]:
            skips.skip("box outside the image", where, line.strip())
            continue
        boxes.append(corners)
        labels.append(class_id)
    return boxes, labels


def read_yolo(path: str, split: str, class_names: Optional[Sequence[str]] = None) -> DetectionDataset:
    """Read one split of a YOLO folder.

    Args:
        path: the dataset folder with ``data.yaml``.
        split: ``train``, ``valid``, ``test`` or any folder name of the layout.
        class_names: class order; default: the names in ``data.yaml``.

    Returns:
        the dataset; dropped boxes and label files are counted in ``skipped`` and logged.
    """
    class_names = list(class_names) if class_names else yolo_class_names(path)
    image_folder, label_folder = _split_folders(path, split)
    skips = SkipCounter("YOLO reader")
    images = sorted(f for f in os.listdir(image_folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    stems = {os.path.splitext(f)[0] for f in images}
    if os.path.isdir(label_folder):
        for orphan in sorted(set(os.path.splitext(f)[0] for f in os.listdir(label_folder)) - stems):
            skips.skip("label file without image", os.path.join(label_folder, orphan + ".txt"))

    samples = []
    without_labels = 0
    for file in tqdm(images, desc=f"Reading YOLO {split}", unit="image", leave=False):
        label_path = os.path.join(label_folder, os.path.splitext(file)[0] + ".txt")
        if os.path.isfile(label_path):
            boxes, labels = _parse_label_file(label_path, len(class_names), skips)
        else:
            boxes, labels = [], []
            without_labels += 1
        samples.append(Sample(os.path.join(image_folder, file), np.array(boxes).reshape(-1, 4), labels))
    if without_labels:
        logger.info("YOLO reader: %d images in %s have no label file and count as background",
                    without_labels, image_folder)

    dataset = DetectionDataset(class_names, samples, f"yolo:{path}", split, skips.summary())
    logger.info("Read %s", dataset.describe())
    return dataset
