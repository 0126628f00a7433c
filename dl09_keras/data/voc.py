"""Reader of Pascal VOC folders: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/SPLIT.txt``.

VOC boxes are pixel coordinates ``xmin ymin xmax ymax`` (decimals allowed); they
are divided by the image size and clipped to [0, 1]. The image size comes from
the image file itself, after its EXIF rotation, because the ``<size>`` element
of real annotations is sometimes wrong. An image whose objects are all
"difficult", or that has none, is kept as it is.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from dl09_keras.data.dataset import DetectionDataset, Sample
from dl09_keras.data.images import IMAGE_EXTENSIONS, ImageInfo
from dl09_keras.data.report import DataReport, check_corners, check_image

logger = logging.getLogger(__name__)


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


def _image_candidates(root: str, stem: str, xml_filename: Optional[str], where: str, report: DataReport):
    """List the image paths to try: the XML's ``<filename>`` first, then the stem with each extension.

    A ``<filename>`` with a folder part (``../x.jpg``, ``/etc/x.jpg``) is never
    followed: it is reported and the stem is used.
    """
    folder = os.path.join(root, "JPEGImages")
    candidates = [os.path.join(folder, stem + ext) for ext in IMAGE_EXTENSIONS]
    if xml_filename:
        if os.path.basename(xml_filename.replace("\\", "/")) != xml_filename:
            report.repair(
                "file name outside the image folder ignored", where,
                f"<filename>{xml_filename}</filename>; the image is looked up by the annotation's name",
            )
        else:
            candidates.insert(0, os.path.join(folder, xml_filename))
    return candidates


def _parse_objects(tree, xml_path, info: ImageInfo, class_index, report: DataReport):
    boxes, labels, difficult = [], [], []
    for number, obj in enumerate(tree.findall("object"), start=1):
        where = f"{xml_path} object {number}"
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            report.skip("box of unknown class", where, f"name={name!r}; known: {sorted(class_index)}")
            continue

        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            fields = {k: box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")} if box is not None else None
            report.skip("box with missing or non-numeric coordinates", where, f"bndbox={fields}")
            continue

        corners = [ymin / info.height, xmin / info.width, ymax / info.height, xmax / info.width]
        box = check_corners(corners, where, report)
        if box is None:
            continue
        boxes.append(box)
        labels.append(class_index[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return boxes, labels, difficult


def _check_size_element(tree, xml_path, info: ImageInfo, report: DataReport):
    """Note a ``<size>`` that differs from the image; the image's own size is used."""
    try:
        width, height = int(float(tree.findtext("size/width"))), int(float(tree.findtext("size/height")))
    except (TypeError, ValueError):
        return  # <size> is optional, and only informative here
    if (width, height) != (info.width, info.height):
        report.note(
            "size element differs from the image", xml_path,
            f"<size> {width}x{height}, image {info.width}x{info.height}; boxes are scaled by the image size",
        )


def _read_split_list(root: str, split: str) -> list[str]:
    if split == "all":
        return sorted(f[:-4] for f in os.listdir(os.path.join(root, "Annotations")) if f.endswith(".xml"))
    list_folder = os.path.join(root, "ImageSets", "Main")
    list_file = os.path.join(list_folder, f"{split}.txt")
    if not os.path.isfile(list_file):
        available = sorted(f[:-4] for f in os.listdir(list_folder) if f.endswith(".txt")) if os.path.isdir(list_folder) else []
        raise FileNotFoundError(f"Split list {list_file} not found: choose one of {available + ['all']}.")
    with open(list_file, encoding="utf-8-sig") as f:
        return [line.split()[0] for line in f if line.strip()]


def _read_sample(root, stem, class_index, report: DataReport) -> Optional[Sample]:
    """Read one annotation and its image, or return None with the reason in ``report``."""
    xml_path = os.path.join(root, "Annotations", f"{stem}.xml")
    if os.path.sep in stem or "/" in stem or stem in ("..", "."):
        report.skip("split entry outside the dataset folder", stem, "a split list names files, not paths")
        return None
    if not os.path.isfile(xml_path):
        report.skip("image without annotation file", xml_path)
        return None
    try:
        tree = _read_xml(xml_path)
    except ValueError as error:
        report.skip("unreadable annotation file", xml_path, str(error))
        return None

    candidates = _image_candidates(root, stem, tree.findtext("filename"), xml_path, report)
    image_path = next((c for c in candidates if os.path.isfile(c)), None)
    if image_path is None:
        report.skip("annotation without image", xml_path, f"tried {candidates[0]}")
        return None
    info = check_image(root, image_path, xml_path, report)
    if info is None:
        return None

    _check_size_element(tree, xml_path, info, report)
    boxes, labels, difficult = _parse_objects(tree, xml_path, info, class_index, report)
    return Sample(image_path, np.array(boxes).reshape(-1, 4), labels, difficult, info=info)


def read_voc(path: str, split: str, class_names: Optional[Sequence[str]] = None) -> DetectionDataset:
    """Read one split of a VOC folder.

    Args:
        path: the VOC folder, or a folder with exactly one VOC folder inside.
        split: name of a list in ``ImageSets/Main`` (``train``, ``val``, ``trainval``,
            ``test``), or ``all`` for every annotation file.
        class_names: class order; default: sorted names from all annotation files,
            so every split of one folder gets the same order.

    Returns:
        the dataset; skipped, repaired and noted problems are counted and logged.
    """
    root = find_voc_root(path)
    stems = _read_split_list(root, split)
    class_names = list(class_names) if class_names else voc_class_names(root)
    class_index = {name: i for i, name in enumerate(class_names)}
    report = DataReport("VOC reader")

    samples = []
    for stem in tqdm(stems, desc=f"Reading VOC {split}", unit="image", leave=False):
        sample = _read_sample(root, stem, class_index, report)
        if sample is not None:
            samples.append(sample)

    dataset = DetectionDataset.from_report(class_names, samples, f"voc:{path}", split, report)
    logger.info("Read %s", dataset.describe())
    return dataset
