"""Adadelta: steps scaled by the ratio of running root mean squares of updates and gradients."""

from __future__ import annotations

import keras
from keras import ops

from dl09_keras.optimizers.checks import check_decay_rate, check_non_negative
from dl09_keras.optimizers.granularity import add_accumulators, check_granularity, dense_gradient, squared_norm


@keras.saving.register_keras_serializable(package="dl09")
class Adadelta(keras.optimizers.Optimizer):
    """Adadelta (Zeiler, 2012): a step size in the units of the weights, with no global rate.

        s  = rho * s + (1 - rho) * g**2
        dw = -sqrt(u + epsilon) / sqrt(s + epsilon) * g
        u  = rho * u + (1 - rho) * dw**2
        w  = w + lr * dw

    s is the running average of squared gradients and u that of squared
    updates. Both start at 0. Zeiler's method has no learning rate, hence the
    default lr = 1. Per neuron, s and u are kept per neuron and average the
    squared L2 norms of the neuron's gradient and update (see
    :mod:`dl09_keras.optimizers.granularity`).

    Difference from ``keras.optimizers.Adadelta``: that class multiplies dw by
    a learning rate of 0.001 by default. The equations are otherwise the same,
    with epsilon inside both square roots, so ``Adadelta(lr, rho, e)`` equals
    ``keras.optimizers.Adadelta(lr, rho, e)`` per parameter.

    Args:
        learning_rate: lr, a float or a
            ``keras.optimizers.schedules.LearningRateSchedule``. Default 1.0.
        rho: the decay rate of both running averages, in [0, 1). Default 0.95,
            the value of Zeiler's experiments.
        epsilon: added under both square roots. Because u starts at 0, the first
            steps have the size ``sqrt(epsilon) / sqrt(s + epsilon) * g``.
            Default 1e-6, the value of Zeiler's experiments.
        granularity: "parameter" (one s and u per weight) or "neuron" (one s
            and u per output unit or channel). Default "parameter".
        **kwargs: further options of ``keras.optimizers.Optimizer`` (name,
            weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
            loss_scale_factor, gradient_accumulation_steps).
    """

    def __init__(self, learning_rate=1.0, rho=0.95, epsilon=1e-6, granularity="parameter", **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = check_decay_rate("rho", rho, 0.95)
        self.epsilon = check_non_negative("epsilon", epsilon, 1e-6)
        self.granularity = check_granularity(granularity)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._gradient_averages = add_accumulators(self, var_list, "gradient_average", self.granularity)
        self._update_averages = add_accumulators(self, var_list, "update_average", self.granularity)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = dense_gradient(ops.cast(gradient, variable.dtype), self.granularity)
        index = self._get_variable_index(variable)
        s = self._gradient_averages[index]
        u = self._update_averages[index]
        rho = self.rho

        # s += (1 - rho) (g**2 - s) is rho s + (1 - rho) g**2 with one full-size operation fewer.
        self.assign_add(s, ops.multiply(ops.subtract(squared_norm(gradient, self.granularity), s), 1 - rho))

        dw = ops.negative(
            ops.divide(ops.multiply(ops.sqrt(ops.add(u, self.epsilon)), gradient), ops.sqrt(ops.add(s, self.epsilon)))
        )
        self.assign_add(u, ops.multiply(ops.subtract(squared_norm(dw, self.granularity), u), 1 - rho))

        self.assign_add(variable, ops.multiply(lr, dw))

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "epsilon": self.epsilon, "granularity": self.granularity})
        return config
