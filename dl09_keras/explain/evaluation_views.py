"""Evaluation plots of a detector: precision-recall curves, a confusion table and the worst images.

Boxes are normalized ``[ymin, xmin, ymax, xmax]``. Detections are
:class:`~dl09_keras.inference.postprocess.Detections` and ground truths
:class:`~dl09_keras.evaluation.GroundTruth`, one of each per image, in the same order.

The precision-recall curves use every detection given, as the mAP does. The
confusion table and the worst-image gallery count only the detections at or
above a score threshold (default 0.4, the default ``--score`` of ``dl09 detect``),
so they show the boxes that ``dl09 detect`` draws.
"""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dl09_keras.boxes import iou_matrix_np
from dl09_keras.evaluation import PrecisionRecall, check_same_images, precision_recall
from dl09_keras.explain.figures import (
    class_palette,
    draw_boxes,
    new_figure,
    sample_image,
    save_png,
    show_image,
    to_pixels,
)

DEFAULT_SCORE_THRESHOLD = 0.4
GROUND_TRUTH_COLOR = "limegreen"
DETECTION_COLOR = "magenta"
GALLERY_COLUMNS = 4
# A precision-recall curve with more points than this is drawn as a plain line.
MAX_MARKED_POINTS = 30

PR_CURVES_FILE = "pr_curves.png"
CONFUSION_FILE = "confusion.png"
WORST_IMAGES_FILE = "worst_images.png"


@dataclasses.dataclass(frozen=True)
class ImageErrors:
    """Error counts of one image at the score threshold of the confusion table.

    Attributes:
        index: position of the image in the evaluated list.
        missed: non-difficult ground truths that no detection took.
        false: detections that are not a correct match, because of a wrong class or no free ground truth (background).
    """

    index: int
    missed: int
    false: int

    @property
    def total(self) -> int:
        return self.missed + self.false


