"""Checks of optimizer hyper-parameters that raise errors naming the value and a valid choice."""

from __future__ import annotations


def check_decay_rate(name: str, value, example: float) -> float:
    """Return ``value`` as a float when it lies in [0, 1); raise ValueError otherwise.

    Momentum, rho and the betas of Adam are decay rates of running averages, so
    1 or more would stop forgetting or make the average grow without bound.
    """
    number = _as_float(name, value, example)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"Invalid {name} {value!r}: expected a float in [0, 1), e.g. {example}.")
    return number


def check_non_negative(name: str, value, example: float) -> float:
    """Return ``value`` as a float when it is 0 or more; raise ValueError otherwise."""
    number = _as_float(name, value, example)
    if not number >= 0.0:
        raise ValueError(f"Invalid {name} {value!r}: expected a float >= 0, e.g. {example}.")
    return number


def _as_float(name: str, value, example: float) -> float:
    if isinstance(value, bool):
        raise ValueError(f"Invalid {name} {value!r}: expected a float, e.g. {example}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name} {value!r}: expected a float, e.g. {example}.") from None
