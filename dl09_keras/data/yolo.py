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

from dl09_keras.data.dataset import DetectionDataset, Sample
from dl09_keras.data.images import IMAGE_EXTENSIONS
from dl09_keras.data.report import DataReport, check_corners, check_image

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
    try:
        with open(yaml_path, encoding="utf-8-sig") as f:
            config = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Invalid YAML in {yaml_path}: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"Invalid {yaml_path}: expected a mapping with a 'names' list, got {config!r}.")
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


def _parse_label_file(label_path, class_names, report: DataReport):
    boxes, labels = [], []
    try:
        with open(label_path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()  # also splits Windows (CRLF) line endings
    except UnicodeDecodeError as error:
        report.skip("unreadable label file", label_path, f"not UTF-8 text: {error}")
        return boxes, labels

    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{number}"
        try:
            if len(fields) != 5:
                raise ValueError(f"expected 5 fields 'class cx cy w h', got {len(fields)}")
            class_id = float(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError as error:
            report.skip("malformed label line", where, f"{line.strip()!r}: {error}")
            continue

        if class_id != int(class_id) or not 0 <= class_id < len(class_names):
            report.skip(
                "box of unknown class", where,
                f"class {fields[0]}; data.yaml lists {len(class_names)} classes, 0 to {len(class_names) - 1}",
            )
            continue
        if w < 0 or h < 0:
            report.skip("box with negative size", where, f"w={w:g} h={h:g}")
            continue
        box = check_corners([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], where, report)
        if box is None:
            continue
        boxes.append(box)
        labels.append(int(class_id))
    return boxes, labels


def _read_sample(path, image_path, label_path, class_names, report: DataReport) -> Optional[Sample]:
    """Read one image and its label file, or return None with the reason in ``report``."""
    info = check_image(path, image_path, image_path, report)
    if info is None:
        return None

    boxes, labels = [], []
    if os.path.isfile(label_path):
        boxes, labels = _parse_label_file(label_path, class_names, report)
    return Sample(image_path, np.array(boxes).reshape(-1, 4), labels, info=info)


def read_yolo(path: str, split: str, class_names: Optional[Sequence[str]] = None) -> DetectionDataset:
    """Read one split of a YOLO folder.

    Args:
        path: the dataset folder with ``data.yaml``.
        split: ``train``, ``valid``, ``test`` or any folder name of the layout.
        class_names: class order; default: the names in ``data.yaml``.

    Returns:
        the dataset; skipped, repaired and noted problems are counted and logged.
        An image without a label file, or with an empty one, is a background image.
    """
    class_names = list(class_names) if class_names else yolo_class_names(path)
    image_folder, label_folder = _split_folders(path, split)
    report = DataReport("YOLO reader")
    images = sorted(f for f in os.listdir(image_folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    stems = {os.path.splitext(f)[0] for f in images}
    if os.path.isdir(label_folder):
        for file in sorted(os.listdir(label_folder)):
            if file.endswith(".txt") and os.path.splitext(file)[0] not in stems:
                report.skip("label file without image", os.path.join(label_folder, file))

    samples = []
    without_labels = 0
    for file in tqdm(images, desc=f"Reading YOLO {split}", unit="image", leave=False):
        label_path = os.path.join(label_folder, os.path.splitext(file)[0] + ".txt")
        without_labels += not os.path.isfile(label_path)
        sample = _read_sample(path, os.path.join(image_folder, file), label_path, class_names, report)
        if sample is not None:
            samples.append(sample)
    if without_labels:
        logger.info("YOLO reader: %d images in %s have no label file and count as background",
                    without_labels, image_folder)

    dataset = DetectionDataset.from_report(class_names, samples, f"yolo:{path}", split, report)
    logger.info("Read %s", dataset.describe())
    return dataset
