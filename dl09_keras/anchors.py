"""SSD default boxes (anchors), computed from the model's feature-map shapes.

Convention: boxes are normalized ``[ymin, xmin, ymax, xmax]``. The order of the
default boxes matches the flattened head outputs: feature map after feature
map, then cell after cell in row-major order, then box after box within a cell.

A default box of scale ``s`` and aspect ratio ``a`` (width / height) has, in
pixels of the network input of size H x W, width ``s * sqrt(a) * sqrt(H * W)``
and height ``s / sqrt(a) * sqrt(H * W)``. For a square input this is the SSD
paper's ``w = s * sqrt(a)``, ``h = s / sqrt(a)``; for a non-square input a box of
ratio 1 stays square in pixels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

import numpy as np

from dl09_keras.boxes import DEFAULT_VARIANCES, iou_matrix_np

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DefaultBoxConfig:
    """Settings of the SSD default boxes.

    Args:
        min_scale: scale of the first (highest-resolution) feature map, as a
            fraction of the input side. Default 0.2 (the SSD paper's s_min).
        max_scale: scale of the last feature map. Default 0.9 (s_max).
        aspect_ratios: width / height ratios of the boxes at every location.
            Default (1, 2, 3, 1/2, 1/3).
        extra_box: add the box of ratio 1 and scale ``sqrt(s_k * s_{k+1})`` at
            every location. Default True.
        variances: divisors of the encoded (cy, cx, h, w) offsets.
            Default (0.1, 0.1, 0.2, 0.2).
        clip: clip the default boxes to the image. Default False.
    """

    min_scale: float = 0.2
    max_scale: float = 0.9
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 3.0, 0.5, 1.0 / 3.0)
    extra_box: bool = True
    variances: tuple[float, float, float, float] = DEFAULT_VARIANCES
    clip: bool = False

    def __post_init__(self):
        if not 0.0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"Invalid default-box scales min_scale={self.min_scale}, "
                f"max_scale={self.max_scale}: expected 0 < min_scale <= max_scale."
            )
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(
                f"Invalid aspect_ratios={self.aspect_ratios}: expected positive width/height ratios."
            )
        if len(self.variances) != 4 or min(self.variances) <= 0:
            raise ValueError(f"Invalid variances={self.variances}: expected four positive numbers.")
        object.__setattr__(self, "aspect_ratios", tuple(float(a) for a in self.aspect_ratios))
        object.__setattr__(self, "variances", tuple(float(v) for v in self.variances))

    @property
    def boxes_per_location(self) -> int:
        """Number of default boxes at each feature-map cell."""
        return len(self.aspect_ratios) + int(self.extra_box)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "DefaultBoxConfig":
        config = dict(config)
        config["aspect_ratios"] = tuple(config.get("aspect_ratios", cls.aspect_ratios))
        config["variances"] = tuple(config.get("variances", DEFAULT_VARIANCES))
        return cls(**config)


def feature_map_scales(num_maps: int, min_scale: float, max_scale: float) -> np.ndarray:
    """Return the scales s_1 .. s_{m+1}, evenly spaced from min_scale to max_scale.

    The last entry s_{m+1} continues the even spacing past max_scale (capped at 1)
    and only sets the extra box of the last map.
    """
    if num_maps < 1:
        raise ValueError(f"Invalid num_maps={num_maps}: an SSD needs at least one feature map.")
    if num_maps == 1:
        return np.array([min_scale, min(1.0, max_scale)], dtype=np.float64)
    step = (max_scale - min_scale) / (num_maps - 1)
    scales = min_scale + step * np.arange(num_maps + 1, dtype=np.float64)
    scales[-1] = min(scales[-1], 1.0)
    return scales


def default_boxes(
    feature_shapes: Sequence[Sequence[int]],
    image_size: Sequence[int],
    config: DefaultBoxConfig = DefaultBoxConfig(),
) -> np.ndarray:
    """Compute the default boxes of an SSD.

    Args:
        feature_shapes: (height, width) of each feature map, highest resolution first.
        image_size: (height, width) of the network input in pixels.
        config: scales, aspect ratios and clipping.

    Returns:
        float32 array (A, 4) of corner boxes, ``A = sum(h * w) * boxes_per_location``.
    """
    image_height, image_width = (int(v) for v in image_size)
    geometric_side = math.sqrt(image_height * image_width)
    scales = feature_map_scales(len(feature_shapes), config.min_scale, config.max_scale)
    per_map = []
    for k, (rows, cols) in enumerate(feature_shapes):
        # Box sizes at this map, in pixels: one per aspect ratio, then the extra box.
        sizes = [
            (scales[k] / math.sqrt(a), scales[k] * math.sqrt(a)) for a in config.aspect_ratios
        ]
        if config.extra_box:
            extra = math.sqrt(scales[k] * scales[k + 1])
            sizes.append((extra, extra))
        sizes = np.array(sizes, dtype=np.float64) * geometric_side
        sizes /= np.array([image_height, image_width], dtype=np.float64)

        # Cell centers, normalized, row-major.
        cy = (np.arange(rows, dtype=np.float64) + 0.5) / rows
        cx = (np.arange(cols, dtype=np.float64) + 0.5) / cols
        centers = np.stack(np.meshgrid(cy, cx, indexing="ij"), axis=-1).reshape(-1, 1, 2)

        half = sizes[None, :, :] / 2
        corners = np.concatenate([centers - half, centers + half], axis=-1)
        per_map.append(corners.reshape(-1, 4))
    boxes = np.concatenate(per_map, axis=0)
    if config.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    return boxes.astype(np.float32)


def box_scales(boxes: np.ndarray) -> np.ndarray:
    """Scale of each normalized box: ``sqrt(h * w)``, the side of a square of equal area."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def fit_scales(
    boxes_per_image: Sequence[np.ndarray],
    feature_shapes: Sequence[Sequence[int]],
    image_size: Sequence[int],
    config: DefaultBoxConfig = DefaultBoxConfig(),
    max_boxes: int = 1500,
) -> tuple[float, float]:
    """Choose (min_scale, max_scale) that give most ground-truth boxes a good default box.

    Candidates are quantiles of the ground-truth scales. First min_scale is
    chosen among the 2% to 20% quantiles (with max_scale at the 98% quantile),
    then max_scale among the 95% to 99.5% quantiles, each by the highest
    :func:`match_coverage` on up to ``max_boxes`` boxes. The smallest quantile is
    not always best, because default boxes much smaller than the spacing of the
    first feature map miss most objects between their centers. The scale of a
    normalized box does not depend on the input size, because images are resized
    to the input without keeping the aspect ratio.

    NOTE: only quantiles are candidates. A wider range such as the SSD paper's
    0.2 to 0.9 is never tried, and on data with many boxes near the largest size it
    can cover more boxes (``dl09 explain coverage`` compares the two).

    Returns:
        (min_scale, max_scale), each rounded to 3 decimals and kept within [0.02, 0.95].
    """
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes_per_image]
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    if len(boxes) == 0:
        raise ValueError("Cannot fit default-box scales: the dataset has no boxes.")
    subset = boxes[:: max(1, len(boxes) // max_boxes)]
    scales = box_scales(boxes)

    def coverage_of(low, high):
        low = round(float(np.clip(low, 0.02, 0.95)), 3)
        high = round(float(np.clip(high, low, 0.95)), 3)
        candidate = dataclasses.replace(config, min_scale=low, max_scale=high)
        coverage = match_coverage([subset], default_boxes(feature_shapes, image_size, candidate))
        logger.debug("Scales %.3f..%.3f cover %.3f of the boxes", low, high, coverage)
        return coverage, low, high

    high = np.quantile(scales, 0.98)
    lows = [coverage_of(low, high) for low in np.quantile(scales, [0.02, 0.05, 0.1, 0.15, 0.2])]
    _, low, _ = max(lows, key=lambda entry: entry[0])  # the first of equals: the smallest scale
    highs = [coverage_of(low, high) for high in np.quantile(scales, [0.95, 0.98, 0.995])]
    _, low, high = max(highs, key=lambda entry: entry[0])
    return low, high


def best_iou_per_box(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Return, for each box (N, 4), its highest IoU with any anchor or default box (A, 4): float32 (N,)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    best = np.zeros(len(boxes), np.float32)
    # Chunks bound the memory of the (boxes, anchors) IoU matrix.
    for start in range(0, len(boxes), 256):
        best[start:start + 256] = iou_matrix_np(boxes[start:start + 256], anchors, np.float32).max(axis=1)
    return best


def match_coverage(boxes_per_image: Sequence[np.ndarray], anchors: np.ndarray, threshold=0.5) -> float:
    """Share of ground-truth boxes that have a default box with IoU >= threshold.

    Boxes below the threshold still get their best default box when matched,
    but they train one box only, so a low coverage points to badly sized scales.
    """
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes_per_image]
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    if len(boxes) == 0:
        return float("nan")
    return int((best_iou_per_box(boxes, anchors) >= threshold).sum()) / len(boxes)


@dataclasses.dataclass(frozen=True)
class RPNAnchorConfig:
    """Settings of the Faster R-CNN anchors on one feature map.

    A size ``s`` is a fraction of ``sqrt(H * W)`` of the network input, as the
    SSD scales are, so that anchors scale with the input size. The Faster R-CNN
    paper's anchor sides 128, 256 and 512 px on inputs of about 600 x 1000 px are
    0.17, 0.33 and 0.66 in these units.

    Args:
        sizes: anchor sizes, smallest first. Default (0.125, 0.25, 0.5).
        aspect_ratios: width / height ratios. Default (0.5, 1, 2), the paper's 1:2, 1:1, 2:1.
    """

    sizes: tuple[float, ...] = (0.125, 0.25, 0.5)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self):
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"Invalid anchor sizes={self.sizes}: expected positive fractions of the input side.")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(f"Invalid aspect_ratios={self.aspect_ratios}: expected positive width/height ratios.")
        object.__setattr__(self, "sizes", tuple(float(s) for s in self.sizes))
        object.__setattr__(self, "aspect_ratios", tuple(float(a) for a in self.aspect_ratios))

    @property
    def anchors_per_location(self) -> int:
        """k, the number of anchors at each feature-map cell."""
        return len(self.sizes) * len(self.aspect_ratios)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "RPNAnchorConfig":
        return cls(tuple(config["sizes"]), tuple(config["aspect_ratios"]))


