"""Two-dimensional loss surfaces and optimizer trajectories on them.

Each surface shows one difficulty of gradient descent:

- valley: a steep, narrow valley, ``0.05 x**2 + 5 y**2``. The gradient is large
  across the valley, where the minimum is near, and small along it, where the
  minimum is far. Plain and momentum steps zigzag across; adaptive methods
  scale each coordinate's step.
- plateau: ``1 - exp(-(x**2 + 2 y**2) / 10)``, nearly flat far from the
  minimum. The gradient at the start is about 3e-3, so plain steps crawl while
  methods that divide by the gradient's magnitude keep a useful step size.
- rosenbrock: Rosenbrock's function ``(1 - x)**2 + 100 (y - x**2)**2``, a curved valley with its
  minimum at (1, 1).
- saddle: ``x**2 + y**4 / 4 - y**2 / 2``, a saddle point at the origin and
  minima at (0, +-1). The start lies almost on the ridge, so the escape
  depends on how a method amplifies a tiny gradient.

A trajectory is computed by a real Keras optimizer on a float64 variable of
shape (2,), with the gradient from ``tf.GradientTape``. A 1-D variable has one
neuron per element, so per-neuron and per-parameter granularity coincide here.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dl09_keras.optimizers import get_optimizer, parse_optimizer_spec

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Surface:
    """A loss f(x, y) with a start point, a plot window and learning rates that suit it.

    Args:
        name: the key in ``SURFACES``.
        title: a short description for figure titles.
        loss: f(x, y) on tensors or NumPy arrays of equal shape, written with
            TensorFlow ops so that it is differentiable.
        start: the starting point (x, y).
        x_range: (min, max) of the plot window along x.
        y_range: (min, max) of the plot window along y.
        minimum: the lowest value of f, so that figures can show f - minimum
            on a log scale.
        minimizers: the points (x, y) where f reaches ``minimum``.
        learning_rates: a learning rate per optimizer name that makes a
            readable trajectory on this surface within a few hundred steps.
        log_contours: space the contour levels logarithmically.
    """

    name: str
    title: str
    loss: Callable
    start: tuple[float, float]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    minimum: float
    minimizers: tuple[tuple[float, float], ...]
    learning_rates: dict[str, float]
    log_contours: bool = False

    def evaluate(self, x, y) -> np.ndarray:
        """Return f on NumPy arrays, as float64."""
        return np.asarray(self.loss(tf.constant(x, tf.float64), tf.constant(y, tf.float64)))

    def gradient(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Return (df/dx, df/dy) on NumPy arrays, by automatic differentiation."""
        x = tf.constant(x, tf.float64)
        y = tf.constant(y, tf.float64)
        with tf.GradientTape() as tape:
            tape.watch([x, y])
            value = self.loss(x, y)
        dx, dy = tape.gradient(value, [x, y])
        return dx.numpy(), dy.numpy()


def _valley(x, y):
    return 0.05 * x ** 2 + 5.0 * y ** 2


def _plateau(x, y):
    return 1.0 - tf.exp(-(x ** 2 + 2.0 * y ** 2) / 10.0)


def _rosenbrock(x, y):
    return (1.0 - x) ** 2 + 100.0 * (y - x ** 2) ** 2


def _saddle(x, y):
    return x ** 2 + y ** 4 / 4.0 - y ** 2 / 2.0


