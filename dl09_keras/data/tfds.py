"""Reader of detection datasets from tensorflow-datasets (``tfds:voc/2007``, ``tfds:coco/2017``).

The spec is ``tfds:NAME`` or ``tfds:NAME@DATA_DIR``. Without ``@DATA_DIR``,
tensorflow-datasets' own default applies (``$TFDS_DATA_DIR``, else
``~/tensorflow_datasets``). Nothing is downloaded: prepare the dataset once with
``tfds build NAME --data_dir DATA_DIR``.

The first read of a split writes its images as JPEG files (quality 95) and its
raw objects to ``DATA_DIR/dl09_images/NAME/VERSION/SPLIT/``, so that every
later stage works on files as with the other readers. Later reads use those
files. Boxes go through the same checks as every reader on each read.

Any builder whose features have ``image`` and ``objects/bbox`` with
``objects/label`` works. ``objects/is_difficult`` (VOC) and ``objects/is_crowd``
(COCO) mark boxes that training leaves out and the evaluation ignores.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from dl09_keras.atomic import write_text
from dl09_keras.data.dataset import DetectionDataset, Sample
from dl09_keras.data.images import ImageProblem, inspect_image
from dl09_keras.data.report import DataReport, check_corners

logger = logging.getLogger(__name__)

CACHE_FOLDER = "dl09_images"
INDEX_FILE = "index.json"


def parse_tfds_path(path: str) -> tuple[str, Optional[str]]:
    """Split ``NAME@DATA_DIR`` into the builder name and the data folder (None: the tfds default)."""
    name, _, data_dir = path.partition("@")
    return name.strip(), os.path.expanduser(data_dir) if data_dir else None


def _load(name: str, split: str, data_dir: Optional[str]):
    import tensorflow_datasets as tfds  # imported here because it takes seconds and most runs never need it

    try:
        return tfds.load(name, split=split, data_dir=data_dir, download=False, with_info=True, shuffle_files=False)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as error:
        first_line = str(error).strip().splitlines()[0]  # a misspelled name lists every dataset after it
        raise FileNotFoundError(
            f"tensorflow-datasets failed to load {name!r} split {split!r} from "
            f"{data_dir or 'its default data_dir'}: {first_line} Prepare it once with "
            f"`tfds build {name} --data_dir DATA_DIR` and pass tfds:{name}@DATA_DIR."
        ) from error


def _objects_of(example) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    objects = example["objects"]
    difficult_key = next((k for k in ("is_difficult", "is_crowd") if k in objects), None)
    boxes = np.asarray(objects["bbox"], np.float32).reshape(-1, 4)
    labels = np.asarray(objects["label"], np.int64).reshape(-1)
    difficult = np.asarray(objects[difficult_key], bool).reshape(-1) if difficult_key else np.zeros(len(labels), bool)
    return boxes, labels, difficult


def _write_split(ds, folder: str, description: str) -> list[dict]:
    """Write the images of ``ds`` as JPEG files in ``folder``; return the raw objects per image."""
    os.makedirs(folder, exist_ok=True)

    def encode(example):
        encoded = tf.io.encode_jpeg(example["image"], quality=95)
        return encoded, example.get("image/filename", tf.constant("")), example["objects"]

    entries = []
    stream = ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    for index, (encoded, original_name, objects) in enumerate(tqdm(stream.as_numpy_iterator(), desc=description, unit="image")):
        file = f"{index:07d}.jpg"
        with open(os.path.join(folder, file), "wb") as f:
            f.write(encoded)
        boxes, labels, difficult = _objects_of({"objects": objects})
        entries.append({
            "file": file,
            "name": original_name.decode("utf-8", "replace") if isinstance(original_name, bytes) else str(original_name),
            "bbox": boxes.tolist(),
            "label": labels.tolist(),
            "difficult": difficult.tolist(),
        })
    return entries


def _cached_entries(name, split, data_dir) -> tuple[str, list[dict], list[str]]:
    """Return the cache folder, the raw entries and the class names, writing the cache when missing."""
    ds, info = _load(name, split, data_dir)
    class_names = list(info.features["objects"]["label"].names)
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    folder = os.path.join(root, CACHE_FOLDER, name, str(info.version), split.replace("/", "_"))
    index_path = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            return folder, json.load(f)["images"], class_names

    entries = _write_split(ds, folder, f"Writing {name} {split} images")
    index = {"builder": name, "version": str(info.version), "split": split, "images": entries}
    # The index appears last and atomically, so an interrupted first read is simply redone.
    write_text(index_path, json.dumps(index))
    return folder, entries, class_names


def read_tfds(path: str, split: str, class_names: Optional[Sequence[str]] = None) -> DetectionDataset:
    """Read one split of a tensorflow-datasets detection dataset.

    Args:
        path: ``NAME`` or ``NAME@DATA_DIR``, e.g. ``voc/2007`` or ``coco/2017@/data/tfds``.
        split: a tfds split, e.g. ``train``, ``validation``, ``test``.
        class_names: expected class order; default: the dataset's label names.

    Returns:
        the dataset; tfds boxes are already normalized ``[ymin, xmin, ymax, xmax]``.
    """
    name, data_dir = parse_tfds_path(path)
    folder, entries, dataset_names = _cached_entries(name, split, data_dir)
    class_names = list(class_names) if class_names else dataset_names
    class_index = {n: i for i, n in enumerate(class_names)}
    report = DataReport("tfds reader")

    samples = []
    for entry in tqdm(entries, desc=f"Reading {name} {split}", unit="image", leave=False):
        image_path = os.path.join(folder, entry["file"])
        try:
            info = inspect_image(image_path)
        except ImageProblem as problem:
            report.skip(problem.reason, image_path, problem.detail)
            continue
        sample = _clean_objects(entry, image_path, dataset_names, class_index, report)
        samples.append(Sample(image_path, *sample, info=info))

    dataset = DetectionDataset.from_report(class_names, samples, f"tfds:{path}", split, report)
    logger.info("Read %s", dataset.describe())
    return dataset


def _clean_objects(entry, image_path, dataset_names, class_index, report: DataReport):
    """Check the raw objects of one image; return boxes (N, 4), labels (N,) and difficult (N,)."""
    where_image = f"{image_path} ({entry['name'] or 'no file name'})"
    count = min(len(entry["bbox"]), len(entry["label"]), len(entry["difficult"]))
    longest = max(len(entry["bbox"]), len(entry["label"]), len(entry["difficult"]))
    if longest > count:
        report.skip(
            "objects with missing fields", where_image,
            f"{len(entry['bbox'])} boxes, {len(entry['label'])} labels, {len(entry['difficult'])} "
            f"difficult flags: {longest - count} objects left out",
        )

    boxes, labels, difficult = [], [], []
    for number in range(count):
        where = f"{where_image} object {number + 1}"
        label = int(entry["label"][number])
        name = dataset_names[label] if 0 <= label < len(dataset_names) else None
        if name not in class_index:
            report.skip("box of unknown class", where, f"label={label} ({name!r})")
            continue
        box = check_corners(entry["bbox"][number], where, report)
        if box is None:
            continue
        boxes.append(box)
        labels.append(class_index[name])
        difficult.append(bool(entry["difficult"][number]))
    return np.array(boxes, np.float32).reshape(-1, 4), labels, difficult