def rpn_anchors(feature_shape: Sequence[int], image_size: Sequence[int], config: RPNAnchorConfig = RPNAnchorConfig()) -> np.ndarray:
    """Compute the k anchors of every cell of one feature map.

    Args:
        feature_shape: (height, width) of the feature map.
        image_size: (height, width) of the network input in pixels.
        config: sizes and aspect ratios.

    Returns:
        float32 (height * width * k, 4) normalized ``[ymin, xmin, ymax, xmax]``,
        not clipped. Order: cells row-major, then sizes, then aspect ratios, so
        anchor ``(i * width + j) * k + s * len(ratios) + r``.
    """
    rows, cols = (int(v) for v in feature_shape)
    input_height, input_width = (float(v) for v in image_size)
    side = math.sqrt(input_height * input_width)

    shapes = []
    for size in config.sizes:
        for ratio in config.aspect_ratios:
            width = size * math.sqrt(ratio) * side / input_width
            height = size / math.sqrt(ratio) * side / input_height
            shapes.append((height, width))
    shapes = np.array(shapes, np.float64)

    cy, cx = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    centers = np.stack([cy.ravel(), cx.ravel()], -1)[:, None, :]
    half = shapes[None, :, :] / 2
    anchors = np.concatenate([centers - half, centers + half], -1)
    return anchors.reshape(-1, 4).astype(np.float32)