SURFACES = {
    "valley": Surface(
        "valley", "steep narrow valley: 0.05 x² + 5 y²", _valley, start=(-9.0, 1.2),
        x_range=(-10.0, 10.0), y_range=(-2.0, 2.0), minimum=0.0, minimizers=((0.0, 0.0),),
        learning_rates={"sgd": 0.18, "dl09_momentum": 0.02, "dl09_nesterov": 0.02, "dl09_adagrad": 1.0,
                        "dl09_adadelta": 1.0, "dl09_rmsprop": 0.05, "dl09_adam": 0.3},
    ),
    "plateau": Surface(
        "plateau", "shallow plateau: 1 - exp(-(x² + 2 y²) / 10)", _plateau, start=(-6.0, 3.5),
        x_range=(-7.0, 7.0), y_range=(-5.0, 5.0), minimum=0.0, minimizers=((0.0, 0.0),),
        learning_rates={"sgd": 0.5, "dl09_momentum": 0.05, "dl09_nesterov": 0.05, "dl09_adagrad": 0.5,
                        "dl09_adadelta": 1.0, "dl09_rmsprop": 0.05, "dl09_adam": 0.1},
    ),
    "rosenbrock": Surface(
        "rosenbrock", "Rosenbrock: (1 - x)² + 100 (y - x²)²", _rosenbrock, start=(-1.2, 1.0),
        x_range=(-2.0, 2.0), y_range=(-1.0, 3.0), minimum=0.0, minimizers=((1.0, 1.0),),
        learning_rates={"sgd": 1.5e-3, "dl09_momentum": 3e-4, "dl09_nesterov": 3e-4, "dl09_adagrad": 1.0,
                        "dl09_adadelta": 1.0, "dl09_rmsprop": 0.01, "dl09_adam": 0.1},
        log_contours=True,
    ),
    "saddle": Surface(
        "saddle", "saddle: x² + y⁴/4 - y²/2", _saddle, start=(-1.8, 1e-3),
        x_range=(-2.0, 2.0), y_range=(-1.5, 1.5), minimum=-0.25, minimizers=((0.0, 1.0), (0.0, -1.0)),
        learning_rates={"sgd": 0.05, "dl09_momentum": 0.01, "dl09_nesterov": 0.01, "dl09_adagrad": 0.3,
                        "dl09_adadelta": 1.0, "dl09_rmsprop": 0.02, "dl09_adam": 0.05},
    ),
}

# Adadelta's first steps have the size sqrt(epsilon) / sqrt(s + epsilon) * g, so with its default epsilon of
# 1e-6 it barely leaves the start within a few hundred steps on these surfaces; 1e-4 shows its behaviour.
DEFAULT_OPTIMIZERS = ("sgd", "dl09_momentum", "dl09_nesterov", "dl09_adagrad", "dl09_adadelta:epsilon=1e-4",
                      "dl09_rmsprop", "dl09_adam")


def get_surface(name: str) -> Surface:
    """Return the surface called ``name``; raise ValueError naming the choices otherwise."""
    if name not in SURFACES:
        raise ValueError(f"Unknown surface {name!r}: choose one of {', '.join(SURFACES)}.")
    return SURFACES[name]


@dataclasses.dataclass
class Trajectory:
    """The points an optimizer visits on a surface.

    Args:
        optimizer: the optimizer's name, as given to ``get_optimizer``.
        learning_rate: the learning rate used.
        points: float64 (steps + 1, 2), the start point first.
        losses: float64 (steps + 1,), f at each point.
        diverged: the run stopped early because a point left the finite numbers.
    """

    optimizer: str
    learning_rate: float
    points: np.ndarray
    losses: np.ndarray
    diverged: bool = False


def run_trajectory(surface: Surface, optimizer: str, steps: int, learning_rate: float | None = None) -> Trajectory:
    """Minimize ``surface`` with the optimizer registered as ``optimizer`` for ``steps`` steps.

    Args:
        surface: the surface.
        optimizer: a name of ``dl09_keras.optimizers.OPTIMIZERS``, with options
            as in ``get_optimizer`` (e.g. ``dl09_adam:bias_correction=false``).
        steps: the number of optimizer steps, 1 or more.
        learning_rate: None takes ``surface.learning_rates`` for the name
            without options, or 0.01 for a name it does not list.

    Returns:
        the trajectory. A run whose loss becomes infinite or NaN stops there
        and is marked ``diverged``.
    """
    if steps < 1:
        raise ValueError(f"Invalid steps {steps}: expected 1 or more.")
    if learning_rate is None:
        learning_rate = surface.learning_rates.get(parse_optimizer_spec(optimizer)[0].lower(), 0.01)
    keras_optimizer = get_optimizer(optimizer, learning_rate)
    point = keras.Variable(np.asarray(surface.start, np.float64), dtype="float64", name="point")

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = surface.loss(point[0], point[1])
        keras_optimizer.apply([tape.gradient(loss, point)], [point])

    points = [point.numpy()]
    diverged = False
    for _ in range(steps):
        step()
        current = point.numpy()
        if not np.all(np.isfinite(current)) or not np.isfinite(surface.evaluate(*current)):
            logger.warning("%s diverged on %s with learning rate %g after %d steps.",
                           optimizer, surface.name, learning_rate, len(points))
            diverged = True
            break
        points.append(current)

    points = np.array(points)
    losses = surface.evaluate(points[:, 0], points[:, 1])
    return Trajectory(optimizer, float(learning_rate), points, losses, diverged)
