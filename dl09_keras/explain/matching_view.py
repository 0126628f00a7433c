"""``dl09 explain matching``: which anchors or default boxes each ground truth wins, per feature map.

SSD rule (Liu et al., 2016): each ground truth first claims its best default box,
whatever the IoU; then every other default box whose best ground truth overlaps
it with IoU >= 0.5 is matched to that ground truth. RPN rule (Ren et al., 2015):
an anchor is positive when its IoU with some ground truth is > 0.7 or when it is
a ground truth's best anchor, and it regresses to its highest-IoU ground truth.

A ground truth whose best IoU stays below the threshold is trained by its forced
match alone: no default box fits it, which predicts poor recall for such boxes.
Boxes are normalized ``[ymin, xmin, ymax, xmax]``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dl09_keras.boxes import iou_matrix_np
from dl09_keras.explain.figures import class_palette, draw_boxes, panel_grid, resize_to_input, save_png, show_image
from dl09_keras.explain.layout import BoxLayout
from dl09_keras.matching import rpn_labels_np

# Thresholds of the two rules: SSD matches at IoU >= 0.5, the RPN at IoU > 0.7.
SSD_IOU = 0.5
RPN_IOU = 0.7


@dataclasses.dataclass
class GroundTruthMatch:
    """Match result of one ground truth.

    Args:
        index: position in the image's ground truth.
        label: 0-based class.
        best_box: index of its highest-IoU box in the layout.
        best_iou: that IoU.
        best_map: feature map of ``best_box``.
        matched_per_map: boxes assigned to it on each map (int list, one per map).
        weak: True when ``best_iou`` misses the rule's threshold, so only the forced match trains it.
    """

    index: int
    label: int
    best_box: int
    best_iou: float
    best_map: int
    matched_per_map: list[int]
    weak: bool

    @property
    def matched(self) -> int:
        return int(sum(self.matched_per_map))

    @property
    def flag(self) -> str:
        if self.matched == 0:
            return "unmatched"
        return "forced only" if self.weak else ""


def ssd_assignment(gt_boxes: np.ndarray, boxes: np.ndarray, iou_threshold=SSD_IOU) -> np.ndarray:
    """Assign each default box a ground truth by the SSD rule, in NumPy.

    Args:
        gt_boxes: (G, 4) ground truth, G >= 0.
        boxes: (A, 4) default boxes.

    Returns:
        int64 (A,): the matched ground truth of each box, -1 for background. When
        two ground truths share a best box, the later one keeps it, as
        :func:`dl09_keras.matching.match_default_boxes` does.
    """
    assigned = np.full(len(boxes), -1, np.int64)
    if len(gt_boxes) == 0:
        return assigned
    iou = iou_matrix_np(np.asarray(gt_boxes, np.float32), np.asarray(boxes, np.float32), np.float32)  # (G, A)
    best_gt = iou.argmax(axis=0)
    matched = iou.max(axis=0) >= iou_threshold
    assigned[matched] = best_gt[matched]
    for g, best_box in enumerate(iou.argmax(axis=1)):
        assigned[best_box] = g
    return assigned


def rpn_assignment(gt_boxes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Assign each anchor its ground truth by the RPN rule: int64 (A,), -1 for non-positive anchors."""
    labels, matched_gt = rpn_labels_np(boxes, gt_boxes, RPN_IOU)
    return np.where(labels == 1, matched_gt, -1)


