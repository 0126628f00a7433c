"""``dl09 explain anchors``: the cell centers of each feature map and the k boxes of one cell.

Each panel shows the image stretched to the network input, which is what the
model receives. On it are the centers of every cell of one feature map (one
dot per cell, k boxes each) and the k anchors or default boxes of the cell
nearest a chosen point.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib import colormaps

from dl09_keras.explain.figures import draw_boxes, panel_grid, resize_to_input, save_png, show_image
from dl09_keras.explain.layout import BoxLayout


def plot_anchors(image: np.ndarray, layout: BoxLayout, path: str, point: Sequence[float] = (0.5, 0.5)) -> str:
    """Draw one panel per feature map: its cell centers and the k boxes of the cell nearest ``point``.

    Args:
        image: RGB uint8 (H, W, 3), any size; resized stretched to ``layout.input_size``.
        layout: the detector's boxes.
        path: output PNG file.
        point: normalized (y, x) of the chosen cell on every map. Default the image center.
    """
    y, x = (float(v) for v in point)
    if not (0.0 <= y <= 1.0 and 0.0 <= x <= 1.0):
        raise ValueError(f"Invalid point {tuple(point)}: expected normalized Y,X in [0, 1], such as 0.5,0.5.")
    height, width = layout.input_size
    resized = resize_to_input(image, layout.input_size)
    figure, axes = panel_grid(len(layout.feature_shapes), layout.input_size)

    for k, (map_rows, map_cols) in enumerate(layout.feature_shapes):
        cell = layout.nearest_cell(k, (y, x))
        boxes = layout.cell_boxes(k, *cell)
        count = layout.boxes_per_cell[k]
        show_image(axes[k], resized, f"map {k + 1}: {map_rows} x {map_cols} cells, {count} boxes per cell\n"
                                   f"{layout.map_notes[k]}")
        centers = layout.cell_centers(k)
        dot = max(0.5, min(12.0, 2000.0 / len(centers)))
        axes[k].scatter(centers[:, 1] * width, centers[:, 0] * height, s=dot, c="cyan", linewidths=0)
        colors = [colormaps["autumn"](i / max(count - 1, 1)) for i in range(count)]
        draw_boxes(axes[k], boxes, resized.shape, colors, linewidth=1.5)
        center = centers[cell[0] * map_cols + cell[1]]
        axes[k].scatter([center[1] * width], [center[0] * height], s=40, c="red", marker="x")
    figure.suptitle(f"{layout.task.upper()} {'default boxes' if layout.task == 'ssd' else 'anchors'} on a "
                    f"{height} x {width} input: {len(layout.boxes)} in all; red x = the cell drawn", fontsize=10)
    return save_png(figure, path)
