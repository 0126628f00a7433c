"""Figures of optimizers: trajectories on 2-D loss surfaces, their animation, and training-loss curves.

The figures are drawn on matplotlib ``Figure`` objects with the Agg canvas,
without pyplot, so they work headless and leave matplotlib's global state
alone.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

# Floor of f - minimum on log axes, so a run that reaches the minimum exactly stays on the plot.
LOSS_FLOOR = 1e-16
ANIMATION_FORMATS = ("gif", "mp4")


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _contour_levels(surface, values: np.ndarray) -> np.ndarray:
    if surface.log_contours:
        gap = values - surface.minimum
        return surface.minimum + np.geomspace(max(np.min(gap[gap > 0]), 1e-3), np.max(gap), 20)
    # Quantiles give every band of the window a similar area, so flat and steep regions both show lines.
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, 22)[1:-1]))


def draw_surface(axes, surface, resolution: int = 240, arrows: int = 15):
    """Draw the contour lines of ``surface`` and arrows along its negative gradient.

    The arrows have unit length: they show the direction of steepest descent,
    not its size.
    """
    x = np.linspace(*surface.x_range, resolution)
    y = np.linspace(*surface.y_range, resolution)
    grid_x, grid_y = np.meshgrid(x, y)
    values = surface.evaluate(grid_x, grid_y)
    axes.contour(grid_x, grid_y, values, levels=_contour_levels(surface, values), cmap="viridis", linewidths=0.8)

    arrow_x, arrow_y = np.meshgrid(np.linspace(*surface.x_range, arrows), np.linspace(*surface.y_range, arrows))
    dx, dy = surface.gradient(arrow_x, arrow_y)
    # Each axis is scaled by its window size, so the arrows point downhill on the plot's own aspect ratio.
    width = surface.x_range[1] - surface.x_range[0]
    height = surface.y_range[1] - surface.y_range[0]
    u, v = -dx / width, -dy / height
    length = np.hypot(u, v)
    length[length == 0] = 1.0
    axes.quiver(arrow_x, arrow_y, u / length * width, v / length * height, color="0.6", angles="xy",
                scale_units="xy", scale=arrows * 1.2, width=0.003)

    for minimizer in surface.minimizers:
        axes.plot(*minimizer, marker="*", markersize=14, color="gold", markeredgecolor="black", zorder=5)
    axes.plot(*surface.start, marker="o", markersize=7, color="black", zorder=5)
    axes.set_xlim(*surface.x_range)
    axes.set_ylim(*surface.y_range)
    axes.set_xlabel("x")
    axes.set_ylabel("y")


def _label(trajectory) -> str:
    label = f"{trajectory.optimizer} (lr {trajectory.learning_rate:g})"
    return label + ", diverged" if trajectory.diverged else label


def _trajectory_figure(surface, title):
    figure = _new_figure(13.0, 5.2)
    surface_axes, loss_axes = figure.subplots(1, 2, width_ratios=[1.25, 1.0])
    draw_surface(surface_axes, surface)
    surface_axes.set_title(title or surface.title)

    loss_axes.set_yscale("log")
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("f - minimum")
    loss_axes.set_title("loss")
    loss_axes.grid(True, which="major", alpha=0.3)
    return figure, surface_axes, loss_axes


def plot_trajectories(surface, trajectories, path: str, title: str | None = None) -> str:
    """Save a PNG of trajectories over the contour lines of ``surface``, with the loss curves beside them.

    Args:
        surface: a :class:`dl09_keras.optimizers.surfaces.Surface`.
        trajectories: :class:`dl09_keras.optimizers.surfaces.Trajectory` objects.
        path: the PNG file to write; its folder is created.
        title: the title above the surface. Default: the surface's title.

    Returns:
        ``path``.
    """
    figure, surface_axes, loss_axes = _trajectory_figure(surface, title)
    for trajectory in trajectories:
        line, = surface_axes.plot(trajectory.points[:, 0], trajectory.points[:, 1], linewidth=1.5, marker=".",
                                  markersize=3, label=_label(trajectory))
        loss_axes.plot(np.maximum(trajectory.losses - surface.minimum, LOSS_FLOOR), color=line.get_color(),
                       linewidth=1.5, label=_label(trajectory))
    loss_axes.legend(fontsize=8, loc="upper right")

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    logger.info("Saved %s", path)
    return path


def animate_trajectories(surface, trajectories, path: str, fps: int = 15, frames: int = 90,
                         title: str | None = None) -> str:
    """Save an animation of the trajectories growing step by step, as a GIF or an MP4.

    Args:
        surface: a :class:`dl09_keras.optimizers.surfaces.Surface`.
        trajectories: :class:`dl09_keras.optimizers.surfaces.Trajectory` objects.
        path: a ``.gif`` file (written with matplotlib's PillowWriter) or an
            ``.mp4`` file (written with OpenCV's mp4v encoder).
        fps: frames per second. Default 15.
        frames: the number of frames, spread evenly over the steps. Default 90.
        title: the title above the surface. Default: the surface's title.

    Returns:
        ``path``.
    """
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension not in ANIMATION_FORMATS:
        raise ValueError(f"Invalid animation file {path!r}: use a .gif or .mp4 name.")
    if fps < 1 or frames < 1:
        raise ValueError(f"Invalid animation: fps {fps} and frames {frames} must both be 1 or more.")

    figure, surface_axes, loss_axes = _trajectory_figure(surface, title)
    steps = max(len(t.points) for t in trajectories)
    shown_steps = np.unique(np.linspace(1, steps, min(frames, steps)).round().astype(int))
    paths, heads, curves = [], [], []
    for trajectory in trajectories:
        line, = surface_axes.plot([], [], linewidth=1.5, label=_label(trajectory))
        paths.append(line)
        heads.append(surface_axes.plot([], [], marker="o", markersize=6, color=line.get_color())[0])
        curves.append(loss_axes.plot([], [], color=line.get_color(), linewidth=1.5, label=_label(trajectory))[0])
    losses = [np.maximum(t.losses - surface.minimum, LOSS_FLOOR) for t in trajectories]
    loss_axes.set_xlim(0, steps)
    loss_axes.set_ylim(max(min(np.min(v) for v in losses), LOSS_FLOOR) / 2, max(np.max(v) for v in losses) * 2)
    loss_axes.legend(fontsize=8, loc="upper right")
    step_text = surface_axes.text(0.02, 0.96, "", transform=surface_axes.transAxes, va="top")

    def draw_frame(index):
        count = shown_steps[index]
        for trajectory, line, head, curve, loss in zip(trajectories, paths, heads, curves, losses):
            visible = trajectory.points[:count]
            line.set_data(visible[:, 0], visible[:, 1])
            head.set_data(visible[-1:, 0], visible[-1:, 1])
            curve.set_data(np.arange(len(visible)), loss[:count])
        step_text.set_text(f"step {count - 1}")
        return [*paths, *heads, *curves, step_text]

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if extension == "gif":
        from matplotlib.animation import FuncAnimation, PillowWriter

        animation = FuncAnimation(figure, draw_frame, frames=len(shown_steps), blit=False)
        animation.save(path, writer=PillowWriter(fps=fps))
    else:
        _write_mp4(figure, draw_frame, len(shown_steps), path, fps)
    logger.info("Saved %s (%d frames)", path, len(shown_steps))
    return path


def _write_mp4(figure, draw_frame, frame_count: int, path: str, fps: int):
    import cv2

    figure.canvas.draw()
    width, height = figure.canvas.get_width_height()
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise ValueError(f"Cannot write video {path}: OpenCV has no MP4 encoder here; save a .gif instead.")
    try:
        for index in range(frame_count):
            draw_frame(index)
            figure.canvas.draw()
            rgba = np.asarray(figure.canvas.buffer_rgba())
            writer.write(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))
    finally:
        writer.release()


def plot_loss_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str, title: str) -> str:
    """Save a PNG of training-loss curves, one line per optimizer.

    Args:
        curves: optimizer label to (step numbers, the training loss at each of them).
        path: the PNG file to write; its folder is created.
        title: the figure title.

    Returns:
        ``path``.
    """
    figure = _new_figure(8.0, 5.0)
    axes = figure.subplots()
    for label, (steps, losses) in curves.items():
        axes.plot(steps, losses, marker="o", markersize=3, linewidth=1.5, label=label)
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("training loss")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    logger.info("Saved %s", path)
    return path
