"""Adam: momentum on the gradient, divided by a running root mean square of the gradient."""

from __future__ import annotations

import keras
from keras import ops

from dl09_keras.optimizers.checks import check_decay_rate, check_non_negative
from dl09_keras.optimizers.granularity import add_accumulators, check_granularity, dense_gradient, squared_norm


@keras.saving.register_keras_serializable(package="dl09")
class Adam(keras.optimizers.Optimizer):
    """Adam (Kingma and Ba, 2015): running averages of the gradient and of its square.

    At step t = 1, 2, ... with m and v starting at 0:

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        m_hat = m / (1 - beta_1**t),  v_hat = v / (1 - beta_2**t)
        w = w - lr * m_hat / (sqrt(v_hat) + epsilon)

    That is Algorithm 1 of the paper and the default. Two options give the
    simpler form that leaves out the bias correction and puts epsilon inside
    the root, ``w = w - lr * m / sqrt(v + epsilon)``:
    ``bias_correction=False, epsilon_inside_sqrt=True``. Because m and v start
    at 0, the first step without the bias correction is
    ``(1 - beta_1) / sqrt(1 - beta_2)`` times the corrected one, about 3.2 with
    the default betas. The factor tends to 1 as t grows.

    Per neuron, v is one running average per neuron of the squared L2 norm of
    the neuron's gradient, while m stays per parameter (see
    :mod:`dl09_keras.optimizers.granularity`).

    Difference from ``keras.optimizers.Adam``: Keras folds the bias correction
    into the learning rate and adds its epsilon to sqrt(v) before dividing by
    ``sqrt(1 - beta_2**t)``. Its epsilon is the paper's "epsilon hat", which
    equals ``epsilon * sqrt(1 - beta_2**t)`` here and so changes with t. The two
    agree only when epsilon is negligible against sqrt(v_hat).

    Args:
        learning_rate: lr, a float or a
            ``keras.optimizers.schedules.LearningRateSchedule``. Default 0.001.
        beta_1: the decay rate of m, in [0, 1). Default 0.9.
        beta_2: the decay rate of v, in [0, 1). Default 0.999.
        epsilon: xi, keeps the division finite. Default 1e-8, the paper's value.
        bias_correction: divide m and v by ``1 - beta**t``. Default True.
        epsilon_inside_sqrt: use ``sqrt(v + epsilon)`` in place of
            ``sqrt(v) + epsilon``. Default False.
        granularity: "parameter" (one v per weight) or "neuron" (one v per
            output unit or channel). Default "parameter".
        **kwargs: further options of ``keras.optimizers.Optimizer`` (name,
            weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
            loss_scale_factor, gradient_accumulation_steps).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, bias_correction=True,
                 epsilon_inside_sqrt=False, granularity="parameter", **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = check_decay_rate("beta_1", beta_1, 0.9)
        self.beta_2 = check_decay_rate("beta_2", beta_2, 0.999)
        self.epsilon = check_non_negative("epsilon", epsilon, 1e-8)
        self.bias_correction = bool(bias_correction)
        self.epsilon_inside_sqrt = bool(epsilon_inside_sqrt)
        self.granularity = check_granularity(granularity)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = self.add_optimizer_variables(var_list, "momentum")
        self._velocities = add_accumulators(self, var_list, "velocity", self.granularity)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = dense_gradient(ops.cast(gradient, variable.dtype), self.granularity)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]

        # m += (1 - beta_1) (g - m) is beta_1 m + (1 - beta_1) g with one full-size operation fewer; v likewise.
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(squared_norm(gradient, self.granularity), v), 1 - self.beta_2))

        # The bias corrections are scalars, so they scale the step and the root instead of dividing m and v:
        # m_hat = m / c_1 and sqrt(v_hat) = sqrt(v) / sqrt(c_2), with c_i = 1 - beta_i ** t.
        step_size = lr
        v_scale = ops.convert_to_tensor(1.0, dtype=variable.dtype)
        if self.bias_correction:
            t = ops.cast(self.iterations + 1, variable.dtype)
            # convert_to_tensor keeps a float64 beta exact, where ops.cast would round it through float32.
            beta_1 = ops.convert_to_tensor(self.beta_1, dtype=variable.dtype)
            beta_2 = ops.convert_to_tensor(self.beta_2, dtype=variable.dtype)
            step_size = ops.divide(lr, 1 - ops.power(beta_1, t))
            v_scale = ops.divide(1.0, 1 - ops.power(beta_2, t))

        if self.epsilon_inside_sqrt:
            denominator = ops.sqrt(ops.add(ops.multiply(v, v_scale), self.epsilon))
        else:
            denominator = ops.add(ops.multiply(ops.sqrt(v), ops.sqrt(v_scale)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, step_size), denominator))

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "bias_correction": self.bias_correction,
            "epsilon_inside_sqrt": self.epsilon_inside_sqrt,
            "granularity": self.granularity,
        })
        return config
