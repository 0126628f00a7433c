"""The in-memory description of a detection dataset, shared by every reader.

A sample is one image with its boxes in the library's convention: normalized
``[ymin, xmin, ymax, xmax]`` float32 (N, 4), 0-based int32 labels (N,) that
index ``class_names``, and N >= 0. Readers keep the image as a file path and
decode it in the tf.data pipeline; the synthetic generator keeps the pixels.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from dl09_keras.data.images import ImageInfo
from dl09_keras.data.report import DataReport, Problem, note_suspicious_boxes

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Sample:
    """One image and its ground truth.

    Args:
        path: image file, or None when ``image`` contains the pixels.
        boxes: float32 (N, 4) normalized corners.
        labels: int32 (N,) 0-based class indices.
        difficult: bool (N,), VOC's flag; difficult boxes are left out of
            training and ignored by the evaluation.
        image: uint8 (H, W, 3) RGB pixels, or None for a file sample.
        info: size, EXIF orientation and decode ratio of the file, from
            :func:`dl09_keras.data.images.inspect_image`; None for in-memory samples.
    """

    path: Optional[str]
    boxes: np.ndarray
    labels: np.ndarray
    difficult: Optional[np.ndarray] = None
    image: Optional[np.ndarray] = None
    info: Optional[ImageInfo] = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), bool)
        self.difficult = np.asarray(self.difficult, bool).reshape(-1)
        if not len(self.boxes) == len(self.labels) == len(self.difficult):
            raise ValueError(
                f"Sample {self.path or '<in memory>'} has {len(self.boxes)} boxes, "
                f"{len(self.labels)} labels and {len(self.difficult)} difficult flags: "
                "expected one of each per object."
            )

    @property
    def name(self) -> str:
        return self.path or "<in memory>"


@dataclasses.dataclass
class DetectionDataset:
    """A list of samples with their class names.

    Args:
        class_names: name of each 0-based label.
        samples: the images and their boxes.
        source: the spec the dataset was read from, e.g. ``voc:/data/bccd``.
        split: the split name, e.g. ``trainval``.
        skipped: reason to count of the boxes or images the reader dropped.
        repaired: reason to count of the values the reader fixed and used.
        noted: reason to count of the oddities read as they are.
        problems: every problem above with its file, for ``dl09 check-data``.
    """

    class_names: list[str]
    samples: list[Sample]
    source: str = ""
    split: str = ""
    skipped: dict = dataclasses.field(default_factory=dict)
    repaired: dict = dataclasses.field(default_factory=dict)
    noted: dict = dataclasses.field(default_factory=dict)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @classmethod
    def from_report(cls, class_names, samples, source: str, split: str, report: DataReport):
        """Build a dataset whose problem counts come from a reader's ``report``.

        Duplicate and tiny boxes are noted in ``report`` here, once for every reader.
        """
        note_suspicious_boxes(samples, report)
        return cls(
            list(class_names), samples, source, split,
            skipped=report.counts("skipped"),
            repaired=report.counts("repaired"),
            noted=report.counts("noted"),
            problems=list(report.problems),
        )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_boxes(self) -> int:
        return int(sum(len(s.boxes) for s in self.samples))

    def class_counts(self) -> dict[str, int]:
        counts = np.zeros(self.num_classes, int)
        for sample in self.samples:
            np.add.at(counts, sample.labels, 1)
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def describe(self) -> str:
        counts = ", ".join(f"{name} {count}" for name, count in self.class_counts().items())
        text = f"{self.source} [{self.split}]: {len(self)} images, {self.num_boxes()} boxes ({counts})"
        if self.skipped:
            text += f"; skipped {self.skipped}"
        if self.repaired:
            text += f"; repaired {self.repaired}"
        return text
