"""Reader of Pascal VOC folders: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/SPLIT.txt``.

VOC boxes are pixel coordinates ``xmin ymin xmax ymax``; they are divided by the
image size and clipped to [0, 1]. The image size comes from the image file
itself, because the ``<size>`` element of real annotations is sometimes wrong.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from dl09_keras.data.dataset import DetectionDataset, Sample, SkipCounter

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def find_voc_root(path: str) -> str:
    """Return the folder that contains ``Annotations/``: ``path`` itself or its only such subfolder."""
    if os.path.isdir(os.path.join(path, "Annotations")):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"VOC dataset folder not found: {path}")
    candidates = sorted(
        os.path.join(path, d)
        for d in os.listdir(path)
        if os.path.isdir(os.path.join(path, d, "Annotations"))
    )
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"No single VOC folder in {path}: expected Annotations/ there or in exactly one "
            f"subfolder, found {len(candidates)} ({', '.join(candidates) or 'none'})."
        )
    return candidates[0]


def _read_xml(xml_path: str):
    try:
        return ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"Invalid VOC annotation {xml_path}: {error}") from error


def voc_class_names(root: str) -> list[str]:
    """Collect the sorted class names used by all annotation files under ``root``."""
    names = set()
    annotations = os.path.join(root, "Annotations")
    for file in sorted(os.listdir(annotations)):
        if not file.endswith(".xml"):
            continue
        try:
            tree = _read_xml(os.path.join(annotations, file))
        except ValueError:
            continue  # read_voc counts and logs this file when its split includes it
        for obj in tree.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name:
                names.add(name)
    if not names:
        raise ValueError(f"No object names found in {annotations}: is this a VOC dataset?")
    return sorted(names)


def _find_image(root: str, stem: str, xml_filename: Optional[str]) -> Optional[str]:
    folder = os.path.join(root, "JPEGImages")
    candidates = [os.path.join(folder, stem + ext) for ext in IMAGE_EXTENSIONS]
    if xml_filename:
        candidates.insert(0, os.path.join(folder, os.path.basename(xml_filename)))
    return next((c for c in candidates if os.path.isfile(c)), None)


def _parse_objects(tree, xml_path, width, height, class_index, skips: SkipCounter):
    boxes, labels, difficult = [], [], []
    for number, obj in enumerate(tree.findall("object"), start=1):
        where = f"{xml_path} object {number}"
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            skips.skip("box of unknown class", where, f"name={name!r}")
            continue
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            skips.skip("box with missing or non-numeric coordinates", where)
            continue
        if xmax <= xmin or ymax <= ymin:
            skips.skip(
                "zero-area box", where, f"xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}"
            )
            continue
        corners = np.array([ymin / height, xmin / width, ymax / height, xmax / width])
        clipped = np.clip(corners, 0.0, 1.0)
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            skips.skip("box outside the image", where, f"{xmin:g},{ymin:g},{xmax:g},{ymax:g}")
            continue
        boxes.append(clipped)
        labels.append(class_index[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return boxes, labels, difficult


def read_voc(path: str, split: str, class_names: Optional[Sequence[str]] = None) -> DetectionDataset:
    """Read one split of a VOC folder.

    Args:
        path: the VOC folder, or a folder with exactly one VOC folder inside.
        split: name of a list in ``ImageSets/Main`` (``train``, ``val``, ``trainval``,
            ``test``), or ``all`` for every annotation file.
        class_names: class order; default: sorted names from all annotation files,
            so every split of one folder gets the same order.

    Returns:
        the dataset; dropped boxes and images are counted in ``skipped`` and logged.
    """
    root = find_voc_root(path)
    if split == "all":
        stems = sorted(f[:-4] for f in os.listdir(os.path.join(root, "Annotations")) if f.endswith(".xml"))
    else:
        list_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(list_file):
            available = sorted(
                f[:-4] for f in os.listdir(os.path.join(root, "ImageSets", "Main")) if f.endswith(".txt")
            ) if os.path.isdir(os.path.join(root, "ImageSets", "Main")) else []
            raise FileNotFoundError(
                f"Split list {list_file} not found: choose one of {available + ['all']}."
            )
        with open(list_file, encoding="utf-8") as f:
            stems = [line.split()[0] for line in f if line.strip()]

    class_names = list(class_names) if class_names else voc_class_names(root)
    class_index = {name: i for i, name in enumerate(class_names)}
    skips = SkipCounter("VOC reader")
    samples = []
    for stem in tqdm(stems, desc=f"Reading VOC {split}", unit="image", leave=False):
        xml_path = os.path.join(root, "Annotations", f"{stem}.xml")
        if not os.path.isfile(xml_path):
            skips.skip("image without annotation file", xml_path)
            continue
        try:
            tree = _read_xml(xml_path)
        except ValueError as error:
            skips.skip("unreadable annotation file", xml_path, str(error))
            continue
        image_path = _find_image(root, stem, tree.findtext("filename"))
        if image_path is None:
            skips.skip("annotation without image", xml_path)
            continue
        with Image.open(image_path) as image:
            width, height = image.size
        boxes, labels, difficult = _parse_objects(tree, xml_path, width, height, class_index, skips)
        samples.append(Sample(image_path, np.array(boxes).reshape(-1, 4), labels, difficult))

    dataset = DetectionDataset(class_names, samples, f"voc:{path}", split, skips.summary())
    logger.info("Read %s", dataset.describe())
    return dataset
