"""Parse a dataset spec (``voc:PATH``, ``yolo:PATH``, ``coco:PATH``, ``tfds:NAME``, ``shapes``) and read the split."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from dl09_keras.data.coco import read_coco
from dl09_keras.data.dataset import DetectionDataset
from dl09_keras.data.shapes import generate_shapes
from dl09_keras.data.tfds import parse_tfds_path, read_tfds
from dl09_keras.data.voc import read_voc
from dl09_keras.data.yolo import read_yolo

from dl09_keras.training_args import SPEC_HELP


READERS = {"voc": read_voc, "yolo": read_yolo, "coco": read_coco, "tfds": read_tfds}


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:path`` into its parts; ``shapes`` has no path."""
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "shapes":
        return kind, ""
    if kind not in READERS or not path:
        raise ValueError(f"Invalid dataset spec {spec!r}: expected {SPEC_HELP}.")
    return kind, path if kind == "tfds" else os.path.expanduser(path)


def absolute_spec(spec: str) -> str:
    """Return ``spec`` with an absolute path, e.g. ``voc:../data`` to ``voc:/home/me/data``."""
    kind, path = parse_spec(spec)
    if kind == "shapes":
        return kind
    if kind == "tfds":
        name, data_dir = parse_tfds_path(path)
        return f"tfds:{name}@{os.path.abspath(data_dir)}" if data_dir else spec
    return f"{kind}:{os.path.abspath(path)}"


def load_dataset(spec: str, split: str, class_names: Optional[Sequence[str]] = None) -> DetectionDataset:
    """Read ``split`` of the dataset named by ``spec``.

    Args:
        spec: ``voc:PATH``, ``yolo:PATH``, ``coco:PATH``, ``tfds:NAME[@DATA_DIR]`` or ``shapes``.
        split: the split name of that format.
        class_names: expected class order, e.g. from a trained run; a dataset
            whose own names differ is rejected, because labels would change meaning.
    """
    kind, path = parse_spec(spec)
    if kind == "shapes":
        dataset = generate_shapes(split)
    else:
        dataset = READERS[kind](path, split, class_names)
    if class_names is not None and list(class_names) != dataset.class_names:
        raise ValueError(
            f"Class names of {spec} ({dataset.class_names}) differ from the expected "
            f"{list(class_names)}: evaluate a run on data with the classes it was trained on."
        )
    return dataset
