"""Adagrad: a learning rate per parameter or per neuron from the sum of squared gradients."""

from __future__ import annotations

import keras
from keras import ops

from dl09_keras.optimizers.checks import check_non_negative
from dl09_keras.optimizers.granularity import add_accumulators, check_granularity, dense_gradient, squared_norm


@keras.saving.register_keras_serializable(package="dl09")
class Adagrad(keras.optimizers.Optimizer):
    """Adagrad (Duchi et al., 2011): divide each step by the root of all past squared gradients.

        s = s + g**2
        w = w - lr * g / sqrt(s + epsilon)

    Per neuron, s is one accumulator per neuron and grows by the squared L2
    norm of the gradient of the neuron's weight vector (see
    :mod:`dl09_keras.optimizers.granularity`). Because s only grows, the steps
    shrink all the time and training can stall before the minimum.

    Differences from ``keras.optimizers.Adagrad``: s starts at 0 as in the
    paper, where Keras starts it at 0.1. Both put epsilon inside the square
    root. ``Adagrad(lr, epsilon=e)`` equals
    ``keras.optimizers.Adagrad(lr, initial_accumulator_value=0.0, epsilon=e)``
    per parameter.

    Args:
        learning_rate: lr, a float or a
            ``keras.optimizers.schedules.LearningRateSchedule``. Default 0.01.
        epsilon: xi, added to s under the square root so the first steps stay
            finite where a gradient is 0. Default 1e-7.
        initial_accumulator_value: the starting value of s, 0 or more. Default 0.
        granularity: "parameter" (one s per weight) or "neuron" (one s per
            output unit or channel). Default "parameter".
        **kwargs: further options of ``keras.optimizers.Optimizer`` (name,
            weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
            loss_scale_factor, gradient_accumulation_steps).
    """

    def __init__(self, learning_rate=0.01, epsilon=1e-7, initial_accumulator_value=0.0, granularity="parameter",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.epsilon = check_non_negative("epsilon", epsilon, 1e-7)
        self.initial_accumulator_value = check_non_negative("initial_accumulator_value", initial_accumulator_value, 0.0)
        self.granularity = check_granularity(granularity)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._accumulators = add_accumulators(self, var_list, "accumulator", self.granularity, self._initial_accumulator)

    def _initial_accumulator(self, shape, dtype=None):
        # ops.full keeps a float64 value exact, where keras.initializers.Constant rounds it through float32.
        return ops.full(shape, self.initial_accumulator_value, dtype=dtype)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = dense_gradient(ops.cast(gradient, variable.dtype), self.granularity)
        s = self._accumulators[self._get_variable_index(variable)]

        self.assign_add(s, squared_norm(gradient, self.granularity))

        step = ops.divide(ops.multiply(lr, gradient), ops.sqrt(ops.add(s, self.epsilon)))
        self.assign_sub(variable, step)

    def get_config(self):
        config = super().get_config()
        config.update({
            "epsilon": self.epsilon,
            "initial_accumulator_value": self.initial_accumulator_value,
            "granularity": self.granularity,
        })
        return config
