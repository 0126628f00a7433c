"""Optimizers chosen by name, for ``train.py --optimizer`` and ``model.compile``.

The registry maps a lower-case name to a factory ``f(learning_rate, **options)``
that returns a ``keras.optimizers.Optimizer``. Keras' built-ins are registered
here; the project's own optimizers register themselves with
:func:`register_optimizer` so they plug into training by name.
"""

from __future__ import annotations

from typing import Callable

import keras

OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {}


def register_optimizer(name: str, factory: Callable[..., keras.optimizers.Optimizer]):
    """Make ``factory(learning_rate, **options)`` available as ``get_optimizer(name, ...)``."""
    key = name.lower()
    if key in OPTIMIZERS:
        raise ValueError(f"Optimizer name {name!r} is already registered.")
    OPTIMIZERS[key] = factory
    return factory


def get_optimizer(name: str, learning_rate, **options) -> keras.optimizers.Optimizer:
    """Create the optimizer registered as ``name``.

    Args:
        name: a key of ``OPTIMIZERS``, case-insensitive (``sgd``, ``momentum``,
            ``nesterov``, ``adam``, ``adamw``, ``rmsprop``, ``adagrad``, ``adadelta``).
        learning_rate: a float or a ``keras.optimizers.schedules.LearningRateSchedule``.
        options: keyword arguments of that optimizer, e.g. ``weight_decay``.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}: choose one of {', '.join(sorted(OPTIMIZERS))}.")
    return OPTIMIZERS[key](learning_rate, **options)


register_optimizer("sgd", lambda lr, **kw: keras.optimizers.SGD(lr, **kw))
register_optimizer("momentum", lambda lr, **kw: keras.optimizers.SGD(lr, momentum=kw.pop("momentum", 0.9), **kw))
register_optimizer(
    "nesterov", lambda lr, **kw: keras.optimizers.SGD(lr, momentum=kw.pop("momentum", 0.9), nesterov=True, **kw)
)
register_optimizer("adam", lambda lr, **kw: keras.optimizers.Adam(lr, **kw))
register_optimizer("adamw", lambda lr, **kw: keras.optimizers.AdamW(lr, **kw))
register_optimizer("rmsprop", lambda lr, **kw: keras.optimizers.RMSprop(lr, **kw))
register_optimizer("adagrad", lambda lr, **kw: keras.optimizers.Adagrad(lr, **kw))
register_optimizer("adadelta", lambda lr, **kw: keras.optimizers.Adadelta(lr, **kw))
