"""Optimizers chosen by name, for ``train.py --optimizer`` and ``model.compile``.

The registry maps a lower-case name to a factory ``f(learning_rate, **options)``
that returns a ``keras.optimizers.Optimizer``. Keras' built-ins are registered
under their usual names, and this package's own optimizers under names that
start with ``dl09_``. A name may carry options after a colon, for example
``dl09_adam:granularity=neuron,bias_correction=false``.

This package's optimizers, one module each: :class:`Momentum` (classical
momentum with L2 weight decay), :class:`Nesterov`, :class:`Adagrad`,
:class:`Adadelta`, :class:`RMSProp` and :class:`Adam`. Every method with a
second moment takes ``granularity="parameter"`` or ``"neuron"``.
"""

from __future__ import annotations

from typing import Callable

import keras

from dl09_keras.optimizers.adadelta import Adadelta
from dl09_keras.optimizers.adagrad import Adagrad
from dl09_keras.optimizers.adam import Adam
from dl09_keras.optimizers.granularity import GRANULARITIES
from dl09_keras.optimizers.momentum import Momentum
from dl09_keras.optimizers.nesterov import Nesterov
from dl09_keras.optimizers.rmsprop import RMSProp

OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {}


def register_optimizer(name: str, factory: Callable[..., keras.optimizers.Optimizer]):
    """Make ``factory(learning_rate, **options)`` available as ``get_optimizer(name, ...)``."""
    key = name.lower()
    if key in OPTIMIZERS:
        raise ValueError(f"Optimizer name {name!r} is already registered.")
    OPTIMIZERS[key] = factory
    return factory


def parse_optimizer_spec(spec: str) -> tuple[str, dict]:
    """Split ``NAME[:KEY=VALUE,...]`` into the name and its options.

    Values are read as a bool (true, false), an int, a float or else a string:
    ``"dl09_adam:granularity=neuron,beta_2=0.99"`` becomes
    ``("dl09_adam", {"granularity": "neuron", "beta_2": 0.99})``.
    """
    name, _, option_text = spec.partition(":")
    options = {}
    for item in filter(None, (part.strip() for part in option_text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(
                f"Invalid optimizer option {item!r} in {spec!r}: write KEY=VALUE, e.g. dl09_adam:granularity=neuron."
            )
        options[key.strip()] = _parse_value(value.strip())
    return name.strip(), options


def get_optimizer(name: str, learning_rate, **options) -> keras.optimizers.Optimizer:
    """Create the optimizer registered as ``name``.

    Args:
        name: a key of ``OPTIMIZERS``, case-insensitive (``sgd``, ``momentum``,
            ``nesterov``, ``adam``, ``adamw``, ``rmsprop``, ``adagrad``, ``adadelta``,
            ``dl09_momentum``, ``dl09_nesterov``, ``dl09_adagrad``, ``dl09_adadelta``,
            ``dl09_rmsprop``, ``dl09_adam``), optionally followed by options as in
            :func:`parse_optimizer_spec`.
        learning_rate: a float or a ``keras.optimizers.schedules.LearningRateSchedule``.
        options: keyword arguments of that optimizer, e.g. ``weight_decay``. They
            override options given in ``name``.
    """
    key, spec_options = parse_optimizer_spec(name)
    key = key.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {key!r}: choose one of {', '.join(sorted(OPTIMIZERS))}.")
    try:
        return OPTIMIZERS[key](learning_rate, **(spec_options | options))
    except (TypeError, ValueError) as error:
        hint = ""
        if not key.startswith("dl09_") and f"dl09_{key}" in OPTIMIZERS:
            hint = f" The project's own dl09_{key} takes options such as granularity and l2_decay."
        raise ValueError(f"Invalid options for optimizer {key!r}: {error}.{hint}") from None


def _parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


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
register_optimizer("dl09_momentum", lambda lr, **kw: Momentum(lr, **kw))
register_optimizer("dl09_nesterov", lambda lr, **kw: Nesterov(lr, **kw))
register_optimizer("dl09_adagrad", lambda lr, **kw: Adagrad(lr, **kw))
register_optimizer("dl09_adadelta", lambda lr, **kw: Adadelta(lr, **kw))
register_optimizer("dl09_rmsprop", lambda lr, **kw: RMSProp(lr, **kw))
register_optimizer("dl09_adam", lambda lr, **kw: Adam(lr, **kw))

__all__ = [
    "GRANULARITIES",
    "OPTIMIZERS",
    "Adadelta",
    "Adagrad",
    "Adam",
    "Momentum",
    "Nesterov",
    "RMSProp",
    "get_optimizer",
    "parse_optimizer_spec",
    "register_optimizer",
]
