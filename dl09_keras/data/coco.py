"""Reader of COCO JSON datasets (``coco:PATH``).

Two layouts are found from ``PATH`` and a split name:

- COCO's own: ``annotations/instances_SPLIT.json`` with the images in ``SPLIT/``
  (e.g. ``val2017``) or ``images/SPLIT/``;
- Roboflow's export: ``SPLIT/_annotations.coco.json`` with the images beside it.

``PATH`` may also be the JSON file itself. Its images are then in its folder or
in an ``images/`` folder beside it, and the split name is only a label.

COCO boxes are pixel ``[x, y, width, height]``. Crowd boxes (``iscrowd: 1``)
are kept as "difficult": left out of training and ignored by the evaluation,
as COCO's own evaluation ignores them. Class names follow the category ids in
ascending order.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from dl09_keras.data.dataset import DetectionDataset, Sample
from dl09_keras.data.images import ImageInfo, ImageProblem, inspect_image
from dl09_keras.data.report import DataReport, check_corners, is_inside

logger = logging.getLogger(__name__)


def find_coco_files(path: str, split: str) -> tuple[str, str]:
    """Return the annotation file and the image folder of ``split`` under ``path``."""
    if os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        images = os.path.join(folder, "images")
        return path, images if os.path.isdir(images) else folder

    layouts = [
        (os.path.join(path, "annotations", f"instances_{split}.json"), os.path.join(path, split)),
        (os.path.join(path, "annotations", f"instances_{split}.json"), os.path.join(path, "images", split)),
        (os.path.join(path, split, "_annotations.coco.json"), os.path.join(path, split)),
    ]
    for annotation_file, image_folder in layouts:
        if os.path.isfile(annotation_file) and os.path.isdir(image_folder):
            return annotation_file, image_folder
    tried = ", ".join(f"{a} with {i}/" for a, i in layouts)
    raise FileNotFoundError(f"Split {split!r} of COCO dataset {path} not found: tried {tried}.")


def _load_json(annotation_file: str) -> dict:
    try:
        with open(annotation_file, encoding="utf-8-sig") as f:
            content = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Invalid JSON in {annotation_file} at line {error.lineno}, column {error.colno}: {error.msg}. "
            "Re-export the annotations or fix the file."
        ) from error
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(content.get(key), list)]
    if missing:
        raise ValueError(
            f"Invalid COCO file {annotation_file}: the lists {missing} are missing; expected "
            "'images', 'annotations' and 'categories'."
        )
    return content


def _categories(content: dict, annotation_file: str) -> dict[int, str]:
    """Map category id to name, leaving out placeholder categories.

    A category that is only the supercategory of others and has no annotation of
    its own (Roboflow exports add one, named after the dataset) is not a class.
    """
    names = {}
    for category in content["categories"]:
        try:
            names[int(category["id"])] = str(category["name"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"Invalid category {category!r} in {annotation_file}: {error}") from error

    used = {a.get("category_id") for a in content["annotations"]}
    parents = {c.get("supercategory") for c in content["categories"]}
    placeholders = [i for i, name in names.items() if name in parents and i not in used and len(names) > 1]
    for i in placeholders:
        logger.info("COCO reader: category %d %r in %s is only a supercategory, not a class",
                    i, names[i], annotation_file)
        del names[i]
    return dict(sorted(names.items()))


def _image_path(image_folder: str, entry: dict, where: str, report: DataReport) -> Optional[str]:
    """Resolve an image entry's ``file_name`` inside ``image_folder``; never follow it outside."""
    file_name = str(entry.get("file_name", ""))
    path = os.path.normpath(os.path.join(image_folder, file_name))
    if not file_name or os.path.isabs(file_name) or not is_inside(image_folder, path):
        report.skip("image path outside the dataset folder", where, f"file_name={file_name!r}; it was not read")
        return None
    return path


def _image_entries(content, image_folder, annotation_file, report: DataReport) -> dict:
    """Map image id to ``(path, ImageInfo)`` for every readable image entry."""
    entries = {}
    for entry in tqdm(content["images"], desc="Checking COCO images", unit="image", leave=False):
        where = f"{annotation_file} image id {entry.get('id')!r}"
        path = _image_path(image_folder, entry, where, report)
        if path is None:
            continue
        if not os.path.isfile(path):
            report.skip("annotation without image", where, f"{path} not found")
            continue
        try:
            info = inspect_image(path)
        except ImageProblem as problem:
            report.skip(problem.reason, path, problem.detail)
            continue
        declared = (entry.get("width"), entry.get("height"))
        if declared != (info.width, info.height) and None not in declared:
            report.note(
                "size element differs from the image", where,
                f"width/height {declared[0]}x{declared[1]}, image {info.width}x{info.height}; "
                "boxes are scaled by the image size",
            )
        entries[entry.get("id")] = (path, info)
    return entries


def _box(annotation, info: ImageInfo, where: str, report: DataReport) -> Optional[np.ndarray]:
    try:
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        report.skip("box with missing or non-numeric coordinates", where, f"bbox={annotation.get('bbox')!r}")
        return None
    if w < 0 or h < 0:
        report.skip("box with negative size", where, f"bbox={annotation['bbox']}")
        return None
    corners = [y / info.height, x / info.width, (y + h) / info.height, (x + w) / info.width]
    return check_corners(corners, where, report)


def read_coco(path: str, split: str, class_names: Optional[Sequence[str]] = None) -> DetectionDataset:
    """Read one split of a COCO JSON dataset.

    Args:
        path: the dataset folder, or one annotation file.
        split: e.g. ``train2017``, ``val2017`` (COCO) or ``train``, ``valid``, ``test`` (Roboflow).
        class_names: class order; default: the category names in id order.

    Returns:
        the dataset; images without annotations are background images, and
        skipped, repaired and noted problems are counted and logged.
    """
    annotation_file, image_folder = find_coco_files(path, split)
    content = _load_json(annotation_file)
    categories = _categories(content, annotation_file)
    class_names = list(class_names) if class_names else list(categories.values())
    class_index = {name: i for i, name in enumerate(class_names)}
    report = DataReport("COCO reader")
    entries = _image_entries(content, image_folder, annotation_file, report)

    objects = {image_id: ([], [], []) for image_id in entries}
    listed_ids = {image.get("id") for image in content["images"]}
    for number, annotation in enumerate(content["annotations"]):
        where = f"{annotation_file} annotation {annotation.get('id', number)!r}"
        image_id = annotation.get("image_id")
        if image_id not in entries:
            if image_id not in listed_ids:
                report.skip("annotation of an unknown image id", where, f"image_id={image_id!r}")
            continue  # the reader skipped this image and reported why
        name = categories.get(annotation.get("category_id"))
        if name not in class_index:
            report.skip("box of unknown class", where, f"category_id={annotation.get('category_id')!r}")
            continue
        box = _box(annotation, entries[image_id][1], where, report)
        if box is None:
            continue
        boxes, labels, crowd = objects[image_id]
        boxes.append(box)
        labels.append(class_index[name])
        crowd.append(bool(annotation.get("iscrowd", 0)))

    samples = []
    for image_id, (image_path, info) in entries.items():
        boxes, labels, crowd = objects[image_id]
        samples.append(Sample(image_path, np.array(boxes).reshape(-1, 4), labels, crowd, info=info))
    dataset = DetectionDataset.from_report(class_names, samples, f"coco:{path}", split, report)
    logger.info("Read %s", dataset.describe())
    return dataset
