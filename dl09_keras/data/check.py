"""``dl09 check-data``: read a whole dataset and report its classes, box sizes and problems.

The check reads each split with the same reader as training, so what it
reports is exactly what training would skip, repair or use as it is.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
from typing import Optional, Sequence

import numpy as np

from dl09_keras.anchors import box_scales
from dl09_keras.data.dataset import DetectionDataset
from dl09_keras.data.sources import load_dataset, parse_spec

# Examples printed per problem reason; --all-problems prints every one.
EXAMPLES_PER_REASON = 3


def available_splits(spec: str) -> list[str]:
    """List the splits that ``check-data`` reads when none is named."""
    kind, path = parse_spec(spec)
    if kind == "shapes":
        return ["train", "val", "test"]
    if kind == "voc":
        return ["all"]
    if kind == "yolo":
        found = {p.split(os.sep)[-2] for p in glob.glob(os.path.join(path, "*", "images"))}
        found |= {os.path.basename(p) for p in glob.glob(os.path.join(path, "images", "*")) if os.path.isdir(p)}
        return _ordered(found)
    if kind == "coco":
        if os.path.isfile(path):
            return ["all"]
        found = {os.path.basename(p)[len("instances_"):-len(".json")]
                 for p in glob.glob(os.path.join(path, "annotations", "instances_*.json"))}
        found |= {p.split(os.sep)[-2] for p in glob.glob(os.path.join(path, "*", "_annotations.coco.json"))}
        return _ordered(found)
    raise ValueError(f"Name the split of {spec} to check with --split, e.g. --split train.")


def _ordered(splits) -> list[str]:
    order = {"train": 0, "trainval": 1, "val": 2, "valid": 2, "validation": 2, "test": 3}
    return sorted(splits, key=lambda s: (order.get(s, 4), s))


@dataclasses.dataclass
class SplitSummary:
    """Counts and box statistics of one split; sizes are in pixels of the image as displayed."""

    split: str
    images: int
    background_images: int
    boxes_per_class: dict[str, int]
    difficult_boxes: int
    box_width: list[float]
    box_height: list[float]
    box_scale: list[float]
    aspect_ratio: list[float]
    image_sizes: dict[str, int]


def summarize(dataset: DetectionDataset) -> SplitSummary:
    """Compute the counts and box size statistics of a dataset."""
    widths, heights = [], []
    image_sizes = collections.Counter()
    difficult = 0
    for sample in dataset.samples:
        if sample.info is not None:
            height, width = sample.info.height, sample.info.width
        else:
            height, width = sample.image.shape[:2]
        image_sizes[f"{width}x{height}"] += 1
        heights.extend((sample.boxes[:, 2] - sample.boxes[:, 0]) * height)
        widths.extend((sample.boxes[:, 3] - sample.boxes[:, 1]) * width)
        difficult += int(sample.difficult.sum())

    boxes = np.concatenate([s.boxes for s in dataset.samples]) if dataset.samples else np.zeros((0, 4))
    return SplitSummary(
        split=dataset.split,
        images=len(dataset),
        background_images=sum(len(s.boxes) == 0 for s in dataset.samples),
        boxes_per_class=dataset.class_counts(),
        difficult_boxes=difficult,
        box_width=widths,
        box_height=heights,
        box_scale=list(box_scales(boxes)) if len(boxes) else [],
        aspect_ratio=list(np.asarray(widths) / np.maximum(np.asarray(heights), 1e-9)),
        image_sizes=dict(image_sizes.most_common()),
    )


def _quantiles(values: Sequence[float], digits: int) -> str:
    if len(values) == 0:
        return "no boxes"
    q = np.quantile(values, [0.0, 0.05, 0.5, 0.95, 1.0])
    return "  ".join(f"{v:.{digits}f}" for v in q)


def format_split(dataset: DetectionDataset, summary: SplitSummary, all_problems: bool) -> list[str]:
    """Return the report lines of one split."""
    lines = [
        f"== {dataset.source} [{summary.split}]: {summary.images} images "
        f"({summary.background_images} without objects), {dataset.num_boxes()} boxes, "
        f"{summary.difficult_boxes} of them difficult or crowd",
        "",
        f"  {'class':<20} {'boxes':>7}",
    ]
    for name, count in summary.boxes_per_class.items():
        lines.append(f"  {name:<20} {count:>7}")
    sizes = ", ".join(f"{size} ({n})" for size, n in list(summary.image_sizes.items())[:5])
    more = f" and {len(summary.image_sizes) - 5} more" if len(summary.image_sizes) > 5 else ""
    lines += [
        "",
        f"  image sizes (width x height): {sizes}{more}",
        "  box statistics             min     5%    50%    95%    max",
        f"  width (pixels)        {_quantiles(summary.box_width, 1)}",
        f"  height (pixels)       {_quantiles(summary.box_height, 1)}",
        f"  scale sqrt(h*w) (normalized) {_quantiles(summary.box_scale, 3)}",
        f"  aspect ratio w/h      {_quantiles(summary.aspect_ratio, 2)}",
        "",
    ]
    lines += format_problems(dataset, all_problems)
    return lines


def format_problems(dataset: DetectionDataset, all_problems: bool) -> list[str]:
    """Group the problems by outcome and reason, with examples that name the file."""
    if not dataset.problems:
        return ["  problems: none found", ""]
    lines = [f"  problems: {len(dataset.problems)}"]
    groups = collections.defaultdict(list)
    for problem in dataset.problems:
        groups[(problem.action, problem.reason)].append(problem)
    for (action, reason), problems in sorted(groups.items()):
        lines.append(f"  - {action} {len(problems)} x {reason}")
        shown = problems if all_problems else problems[:EXAMPLES_PER_REASON]
        for problem in shown:
            detail = f": {problem.detail}" if problem.detail else ""
            lines.append(f"      {problem.where}{detail}")
        if len(shown) < len(problems):
            lines.append(f"      ... {len(problems) - len(shown)} more (--all-problems lists them)")
    lines.append("")
    return lines


def trainability(datasets: Sequence[DetectionDataset], strict: bool) -> list[str]:
    """Return the reasons the data cannot be trained on; an empty list means it can."""
    reasons = []
    total_boxes = sum(d.num_boxes() for d in datasets)
    if total_boxes == 0:
        reasons.append("no split has a single usable box")
    for dataset in datasets:
        if len(dataset) == 0:
            reasons.append(f"split {dataset.split!r} has no usable image")
    if strict:
        skipped = sum(sum(d.skipped.values()) for d in datasets)
        if skipped:
            reasons.append(f"--strict: {skipped} boxes or images were skipped")
    return reasons


def suggest_scales(dataset: DetectionDataset, input_size, num_maps: int) -> list[str]:
    """Fit default-box scales to the boxes and compare their coverage with the SSD paper's."""
    from dl09_keras.anchors import DefaultBoxConfig, default_boxes, fit_scales, match_coverage
    from dl09_keras.models import SSDConfig, build_ssd, feature_shapes

    boxes = [s.boxes for s in dataset.samples]
    model = build_ssd(SSDConfig(dataset.num_classes, input_size, num_maps=num_maps))
    shapes = feature_shapes(model)
    low, high = fit_scales(boxes, shapes, input_size)
    lines = [f"== default-box scales for an SSD at input {input_size[0]}x{input_size[1]} (feature maps {shapes})"]
    for label, config in (("SSD paper's scales", DefaultBoxConfig()), ("fitted to these boxes",
                                                                        DefaultBoxConfig(min_scale=low, max_scale=high))):
        coverage = match_coverage(boxes, default_boxes(shapes, input_size, config))
        lines.append(f"  {label:<22} {config.min_scale:.3f} to {config.max_scale:.3f}: "
                     f"{100 * coverage:.1f}% of the boxes have a default box with IoU >= 0.5")
    lines.append(f"  suggestion: train.py --scales {low:.3f},{high:.3f} (or --scales auto, which fits them itself)")
    return lines