def _check_labels(labels: np.ndarray, num_classes: int, role: str):
    """Raise ValueError when a label is outside 0..num_classes - 1."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(
            f"Invalid {role} label {int(bad[0])}: labels must be 0..{num_classes - 1} for {num_classes} "
            "classes; pass the class names the detector was trained with."
        )


def _difficult_flags(ground_truth) -> np.ndarray:
    """Return the difficult flags (N,) of a ground truth, all False when it has none."""
    if ground_truth.difficult is None:
        return np.zeros(len(ground_truth.labels), bool)
    return np.asarray(ground_truth.difficult, bool).reshape(-1)


def image_confusion(detections, ground_truth, num_classes: int, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                    iou_threshold: float = 0.5) -> np.ndarray:
    """Count the confusion table of one image, as :func:`confusion_table` defines it.

    Returns:
        int64 (C + 1, C + 1).
    """
    keep = np.asarray(detections.scores) >= score_threshold
    scores = np.asarray(detections.scores)[keep]
    labels = np.asarray(detections.labels, np.int64)[keep]
    boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4)[keep]
    truth_boxes = np.asarray(ground_truth.boxes, np.float64).reshape(-1, 4)
    truth_labels = np.asarray(ground_truth.labels, np.int64).reshape(-1)
    difficult = _difficult_flags(ground_truth)
    _check_labels(labels, num_classes, "detection")
    _check_labels(truth_labels, num_classes, "ground-truth")

    table = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    background = missed = num_classes
    truth_matched = np.zeros(len(truth_labels), bool)
    overlaps = iou_matrix_np(boxes, truth_boxes) if len(boxes) and len(truth_boxes) else np.zeros((len(boxes), 0))

    # Greedy by falling score over all classes: each detection goes to the ground truth it overlaps most.
    for index in np.argsort(-scores, kind="stable"):
        best = int(np.argmax(overlaps[index])) if overlaps.shape[1] else -1
        above_threshold = best >= 0 and overlaps[index, best] >= iou_threshold
        if above_threshold and difficult[best]:
            continue
        if above_threshold and not truth_matched[best]:
            truth_matched[best] = True
            table[truth_labels[best], labels[index]] += 1
        else:
            table[background, labels[index]] += 1

    for label in truth_labels[~truth_matched & ~difficult]:
        table[label, missed] += 1
    return table


def image_confusion_tables(detections: Sequence, ground_truths: Sequence, num_classes: int,
                           score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                           iou_threshold: float = 0.5) -> np.ndarray:
    """Count the confusion table of every image, int64 (N, C + 1, C + 1), as :func:`confusion_table` defines it."""
    check_same_images(detections, ground_truths)
    tables = [image_confusion(d, g, num_classes, score_threshold, iou_threshold)
              for d, g in zip(detections, ground_truths)]
    if not tables:
        return np.zeros((0, num_classes + 1, num_classes + 1), np.int64)
    return np.stack(tables)


def confusion_table(detections: Sequence, ground_truths: Sequence, num_classes: int,
                    score_threshold: float = DEFAULT_SCORE_THRESHOLD, iou_threshold: float = 0.5) -> np.ndarray:
    """Count detections against ground truth over all images.

    Only detections with score >= ``score_threshold`` count. Per image, they
    are taken by falling score, whatever their class, and each goes to the
    ground truth (of any class) that it overlaps most:

    - IoU >= ``iou_threshold`` and the ground truth is free: the detection
      takes it and counts in (ground-truth class, detected class), so a box
      found with the wrong class lands off the diagonal.
    - IoU >= ``iou_threshold`` and the ground truth is difficult: the
      detection is ignored, as in the VOC rule, and difficult ground truths
      are never counted as missed.
    - otherwise (no overlap at the threshold, or a duplicate of a ground truth
      already taken): row "background" (index C), detected-class column.

    Every non-difficult ground truth left free counts in (its class, column
    "missed", index C). Cell (background, missed) is always 0.

    Args:
        detections: one ``Detections`` per image.
        ground_truths: one ``GroundTruth`` per image.
        num_classes: C, the number of classes.
        score_threshold: lowest score counted. Default 0.4.
        iou_threshold: lowest IoU of a match. Default 0.5.

    Returns:
        int64 (C + 1, C + 1): rows are the ground-truth classes then
        "background", columns the detected classes then "missed".
    """
    return image_confusion_tables(detections, ground_truths, num_classes, score_threshold, iou_threshold).sum(axis=0)


def rank_images(tables: np.ndarray, count: int = 8) -> list[ImageErrors]:
    """Rank images by missed + false boxes from their confusion tables (N, C + 1, C + 1).

    Returns:
        up to ``count`` images with at least one error, most errors first.
        Ties keep the image order.
    """
    num_classes = tables.shape[1] - 1
    errors = []
    for index, table in enumerate(tables):
        missed = int(table[:num_classes, num_classes].sum())
        correct = int(np.trace(table[:num_classes, :num_classes]))
        false = int(table[:, :num_classes].sum()) - correct
        if missed + false:
            errors.append(ImageErrors(index, missed, false))
    errors.sort(key=lambda item: -item.total)
    return errors[:count]


def worst_images(detections: Sequence, ground_truths: Sequence, num_classes: int, count: int = 8,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, iou_threshold: float = 0.5) -> list[ImageErrors]:
    """Find the ``count`` images with the most missed + false boxes, by the rules of :func:`confusion_table`.

    A false box is a detection at score >= ``score_threshold`` that is not a
    correct match: background (nothing there, or a duplicate) or a wrong class.
    """
    tables = image_confusion_tables(detections, ground_truths, num_classes, score_threshold, iou_threshold)
    return rank_images(tables, count)


def class_curves(detections: Sequence, ground_truths: Sequence, num_classes: int,
                 iou_threshold: float = 0.5) -> list[PrecisionRecall]:
    """Compute the precision-recall curve of every class (see :func:`dl09_keras.evaluation.precision_recall`)."""
    return [precision_recall(detections, ground_truths, class_id, iou_threshold) for class_id in range(num_classes)]


def curve_label(name: str, curve: PrecisionRecall) -> str:
    """Return the legend entry of a class: its name and AP, or that it has no ground truth."""
    if curve.num_ground_truths == 0:
        return f"{name} (no ground truth)"
    return f"{name} (AP {curve.average_precision():.3f})"


def plot_pr_curves(curves: Sequence[PrecisionRecall], class_names: Sequence[str], iou_threshold: float = 0.5) -> Figure:
    """Draw one precision-recall line per class, recall on x and precision on y, with the AP in the legend."""
    figure = new_figure(6.5, 5)
    axes = figure.add_subplot()
    for curve, name, color in zip(curves, class_names, class_palette(len(class_names))):
        marker = "o" if len(curve.scores) <= MAX_MARKED_POINTS else None
        axes.plot(curve.recall, curve.precision, color=color, linewidth=1.5, marker=marker, markersize=3,
                  clip_on=False, label=curve_label(name, curve))

    aps = [curve.average_precision() for curve in curves if curve.num_ground_truths]
    mean_ap = f"mAP {np.mean(aps):.3f}" if aps else "no ground truth"
    axes.set_title(f"Precision-recall per class, IoU >= {iou_threshold:g} ({mean_ap})")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    return figure


def plot_confusion(table: np.ndarray, class_names: Sequence[str], score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                   iou_threshold: float = 0.5) -> Figure:
    """Draw a confusion table (C + 1, C + 1) from :func:`confusion_table` as a heat map with its counts."""
    size = max(5.0, 1.5 + 0.7 * len(table))
    figure = new_figure(size + 1, size)
    axes = figure.add_subplot()
    axes.imshow(table, cmap="Blues", vmin=0, vmax=max(int(table.max()), 1))

    high = table.max() / 2
    for (row, column), count in np.ndenumerate(table):
        axes.text(column, row, str(count), ha="center", va="center", fontsize=9,
                  color="white" if count > high else "black")

    positions = np.arange(len(table))
    axes.set_xticks(positions, [*class_names, "missed"], rotation=45, ha="right")
    axes.set_yticks(positions, [*class_names, "background"])
    axes.set_xlabel("detected class")
    axes.set_ylabel("ground-truth class")
    axes.set_title(f"Detections with score >= {score_threshold:g} against ground truth (IoU >= {iou_threshold:g})",
                   fontsize=10)
    caption = (
        "Detections are matched greedily by falling score, whatever their class, each to the ground truth it "
        "overlaps most. Row 'background': a detection with no free ground truth at the IoU threshold (nothing "
        "there, or a duplicate). Column 'missed': a ground truth that no detection took. Difficult boxes are "
        "ignored (VOC rule)."
    )
    figure.supxlabel(textwrap.fill(caption, width=int(size * 14)), fontsize=8)
    return figure


def _draw_image_errors(axes, sample, detections, ground_truth, errors: ImageErrors, class_names, score_threshold):
    """Show one image with its ground truth and its detections at or above the threshold."""
    image = sample_image(sample)
    name = os.path.basename(sample.path) if sample.path else "in memory"
    show_image(axes, image, f"#{errors.index} {name}: {errors.missed} missed, {errors.false} false")

    difficult = _difficult_flags(ground_truth)
    captions = [class_names[label] + (" (difficult)" if hard else "")
                for label, hard in zip(ground_truth.labels, difficult)]
    draw_boxes(axes, ground_truth.boxes, image.shape, GROUND_TRUTH_COLOR, linewidth=2, captions=captions)

    keep = np.asarray(detections.scores) >= score_threshold
    draw_boxes(axes, detections.boxes[keep], image.shape, DETECTION_COLOR, linestyle="--")
    # Detection captions go under the bottom-left corner, so they do not hide the ground-truth captions on top.
    for (_, x0, y1, _), label, score in zip(to_pixels(detections.boxes[keep], image.shape),
                                            detections.labels[keep], detections.scores[keep]):
        axes.text(x0, y1, f"{class_names[label]} {score:.2f}", fontsize=6, color="black", va="top",
                  bbox={"facecolor": DETECTION_COLOR, "edgecolor": "none", "pad": 0.5, "alpha": 0.8})


def plot_worst_images(samples: Sequence, detections: Sequence, ground_truths: Sequence, ranking: Sequence[ImageErrors],
                      class_names: Sequence[str], score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> Figure:
    """Draw a grid of the ranked images, ground truth and detections in two colors, counts in each title."""
    if not ranking:
        figure = new_figure(6, 2)
        figure.text(0.5, 0.5, f"No image has a missed or false box at score >= {score_threshold:g}.",
                    ha="center", va="center")
        return figure

    columns = min(GALLERY_COLUMNS, len(ranking))
    rows = math.ceil(len(ranking) / columns)
    figure = new_figure(3.5 * columns, 3.2 * rows + 0.6)
    for position, errors in enumerate(ranking):
        axes = figure.add_subplot(rows, columns, position + 1)
        _draw_image_errors(axes, samples[errors.index], detections[errors.index], ground_truths[errors.index],
                           errors, class_names, score_threshold)

    handles = [
        Line2D([], [], color=GROUND_TRUTH_COLOR, linewidth=2, label="ground truth"),
        Line2D([], [], color=DETECTION_COLOR, linestyle="--", label=f"detection (score >= {score_threshold:g})"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9)
    figure.suptitle(f"The {len(ranking)} images with the most missed + false boxes (false: wrong class or background)",
                    fontsize=10)
    return figure


def write_evaluation_plots(folder: str, samples: Sequence, detections: Sequence, ground_truths: Sequence,
                           class_names: Sequence[str], score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                           iou_threshold: float = 0.5, count: int = 8) -> list[str]:
    """Write pr_curves.png, confusion.png and worst_images.png into ``folder``, replacing older ones.

    Args:
        folder: output folder, created when missing.
        samples: the evaluated dataset samples (for the pixels of the gallery).
        detections: one ``Detections`` per sample.
        ground_truths: one ``GroundTruth`` per sample.
        class_names: names of the 0-based labels.
        score_threshold: lowest score of the confusion table and the gallery. Default 0.4.
        iou_threshold: lowest IoU of a match. Default 0.5.
        count: images in the gallery. Default 8.

    Returns:
        the paths of the three PNG files.
    """
    if len(samples) != len(ground_truths):
        raise ValueError(
            f"Got {len(samples)} samples but ground truth for {len(ground_truths)} images: "
            "pass the evaluated samples and their ground truths in the same order."
        )
    check_same_images(detections, ground_truths)
    num_classes = len(class_names)

    curves = class_curves(detections, ground_truths, num_classes, iou_threshold)
    pr_path = save_png(plot_pr_curves(curves, class_names, iou_threshold), os.path.join(folder, PR_CURVES_FILE))

    tables = image_confusion_tables(detections, ground_truths, num_classes, score_threshold, iou_threshold)
    confusion = plot_confusion(tables.sum(axis=0), class_names, score_threshold, iou_threshold)
    confusion_path = save_png(confusion, os.path.join(folder, CONFUSION_FILE))

    ranking = rank_images(tables, count)
    gallery = plot_worst_images(samples, detections, ground_truths, ranking, class_names, score_threshold)
    gallery_path = save_png(gallery, os.path.join(folder, WORST_IMAGES_FILE))
    return [pr_path, confusion_path, gallery_path]