def match_ground_truths(gt_boxes, gt_labels, layout: BoxLayout) -> tuple[list[GroundTruthMatch], np.ndarray]:
    """Match one image's ground truth to a layout by the layout's rule.

    Returns:
        (one :class:`GroundTruthMatch` per ground truth, the assignment int64 (A,)).
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    if layout.match_rule == "ssd":
        assigned, threshold = ssd_assignment(gt_boxes, layout.boxes), SSD_IOU
    else:
        assigned, threshold = rpn_assignment(gt_boxes, layout.boxes), RPN_IOU
    map_of_box = layout.map_of_box()
    num_maps = len(layout.feature_shapes)
    iou = iou_matrix_np(gt_boxes, layout.boxes, np.float32) if len(gt_boxes) else np.zeros((0, len(layout.boxes)))

    matches = []
    for g in range(len(gt_boxes)):
        best_box = int(iou[g].argmax())
        best_iou = float(iou[g, best_box])
        counts = np.bincount(map_of_box[assigned == g], minlength=num_maps)
        weak = best_iou < threshold if layout.match_rule == "ssd" else best_iou <= threshold
        matches.append(GroundTruthMatch(g, int(gt_labels[g]), best_box, best_iou, int(map_of_box[best_box]),
                                        [int(c) for c in counts], bool(weak)))
    return matches, assigned


def format_matches(matches: Sequence[GroundTruthMatch], class_names: Sequence[str], layout: BoxLayout) -> str:
    """Return a text table: one row per ground truth with its best IoU and matched boxes per map."""
    maps = " ".join(f"map{k + 1:>2}" for k in range(len(layout.feature_shapes)))
    lines = [f"{'#':>3} {'class':<12} {'best IoU':>8} {'best map':>8} {maps} {'total':>5}  flag"]
    for m in matches:
        counts = " ".join(f"{c:>5}" for c in m.matched_per_map)
        lines.append(f"{m.index:>3} {class_names[m.label]:<12} {m.best_iou:>8.3f} {m.best_map + 1:>8} {counts} "
                     f"{m.matched:>5}  {m.flag}")
    flagged = sum(1 for m in matches if m.flag)
    lines.append(f"{len(matches)} ground truths, {flagged} flagged (trained by the forced best match alone, or not at all)")
    return "\n".join(lines)


def plot_matching(image: np.ndarray, gt_boxes, gt_labels, class_names: Sequence[str], layout: BoxLayout,
                  path: str) -> tuple[str, list[GroundTruthMatch]]:
    """Draw the ground truth, then each feature map with the boxes matched to every ground truth.

    Args:
        image: RGB uint8 (H, W, 3), resized stretched to the network input, the way the model receives it.
        gt_boxes: (G, 4) normalized ground truth; gt_labels: (G,) 0-based classes.

    Returns:
        (the PNG path, the matches).
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    matches, assigned = match_ground_truths(gt_boxes, gt_labels, layout)
    resized = resize_to_input(image, layout.input_size)
    colors = class_palette(len(class_names))
    gt_colors = [colors[m.label] for m in matches]
    map_of_box = layout.map_of_box()

    figure, axes = panel_grid(1 + len(layout.feature_shapes), layout.input_size)

    flagged = sum(1 for m in matches if m.flag)
    show_image(axes[0], resized, f"ground truth: {len(matches)} boxes, {flagged} flagged (!)")
    captions = [f"{'! ' if m.flag else ''}{class_names[m.label]} {m.best_iou:.2f}" for m in matches]
    draw_boxes(axes[0], gt_boxes, resized.shape, gt_colors, linewidth=2.0, captions=captions)

    for k, (map_rows, map_cols) in enumerate(layout.feature_shapes):
        on_map = np.nonzero((map_of_box == k) & (assigned >= 0))[0]
        show_image(axes[k + 1], resized, f"map {k + 1}: {map_rows} x {map_cols} cells, {len(on_map)} matched\n"
                                        f"{layout.map_notes[k]}")
        draw_boxes(axes[k + 1], gt_boxes, resized.shape, gt_colors, linewidth=2.0)
        draw_boxes(axes[k + 1], layout.boxes[on_map], resized.shape, [gt_colors[g] for g in assigned[on_map]],
                   linewidth=0.8, linestyle="--")
        best = [m for m in matches if m.best_map == k]
        draw_boxes(axes[k + 1], layout.boxes[[m.best_box for m in best]], resized.shape, "white", linewidth=1.6,
                   linestyle=":")
    rule = "IoU >= 0.5 or best" if layout.match_rule == "ssd" else "IoU > 0.7 or best"
    figure.suptitle(f"Matching ({rule}): dashed = matched boxes, dotted white = each ground truth's best box",
                    fontsize=10)
    return save_png(figure, path), matches