def check_data(spec: str, splits: Optional[Sequence[str]] = None, strict=False, all_problems=False,
               input_size=(320, 320), num_maps=6, suggest=True) -> tuple[int, str]:
    """Read every split of ``spec`` and return ``(exit_code, report_text)``.

    The exit code is 0 when the data can be trained on and 1 otherwise. A
    reader error that stops reading (a malformed data.yaml or COCO JSON) is
    raised, and ``dl09`` turns it into exit code 2.
    """
    splits = list(splits) if splits else available_splits(spec)
    if not splits:
        raise FileNotFoundError(f"No split found in {spec}: name one with --split.")
    datasets, lines = [], []
    class_names = None
    for split in splits:
        dataset = load_dataset(spec, split, class_names)
        class_names = class_names or dataset.class_names
        datasets.append(dataset)
        lines += format_split(dataset, summarize(dataset), all_problems)

    largest = max(datasets, key=lambda d: d.num_boxes())
    if suggest and largest.num_boxes():
        lines += suggest_scales(largest, input_size, num_maps) + [""]

    reasons = trainability(datasets, strict)
    if reasons:
        lines.append("NOT TRAINABLE: " + "; ".join(reasons))
        return 1, "\n".join(lines)
    skipped = sum(sum(d.skipped.values()) for d in datasets)
    used = sum(d.num_boxes() for d in datasets)
    lines.append(f"OK: trainable; {used} boxes are used and {skipped} boxes or images are skipped, as listed above.")
    return 0, "\n".join(lines)
