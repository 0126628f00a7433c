"""Shared drawing steps of the explain views: images, boxes in pixels, PNG files.

Boxes come in the library's convention, normalized ``[ymin, xmin, ymax, xmax]``,
and are drawn in pixels of the image they sit on.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dl09_keras.atomic import atomic_path

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def new_figure(width: float, height: float) -> Figure:
    """Return a headless figure of ``width`` x ``height`` inches at 100 dpi."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str) -> str:
    """Write ``figure`` to ``path`` as a PNG file, atomically; return the path."""
    if not path.lower().endswith(".png"):
        raise ValueError(f"Output {path!r} must end in .png: the explain views are PNG files.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as f:
            figure.savefig(f, format="png")
    logger.info("Wrote %s", path)
    return path


def panel_grid(count: int, input_size: Sequence[int], columns: int = 3):
    """Create a figure with ``count`` image panels, at most ``columns`` per row; return (figure, axes list).

    Panels beyond ``count`` in the last row are hidden. Each panel has the aspect of the network input.
    """
    height, width = input_size
    columns = min(columns, count)
    rows = -(-count // columns)
    figure = new_figure(4.2 * columns, 4.2 * rows * height / width + 0.6 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, list(axes[:count])


def resize_to_input(image: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """Stretch an RGB uint8 image to the network input (height, width), as inference does."""
    import cv2

    height, width = input_size
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def show_image(axes, image: np.ndarray, title: Optional[str] = None):
    """Show an RGB uint8 image (H, W, 3) with pixel coordinates, without ticks."""
    axes.imshow(image, interpolation="bilinear")
    axes.set_xlim(0, image.shape[1])
    axes.set_ylim(image.shape[0], 0)
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=9)


def to_pixels(boxes: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Scale normalized boxes (N, 4) to pixel corners of an image of shape (H, W, ...)."""
    height, width = image_shape[:2]
    return np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([height, width, height, width])


def draw_boxes(axes, boxes: np.ndarray, image_shape: Sequence[int], colors="yellow", linewidth=1.5,
               linestyle="-", alpha=1.0, captions: Optional[Sequence[str]] = None):
    """Draw normalized boxes (N, 4) as rectangles; ``colors`` is one color or one per box."""
    pixels = to_pixels(boxes, image_shape)
    if not len(pixels):
        return
    rectangles = [Rectangle((x0, y0), x1 - x0, y1 - y0) for y0, x0, y1, x1 in pixels]
    collection = PatchCollection(rectangles, facecolor="none", edgecolor=colors, linewidth=linewidth,
                                 linestyle=linestyle, alpha=alpha)
    axes.add_collection(collection)
    if captions is None:
        return
    box_colors = [colors] * len(pixels) if isinstance(colors, str) else list(colors)
    for (y0, x0, _, _), caption, color in zip(pixels, captions, box_colors):
        axes.text(x0, y0, caption, fontsize=6, color="black", va="bottom",
                  bbox={"facecolor": color, "edgecolor": "none", "pad": 0.5, "alpha": 0.8})


def class_palette(count: int) -> list:
    """Return ``count`` distinct matplotlib RGBA colors, one per class."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(index % cmap.N) for index in range(count)]


def sample_image(sample) -> np.ndarray:
    """Return the RGB uint8 pixels (H, W, 3) of a dataset sample, EXIF orientation applied."""
    if sample.image is not None:
        return np.asarray(sample.image)
    from dl09_keras.data.images import decode_image

    orientation, ratio = (sample.info.orientation, sample.info.ratio) if sample.info else (1, 1)
    return np.asarray(decode_image(sample.path, orientation, ratio))


def pick_sample(dataset, image: str | int | None):
    """Find a sample by index (``"3"``) or by file name, with or without extension.

    None picks the first sample that has a box.
    """
    samples = dataset.samples
    if not samples:
        raise ValueError(f"The dataset {dataset.describe()} has no image to explain.")
    if image is None:
        return next((s for s in samples if len(s.labels)), samples[0])
    text = str(image)
    if text.isdigit():
        index = int(text)
        if index >= len(samples):
            raise ValueError(f"Image index {index} is out of range: the split has {len(samples)} images (0..{len(samples) - 1}).")
        return samples[index]
    for sample in samples:
        if sample.path and text in (os.path.basename(sample.path), os.path.splitext(os.path.basename(sample.path))[0]):
            return sample
    raise ValueError(f"No image named {text!r} in the split: pass a file name of the split or an index 0..{len(samples) - 1}.")
