"""Granularity of a second moment: one accumulator per parameter or per neuron.

The literature (Duchi et al., 2011; Zeiler, 2012; Kingma and Ba, 2015) and Keras
keep one accumulator per parameter and add ``g**2`` to it. The per-neuron variant
keeps one accumulator per neuron and adds the squared L2 norm of the gradient of
that neuron's whole weight vector (its fan-in), so all weights of a neuron share
one adaptive rate.

Which weights form a neuron is read from the variable's shape, with the output
axis last as Keras stores kernels:

- Dense kernel (inputs, units): one neuron per column, accumulator (1, units).
- Conv2D kernel (kh, kw, in, out): one neuron per output channel, accumulator
  (1, 1, 1, out). Conv1D and Conv3D kernels follow the same rule.
- A bias, a BatchNormalization scale or any other 1-D variable: one neuron per
  element, so per-neuron equals per-parameter there. A scalar is one neuron.

The accumulator keeps the reduced axes with size 1, so it broadcasts against
the gradient without reshaping.

NOTE: the rule "every axis but the last" is right for Dense and ConvND kernels
only. A DepthwiseConv2D kernel (kh, kw, in, multiplier) gets one accumulator per
multiplier instead of one per (in, multiplier) filter, and an Embedding table
(vocabulary, dim) one per embedding dimension.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

GRANULARITIES = ("parameter", "neuron")


def check_granularity(granularity: str) -> str:
    """Return ``granularity`` when it is one of ``GRANULARITIES``; raise ValueError otherwise."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"Invalid granularity {granularity!r}: use 'parameter' (one accumulator per weight, "
            "the default) or 'neuron' (one accumulator per output unit or channel)."
        )
    return granularity


def neuron_axes(rank: int) -> tuple[int, ...]:
    """Return the axes that one neuron's weights span in a variable of this rank.

    Every axis but the last (the output axis) for rank 2 and more, none for
    scalars and 1-D variables.
    """
    if rank < 2:
        return ()
    return tuple(range(rank - 1))


def accumulator_shape(shape, granularity: str) -> tuple[int, ...]:
    """Return the shape of the accumulator for a variable of ``shape``.

    Example: a Conv2D kernel (3, 3, 16, 32) gets (3, 3, 16, 32) per parameter
    and (1, 1, 1, 32) per neuron.
    """
    shape = tuple(int(d) for d in shape)
    if check_granularity(granularity) == "parameter":
        return shape
    reduced = set(neuron_axes(len(shape)))
    return tuple(1 if axis in reduced else d for axis, d in enumerate(shape))


def dense_gradient(gradient, granularity: str):
    """Return ``gradient`` as a dense tensor per neuron, unchanged per parameter.

    A sparse gradient (the tf.IndexedSlices of an Embedding) lists only some
    rows, but a neuron's norm sums over all of them, and its accumulator has a
    single row that the sparse rows cannot index.
    """
    if granularity == "neuron":
        return tf.convert_to_tensor(gradient)
    return gradient


def squared_norm(tensor, granularity: str):
    """Square ``tensor`` (a gradient or an update) for a second-moment accumulator.

    Per parameter this is the element-wise square, in the shape of ``tensor``.
    Per neuron it is the squared L2 norm of each neuron's slice, in the shape
    given by :func:`accumulator_shape`.
    """
    squared = ops.square(tensor)
    axes = neuron_axes(len(tensor.shape))
    if granularity == "parameter" or not axes:
        return squared
    return ops.sum(squared, axis=axes, keepdims=True)


def add_accumulators(optimizer: keras.optimizers.Optimizer, variables, name: str, granularity: str,
                     initializer="zeros") -> list:
    """Create one accumulator slot variable per model variable, shaped for ``granularity``.

    Args:
        optimizer: the optimizer that owns the slots.
        variables: the model variables, in the order of ``optimizer.build``.
        name: suffix of the slot names, e.g. ``"accumulator"``.
        granularity: "parameter" or "neuron".
        initializer: initial value of every slot, an initializer or its name.
            Default "zeros".

    Returns:
        a list aligned with ``variables``. It contains None for a variable that
        Keras overwrites with its gradient instead of optimizing, as
        ``Optimizer.add_optimizer_variables`` does.
    """
    if check_granularity(granularity) == "parameter":
        return optimizer.add_optimizer_variables(variables, name, initializer=initializer)

    accumulators = []
    for variable in variables:
        if getattr(variable, "overwrite_with_gradient", False):
            accumulators.append(None)
            continue

        # Keep each slot on the device of its variable, as Keras' own slots are under tf.distribute.
        reference = variable.value if isinstance(variable, keras.Variable) else variable
        with tf.distribute.get_strategy().extended.colocate_vars_with(reference):
            accumulators.append(
                optimizer.add_variable(
                    shape=accumulator_shape(variable.shape, granularity),
                    initializer=initializer,
                    dtype=variable.dtype,
                    name=f"{_slot_prefix(variable)}_{name}",
                )
            )
    return accumulators


def _slot_prefix(variable) -> str:
    if hasattr(variable, "path"):
        return variable.path.replace("/", "_")
    return str(variable.name).replace("/", "_").replace(":", "_")
