"""RMSProp: steps divided by a running root mean square of the gradients."""

from __future__ import annotations

import keras
from keras import ops

from dl09_keras.optimizers.checks import check_decay_rate, check_non_negative
from dl09_keras.optimizers.granularity import add_accumulators, check_granularity, dense_gradient, squared_norm


@keras.saving.register_keras_serializable(package="dl09")
class RMSProp(keras.optimizers.Optimizer):
    """RMSProp (Hinton, 2012, lecture notes): Adagrad with a running average in place of the sum.

        s = rho * s + (1 - rho) * g**2
        w = w - lr * g / sqrt(s + epsilon)

    s starts at 0. Per neuron, s is one running average per neuron of the
    squared L2 norm of the neuron's gradient (see
    :mod:`dl09_keras.optimizers.granularity`).

    ``RMSProp(lr, rho, e)`` equals ``keras.optimizers.RMSprop(lr, rho,
    momentum=0.0, epsilon=e, centered=False)`` per parameter, with epsilon
    inside the square root in both.

    Args:
        learning_rate: lr, a float or a
            ``keras.optimizers.schedules.LearningRateSchedule``. Default 0.001.
        rho: the decay rate of the running average, in [0, 1). Default 0.9.
        epsilon: added to s under the square root. Default 1e-7.
        granularity: "parameter" (one s per weight) or "neuron" (one s per
            output unit or channel). Default "parameter".
        **kwargs: further options of ``keras.optimizers.Optimizer`` (name,
            weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
            loss_scale_factor, gradient_accumulation_steps).
    """

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, granularity="parameter", **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = check_decay_rate("rho", rho, 0.9)
        self.epsilon = check_non_negative("epsilon", epsilon, 1e-7)
        self.granularity = check_granularity(granularity)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._gradient_averages = add_accumulators(self, var_list, "gradient_average", self.granularity)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = dense_gradient(ops.cast(gradient, variable.dtype), self.granularity)
        s = self._gradient_averages[self._get_variable_index(variable)]
        rho = self.rho

        # s += (1 - rho) (g**2 - s) is rho s + (1 - rho) g**2 with one full-size operation fewer.
        self.assign_add(s, ops.multiply(ops.subtract(squared_norm(gradient, self.granularity), s), 1 - rho))

        step = ops.divide(ops.multiply(lr, gradient), ops.sqrt(ops.add(s, self.epsilon)))
        self.assign_sub(variable, step)

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "epsilon": self.epsilon, "granularity": self.granularity})
        return config
