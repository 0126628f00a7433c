"""The anchors or default boxes of a detector, grouped by feature map and cell.

A :class:`BoxLayout` contains every anchor (RPN, Faster R-CNN) or default box
(SSD) of a detector in the order of its head outputs: feature map after feature
map, then cells in row-major order, then the k boxes of a cell. Boxes are
normalized ``[ymin, xmin, ymax, xmax]`` of the network input, which the image
fills after a stretch to the input size.

A layout comes from a finished run folder (its metadata.json) or from the
model options of ``train.py`` (the model is built once to read its map shapes).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from dl09_keras.anchors import DefaultBoxConfig, RPNAnchorConfig, default_boxes, feature_map_scales, rpn_anchors

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BoxLayout:
    """Anchors or default boxes of one detector.

    Args:
        task: "ssd", "rpn" or "faster_rcnn".
        input_size: (height, width) of the network input in pixels.
        feature_shapes: (rows, cols) of each feature map with boxes, finest first.
        boxes_per_cell: k, the boxes of one cell of each map.
        boxes: float32 (A, 4) normalized corners, ``A = sum(rows * cols * k)``.
        map_notes: one short description of the box shapes of each map.
        summary: the scales or sizes in a few characters, e.g. "scales 0.07-0.61".
    """

    task: str
    input_size: tuple[int, int]
    feature_shapes: list[tuple[int, int]]
    boxes_per_cell: list[int]
    boxes: np.ndarray
    map_notes: list[str]
    summary: str = ""

    def __post_init__(self):
        counts = [r * c * k for (r, c), k in zip(self.feature_shapes, self.boxes_per_cell)]
        if sum(counts) != len(self.boxes):
            raise ValueError(f"The layout's maps {self.feature_shapes} with k={self.boxes_per_cell} hold "
                             f"{sum(counts)} boxes, but {len(self.boxes)} boxes were given.")

    @property
    def match_rule(self) -> str:
        """"ssd" (IoU >= 0.5 or best) for default boxes, "rpn" (IoU > 0.7 or best) for anchors."""
        return "ssd" if self.task == "ssd" else "rpn"

    def map_starts(self) -> np.ndarray:
        """Return int64 (M + 1,): the first box index of each map, then the box count."""
        counts = [r * c * k for (r, c), k in zip(self.feature_shapes, self.boxes_per_cell)]
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def map_of_box(self) -> np.ndarray:
        """Return int64 (A,): the feature map of each box."""
        starts = self.map_starts()
        return np.searchsorted(starts, np.arange(len(self.boxes)), side="right") - 1

    def cell_boxes(self, map_index: int, row: int, col: int) -> np.ndarray:
        """Return the k boxes (k, 4) of cell (row, col) of feature map ``map_index``."""
        rows, cols = self.feature_shapes[map_index]
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"Cell ({row}, {col}) is outside feature map {map_index} of {rows} x {cols} cells.")
        k = self.boxes_per_cell[map_index]
        start = self.map_starts()[map_index] + (row * cols + col) * k
        return self.boxes[start:start + k]

    def cell_centers(self, map_index: int) -> np.ndarray:
        """Return the normalized (cy, cx) of every cell of a map, float64 (rows * cols, 2), row-major."""
        rows, cols = self.feature_shapes[map_index]
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
        return np.stack([cy.ravel(), cx.ravel()], axis=-1)

    def nearest_cell(self, map_index: int, point: Sequence[float]) -> tuple[int, int]:
        """Return the (row, col) of map ``map_index`` whose center is nearest the normalized point (y, x)."""
        rows, cols = self.feature_shapes[map_index]
        y, x = (float(v) for v in point)
        return min(int(y * rows), rows - 1), min(int(x * cols), cols - 1)


def _ratio_text(ratios) -> str:
    """Write aspect ratios as 1,2,3,1/2,1/3."""
    parts = []
    for ratio in ratios:
        inverse = 1.0 / ratio
        parts.append(f"1/{round(inverse)}" if ratio < 1 and abs(inverse - round(inverse)) < 1e-6 else f"{ratio:g}")
    return ",".join(parts)


def ssd_layout(feature_shapes, input_size, box_config: DefaultBoxConfig) -> BoxLayout:
    """Return the layout of an SSD's default boxes (see :func:`dl09_keras.anchors.default_boxes`)."""
    shapes = [tuple(int(v) for v in s) for s in feature_shapes]
    scales = feature_map_scales(len(shapes), box_config.min_scale, box_config.max_scale)
    extra = " + extra" if box_config.extra_box else ""
    notes = [f"scale {scales[k]:.3f}, ratios {_ratio_text(box_config.aspect_ratios)}{extra}" for k in range(len(shapes))]
    return BoxLayout("ssd", tuple(int(v) for v in input_size), shapes, [box_config.boxes_per_location] * len(shapes),
                     default_boxes(shapes, input_size, box_config), notes,
                     f"scales {box_config.min_scale:.2f}-{box_config.max_scale:.2f}")


def rpn_layout(task: str, feature_shape, input_size, anchor_config: RPNAnchorConfig) -> BoxLayout:
    """Return the layout of the anchors of an RPN or Faster R-CNN (see :func:`dl09_keras.anchors.rpn_anchors`)."""
    shape = tuple(int(v) for v in feature_shape)
    sizes = ",".join(f"{s:.2f}" for s in anchor_config.sizes)
    note = f"sizes {sizes}, ratios {_ratio_text(anchor_config.aspect_ratios)}"
    return BoxLayout(task, tuple(int(v) for v in input_size), [shape], [anchor_config.anchors_per_location],
                     rpn_anchors(shape, input_size, anchor_config), [note], f"sizes {sizes}")


def layout_from_metadata(metadata: dict) -> BoxLayout:
    """Rebuild the layout a run trained with from its metadata.json contents."""
    task = metadata.get("task", "ssd")
    input_size = metadata["input_size"]
    facts = metadata["anchors"]
    if task == "ssd":
        return ssd_layout(facts["feature_shapes"], input_size, DefaultBoxConfig.from_dict(facts["config"]))
    return rpn_layout(task, facts["feature_shape"], input_size, RPNAnchorConfig.from_dict(facts["config"]))


def layout_from_recipe(recipe) -> BoxLayout:
    """Return the layout of a :class:`dl09_keras.training.Recipe` built from train.py options."""
    return layout_from_metadata({"task": recipe.task, "input_size": list(recipe.config.input_size),
                                 "anchors": recipe.anchors})
