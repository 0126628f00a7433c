"""The record of every defect a reader finds, and the box checks every reader shares.

Each defect gets one of three outcomes, and every one is logged and counted:

- ``skipped``: the box or image is left out, with a counted reason;
- ``repaired``: the value is fixed (a box clipped to the image, min and max
  swapped back) and used;
- ``noted``: the value is used as it is, but worth a look (a ``<size>`` element
  that differs from the image, where the image's own size is used).

Where reading cannot go on (a malformed ``data.yaml`` or COCO JSON file), the
reader raises an error that names the file instead.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

# Warnings logged per reason; the rest go to the debug log and the summary.
LOGGED_PER_REASON = 5

# Boxes of one class that overlap this much are noted as duplicates.
DUPLICATE_IOU = 0.95
# Boxes narrower or lower than this many pixels of the source image are noted as tiny.
TINY_BOX_PIXELS = 2.0


@dataclasses.dataclass(frozen=True)
class Problem:
    """One defect: what was done about it, why, and where (file, line or object)."""

    action: str
    reason: str
    where: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.action}: {self.reason} in {self.where}{detail}"


class DataReport:
    """Collect the problems a reader finds while it reads one split."""

    def __init__(self, reader: str):
        self.reader = reader
        self.problems: list[Problem] = []
        self._counts: collections.Counter = collections.Counter()

    def _add(self, action: str, reason: str, where: str, detail: str):
        problem = Problem(action, reason, where, detail)
        self.problems.append(problem)
        self._counts[(action, reason)] += 1
        count = self._counts[(action, reason)]
        if count <= LOGGED_PER_REASON:
            logger.warning("%s: %s", self.reader, problem)
        else:
            logger.debug("%s: %s", self.reader, problem)
        if count == LOGGED_PER_REASON + 1:
            logger.warning("%s: more '%s' problems follow; the summary counts them all", self.reader, reason)

    def skip(self, reason: str, where: str, detail: str = ""):
        self._add("skipped", reason, where, detail)

    def repair(self, reason: str, where: str, detail: str = ""):
        self._add("repaired", reason, where, detail)

    def note(self, reason: str, where: str, detail: str = ""):
        self._add("noted", reason, where, detail)

    def counts(self, action: str) -> dict[str, int]:
        """Reason to count of the problems with ``action`` (``skipped``, ``repaired`` or ``noted``)."""
        return {reason: n for (a, reason), n in sorted(self._counts.items()) if a == action}


def is_inside(root: str, path: str) -> bool:
    """Tell whether ``path``, with symbolic links resolved, lies inside the folder ``root``."""
    root = os.path.realpath(root)
    path = os.path.realpath(path)
    return os.path.commonpath([root, path]) == root


def check_image(root: Optional[str], image_path: str, where: str, report: DataReport):
    """Inspect an image file that must lie inside ``root``; return its ImageInfo, or None when it is skipped.

    Args:
        root: the dataset folder, or None when the path was built by the reader itself.
        image_path: the image file.
        where: the annotation that names the image, for the report.
    """
    from dl09_keras.data.images import ImageProblem, inspect_image

    if root is not None and not is_inside(root, image_path):
        report.skip("image outside the dataset folder", where, f"{image_path} is a link that leaves {root}")
        return None
    try:
        return inspect_image(image_path)
    except ImageProblem as problem:
        report.skip(problem.reason, image_path, problem.detail)
        return None


def check_corners(corners, where: str, report: DataReport, swapped_is_error=False) -> Optional[np.ndarray]:
    """Validate one box and return it in the library's convention, or None when it is skipped.

    Args:
        corners: normalized ``[ymin, xmin, ymax, xmax]``; may be swapped or reach
            past [0, 1].
        where: file and object the box comes from, for the report.
        report: records what was done.
        swapped_is_error: skip a box whose max is below its min (formats that store
            a width and height, where that means a negative size) instead of
            swapping the corners back.

    Returns:
        float32 (4,) box inside [0, 1] with positive width and height, or None.
    """
    ymin, xmin, ymax, xmax = (float(v) for v in corners)
    text = f"ymin={ymin:.4g} xmin={xmin:.4g} ymax={ymax:.4g} xmax={xmax:.4g} (normalized)"
    if not all(math.isfinite(v) for v in (ymin, xmin, ymax, xmax)):
        report.skip("box with non-numeric coordinates", where, text)
        return None

    if ymax < ymin or xmax < xmin:
        if swapped_is_error:
            report.skip("box with negative size", where, text)
            return None
        report.repair("box with min and max swapped", where, text)
        ymin, ymax = sorted((ymin, ymax))
        xmin, xmax = sorted((xmin, xmax))
    if ymax == ymin or xmax == xmin:
        report.skip("box with zero width or height", where, text)
        return None

    clipped = np.clip([ymin, xmin, ymax, xmax], 0.0, 1.0).astype(np.float32)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        report.skip("box outside the image", where, text)
        return None
    # Float rounding of normalized coordinates (1e-7) is not worth a report.
    if np.abs(clipped - np.float32([ymin, xmin, ymax, xmax])).max() > 1e-6:
        report.repair("box reaching past the image, clipped", where, text)
    return clipped


def note_suspicious_boxes(samples, report: DataReport):
    """Note duplicate boxes and boxes under :data:`TINY_BOX_PIXELS`; both stay in the data.

    Args:
        samples: :class:`dl09_keras.data.dataset.Sample` objects; ``info`` gives
            the pixel size where it is known.
    """
    from dl09_keras.boxes import iou_matrix_np

    for sample in samples:
        if len(sample.boxes) == 0:
            continue
        if sample.info is not None:
            heights = (sample.boxes[:, 2] - sample.boxes[:, 0]) * sample.info.height
            widths = (sample.boxes[:, 3] - sample.boxes[:, 1]) * sample.info.width
            for i in np.flatnonzero(np.minimum(heights, widths) < TINY_BOX_PIXELS):
                report.note("tiny box", f"{sample.name} box {i + 1}",
                            f"{widths[i]:.1f}x{heights[i]:.1f} pixels; it is kept, but hardly learnable")

        iou = iou_matrix_np(sample.boxes, sample.boxes)
        same_class = sample.labels[:, None] == sample.labels[None, :]
        for i, j in zip(*np.nonzero(np.triu((iou >= DUPLICATE_IOU) & same_class, k=1))):
            report.note("duplicate box", f"{sample.name} boxes {i + 1} and {j + 1}",
                        f"IoU {iou[i, j]:.3f}, same class; both are kept")
