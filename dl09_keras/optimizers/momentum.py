"""Classical momentum with an L2 weight-decay term."""

from __future__ import annotations

import keras
from keras import ops

from dl09_keras.optimizers.checks import check_decay_rate, check_non_negative


@keras.saving.register_keras_serializable(package="dl09")
class Momentum(keras.optimizers.Optimizer):
    """Gradient descent with classical (heavy-ball) momentum and L2 weight decay.

    The update of every weight w with gradient g, as Sutskever et al. (2013)
    write classical momentum, with a decay term added:

        v = momentum * v - l2_decay * lr * w - lr * g
        w = w + v

    The velocity v starts at 0. The decay term is the gradient of
    ``l2_decay / 2 * ||w||**2``, so it acts like an L2 penalty on every
    variable, biases included. The ``weight_decay`` argument of every Keras
    optimizer is a different, decoupled decay: it shrinks w before the step and
    never enters v.

    With ``l2_decay=0`` this is ``keras.optimizers.SGD(momentum=momentum)``.

    Args:
        learning_rate: lr, a float or a
            ``keras.optimizers.schedules.LearningRateSchedule``. Default 0.01.
        momentum: the decay rate of the velocity, in [0, 1). Default 0.9.
        l2_decay: the L2 weight-decay factor, 0 or more. Default 0.
        **kwargs: further options of ``keras.optimizers.Optimizer`` (name,
            weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
            loss_scale_factor, gradient_accumulation_steps).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2_decay=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = check_decay_rate("momentum", momentum, 0.9)
        self.l2_decay = check_non_negative("l2_decay", l2_decay, 1e-4)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._velocities = self.add_optimizer_variables(var_list, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        v = self._velocities[self._get_variable_index(variable)]

        step = ops.multiply(gradient, lr)
        if self.l2_decay:
            step = ops.add(step, ops.multiply(variable, self.l2_decay * lr))

        self.assign(v, ops.subtract(ops.multiply(v, self.momentum), step))
        self.assign_add(variable, v)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2_decay": self.l2_decay})
        return config
