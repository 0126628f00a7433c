"""``dl09 explain coverage``: the share of ground truths that some default box fits, by class and size.

A ground truth is covered when its best IoU with any default box (or anchor) is
at least 0.5. An uncovered box is still matched to its best default box, but that
box fits it poorly, so low coverage in a class or size range predicts low recall
there: the first thing to look at when choosing default-box scales.

Sizes are box scales ``sqrt(h * w)`` of normalized boxes, the unit of the SSD
scales. Difficult boxes are left out, as training leaves them out.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dl09_keras.anchors import best_iou_per_box, box_scales
from dl09_keras.explain.figures import new_figure, save_png

# Edges of the size bins, as box scales sqrt(h * w) of normalized boxes.
SIZE_EDGES = (0.0, 0.05, 0.1, 0.2, 0.4, 1.0)


@dataclasses.dataclass
class CoverageRow:
    """Coverage of one group of ground truths: ``covered[name]`` boxes of ``boxes`` per layout."""

    group: str
    name: str
    boxes: int
    covered: dict[str, int]

    def share(self, layout_name: str) -> float:
        return self.covered[layout_name] / self.boxes if self.boxes else float("nan")


def size_bin_names(edges: Sequence[float] = SIZE_EDGES) -> list[str]:
    """Names of the size bins, e.g. "0.05-0.10"."""
    return [f"{low:.2f}-{high:.2f}" for low, high in zip(edges[:-1], edges[1:])]


def coverage_table(samples, class_names: Sequence[str], layouts: dict, threshold: float = 0.5,
                   edges: Sequence[float] = SIZE_EDGES) -> list[CoverageRow]:
    """Count covered ground truths per class, per size bin and in all, for each layout.

    Args:
        samples: dataset samples with ``boxes`` (N, 4), ``labels`` (N,) and ``difficult`` (N,).
        class_names: names of the 0-based labels.
        layouts: name -> default boxes (A, 4), e.g. the chosen scales and the SSD defaults 0.2 to 0.9.
        threshold: IoU a box needs to count as covered. Default 0.5.
        edges: size-bin edges; a box of scale exactly on an edge goes to the upper bin.

    Returns:
        rows with group "class", then "size", then one row of group "all".
    """
    boxes = [s.boxes[~s.difficult] for s in samples]
    labels = [s.labels[~s.difficult] for s in samples]
    boxes = np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    covered = {name: best_iou_per_box(boxes, anchors) >= threshold for name, anchors in layouts.items()}
    size_bin = np.clip(np.searchsorted(edges, box_scales(boxes), side="right") - 1, 0, len(edges) - 2)

    def row(group, name, mask):
        return CoverageRow(group, name, int(mask.sum()), {n: int((c & mask).sum()) for n, c in covered.items()})

    rows = [row("class", name, labels == k) for k, name in enumerate(class_names)]
    rows += [row("size", name, size_bin == b) for b, name in enumerate(size_bin_names(edges))]
    rows.append(row("all", "all", np.ones(len(boxes), bool)))
    return rows


def format_coverage(rows: Sequence[CoverageRow], threshold: float = 0.5) -> str:
    """Return the coverage table as text: boxes, then the covered share per layout."""
    names = list(rows[0].covered) if rows else []
    header = f"{'group':<6} {'name':<14} {'boxes':>6} " + " ".join(f"{n:>22}" for n in names)
    lines = [f"Ground truths with a box at IoU >= {threshold}:", header]
    for r in rows:
        shares = " ".join(f"{100 * r.share(n):>21.1f}%" if r.boxes else f"{'-':>22}" for n in names)
        lines.append(f"{r.group:<6} {r.name:<14} {r.boxes:>6} {shares}")
    return "\n".join(lines)


def plot_coverage(rows: Sequence[CoverageRow], path: str, title: str) -> str:
    """Draw two bar charts, coverage by class and by size bin, one bar per layout."""
    names = list(rows[0].covered)
    figure = new_figure(11.0, 4.2)
    axes = figure.subplots(1, 2)
    for panel, group in zip(axes, ("class", "size")):
        selected = [r for r in rows if r.group == group]
        positions = np.arange(len(selected))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            shares = [100 * r.share(name) if r.boxes else 0.0 for r in selected]
            panel.bar(positions + (i - (len(names) - 1) / 2) * width, shares, width, label=name)
        panel.set_xticks(positions, [f"{r.name}\n({r.boxes})" for r in selected], fontsize=8)
        panel.set_ylim(0, 105)
        panel.set_ylabel("covered ground truths (%)")
        panel.set_title("by class" if group == "class" else "by box scale sqrt(h*w) (normalized)", fontsize=9)
        panel.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    figure.suptitle(title, fontsize=10)
    return save_png(figure, path)
