"""Nesterov momentum in the look-ahead form that an optimizer can apply."""

from __future__ import annotations

import keras
from keras import ops

from dl09_keras.optimizers.checks import check_decay_rate, check_non_negative


@keras.saving.register_keras_serializable(package="dl09")
class Nesterov(keras.optimizers.Optimizer):
    """Nesterov's accelerated gradient: move along the momentum, then correct.

    Sutskever et al. (2013) write it with the gradient taken at the look-ahead
    point ``w_t + momentum * v_t``:

        v_{t+1} = momentum * v_t - lr * g(w_t + momentum * v_t)
        w_{t+1} = w_t + v_{t+1}

    An optimizer only receives the gradient at the weights it stores, so this class
    stores the look-ahead point ``p_t = w_t + momentum * v_t`` instead of w_t.
    With g taken at p_t the same recurrence reads:

        v = momentum * v - lr * g
        p = p + momentum * v - lr * g

    The stored weights after step t equal ``w_t + momentum * v_t`` of the first
    form. Both start from v = 0, so p_0 = w_0. This is the update of
    ``keras.optimizers.SGD(momentum=momentum, nesterov=True)`` and of PyTorch's
    SGD with ``nesterov=True``.

    ``l2_decay`` adds ``l2_decay / 2 * ||p||**2`` to the loss, so g becomes
    ``g + l2_decay * p``: the decay is taken at the look-ahead point too.

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
        self.assign_add(variable, ops.subtract(ops.multiply(v, self.momentum), step))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2_decay": self.l2_decay})
        return config
