"""The optimizers against NumPy implementations of their equations, every mode, per-neuron included.

The NumPy side is written from the equations alone and shares no code with the
optimizers. The variables are float64, so the two agree to rounding: the
tolerance is rtol=1e-10, which float32 arithmetic or a wrong term would miss.
"""

import numpy as np
import pytest

import keras
import tensorflow as tf

import dl09_keras  # noqa: F401  (registers the optimizers)
from dl09_keras.optimizers import (
    Adadelta,
    Adagrad,
    Adam,
    Momentum,
    Nesterov,
    RMSProp,
    get_optimizer,
    parse_optimizer_spec,
)
from dl09_keras.optimizers.granularity import accumulator_shape

RTOL = 1e-10
STEPS = 25
# Keras keeps the learning rate in a float32 variable, so the rates here are powers of two, exact in float32.
LR = 2.0 ** -5
# A Dense kernel (inputs, units), a Conv2D kernel (kh, kw, in, out), a bias and a scalar.
SHAPES = [(6, 4), (3, 3, 2, 5), (5,), ()]


def neuron_sum(x):
    """The per-neuron squared norm, written independently: sum over every axis but the last."""
    if x.ndim < 2:
        return x
    return x.reshape(-1, x.shape[-1]).sum(axis=0).reshape((1,) * (x.ndim - 1) + (x.shape[-1],))


def squared(g, granularity):
    return g ** 2 if granularity == "parameter" else neuron_sum(g ** 2)


def numpy_momentum(w, grads, lr, momentum, l2_decay):
    v = np.zeros_like(w)
    for g in grads:
        v = momentum * v - l2_decay * lr * w - lr * g
        w = w + v
    return w


def numpy_nesterov_stored(w, grads, lr, momentum, l2_decay):
    # The stored-point form: g is the gradient at the stored weights.
    v = np.zeros_like(w)
    for g in grads:
        g = g + l2_decay * w
        v = momentum * v - lr * g
        w = w + momentum * v - lr * g
    return w


def numpy_adagrad(w, grads, lr, epsilon, initial, granularity):
    s = np.full(accumulator_shape(w.shape, granularity), initial)
    for g in grads:
        s = s + squared(g, granularity)
        w = w - lr / np.sqrt(s + epsilon) * g
    return w


def numpy_adadelta(w, grads, lr, rho, epsilon, granularity):
    s = np.zeros(accumulator_shape(w.shape, granularity))
    u = np.zeros_like(s)
    for g in grads:
        s = rho * s + (1 - rho) * squared(g, granularity)
        dw = -np.sqrt(u + epsilon) / np.sqrt(s + epsilon) * g
        u = rho * u + (1 - rho) * squared(dw, granularity)
        w = w + lr * dw
    return w


def numpy_rmsprop(w, grads, lr, rho, epsilon, granularity):
    s = np.zeros(accumulator_shape(w.shape, granularity))
    for g in grads:
        s = rho * s + (1 - rho) * squared(g, granularity)
        w = w - lr / np.sqrt(s + epsilon) * g
    return w


def numpy_adam(w, grads, lr, beta_1, beta_2, epsilon, bias_correction, epsilon_inside_sqrt, granularity):
    m = np.zeros_like(w)
    v = np.zeros(accumulator_shape(w.shape, granularity))
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * squared(g, granularity)
        m_hat, v_hat = m, v
        if bias_correction:
            m_hat = m / (1 - beta_1 ** t)
            v_hat = v / (1 - beta_2 ** t)
        denominator = np.sqrt(v_hat + epsilon) if epsilon_inside_sqrt else np.sqrt(v_hat) + epsilon
        w = w - lr * m_hat / denominator
    return w


CASES = {
    "momentum": (lambda: Momentum(LR, momentum=0.9),
                 lambda w, gs: numpy_momentum(w, gs, LR, 0.9, 0.0)),
    "momentum_l2": (lambda: Momentum(LR, momentum=0.8, l2_decay=0.3),
                    lambda w, gs: numpy_momentum(w, gs, LR, 0.8, 0.3)),
    "nesterov": (lambda: Nesterov(LR, momentum=0.9),
                 lambda w, gs: numpy_nesterov_stored(w, gs, LR, 0.9, 0.0)),
    "nesterov_l2": (lambda: Nesterov(LR, momentum=0.8, l2_decay=0.3),
                    lambda w, gs: numpy_nesterov_stored(w, gs, LR, 0.8, 0.3)),
}
for _granularity in ("parameter", "neuron"):
    CASES[f"adagrad_{_granularity}"] = (
        lambda g=_granularity: Adagrad(LR, epsilon=1e-3, granularity=g),
        lambda w, gs, g=_granularity: numpy_adagrad(w, gs, LR, 1e-3, 0.0, g),
    )
    CASES[f"adagrad_initial_{_granularity}"] = (
        lambda g=_granularity: Adagrad(LR, epsilon=1e-7, initial_accumulator_value=0.1, granularity=g),
        lambda w, gs, g=_granularity: numpy_adagrad(w, gs, LR, 1e-7, 0.1, g),
    )
    CASES[f"adadelta_{_granularity}"] = (
        lambda g=_granularity: Adadelta(rho=0.9, epsilon=1e-4, granularity=g),
        lambda w, gs, g=_granularity: numpy_adadelta(w, gs, 1.0, 0.9, 1e-4, g),
    )
    CASES[f"rmsprop_{_granularity}"] = (
        lambda g=_granularity: RMSProp(LR, rho=0.8, epsilon=1e-5, granularity=g),
        lambda w, gs, g=_granularity: numpy_rmsprop(w, gs, LR, 0.8, 1e-5, g),
    )
    CASES[f"adam_{_granularity}"] = (
        lambda g=_granularity: Adam(LR, beta_1=0.8, beta_2=0.99, epsilon=1e-3, granularity=g),
        lambda w, gs, g=_granularity: numpy_adam(w, gs, LR, 0.8, 0.99, 1e-3, True, False, g),
    )
    CASES[f"adam_uncorrected_inside_{_granularity}"] = (
        lambda g=_granularity: Adam(LR, beta_1=0.8, beta_2=0.99, epsilon=1e-3, bias_correction=False,
                                    epsilon_inside_sqrt=True, granularity=g),
        lambda w, gs, g=_granularity: numpy_adam(w, gs, LR, 0.8, 0.99, 1e-3, False, True, g),
    )


def random_gradients(seed):
    """STEPS gradients per shape, of mixed magnitudes, with one all-zero neuron in each kernel."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(STEPS):
        grads = []
        for shape in SHAPES:
            g = rng.normal(size=shape) * rng.choice([1e-3, 1.0, 30.0])
            if len(shape) >= 2:
                g[..., 0] = 0.0
            grads.append(g)
        steps.append(grads)
    return steps


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_matches_numpy_equation(case):
    make_optimizer, numpy_update = CASES[case]
    rng = np.random.default_rng(1)
    initial = [rng.normal(size=shape) for shape in SHAPES]
    variables = [keras.Variable(w, dtype="float64", name=f"w{i}") for i, w in enumerate(initial)]
    steps = random_gradients(2)

    optimizer = make_optimizer()
    apply = tf.function(lambda grads: optimizer.apply(grads, variables))
    for grads in steps:
        apply([tf.constant(g) for g in grads])

    for index, shape in enumerate(SHAPES):
        expected = numpy_update(initial[index], [grads[index] for grads in steps])
        actual = variables[index].numpy()
        assert not np.allclose(expected, initial[index], rtol=1e-3), f"{case}: variable {shape} did not move"
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=1e-14, err_msg=f"{case}, variable {shape}")


def test_per_neuron_adagrad_hand_computed():
    # One Dense kernel with 2 inputs and 2 units. The columns' squared norms are 3**2 + 4**2 = 25 and 0 + 1 = 1,
    # so each column is divided by 5 and by 1.
    kernel = keras.Variable(np.zeros((2, 2)), dtype="float64")
    optimizer = Adagrad(learning_rate=0.5, epsilon=0.0, granularity="neuron")
    optimizer.apply([tf.constant([[3.0, 0.0], [4.0, 1.0]], tf.float64)], [kernel])
    np.testing.assert_allclose(kernel.numpy(), [[-0.5 * 3 / 5, 0.0], [-0.5 * 4 / 5, -0.5 * 1 / 1]], rtol=1e-15)


def test_per_parameter_adagrad_hand_computed():
    # Per parameter, s = g**2 after the first step, so every weight moves by lr * g / |g| = 0.5 * sign(g).
    kernel = keras.Variable(np.zeros((2, 2)), dtype="float64")
    optimizer = Adagrad(learning_rate=0.5, epsilon=0.0)
    optimizer.apply([tf.constant([[3.0, -2.0], [4.0, 1.0]], tf.float64)], [kernel])
    np.testing.assert_allclose(kernel.numpy(), [[-0.5, 0.5], [-0.5, -0.5]], rtol=1e-15)


def test_lecture_adam_first_step_hand_computed():
    # Without bias correction, m = 0.1 * g and v = 0.001 * g**2 after the first step, so the step is
    # lr * 0.1 / sqrt(0.001) * sign(g) when epsilon is 0. The bias-corrected step would be lr * sign(g).
    weight = keras.Variable(np.zeros(3), dtype="float64")
    optimizer = Adam(0.5, epsilon=0.0, bias_correction=False, epsilon_inside_sqrt=True)
    optimizer.apply([tf.constant([2.0, -0.5, 7.0], tf.float64)], [weight])
    np.testing.assert_allclose(weight.numpy(), -0.5 * 0.1 / np.sqrt(0.001) * np.array([1.0, -1.0, 1.0]), rtol=1e-12)


def test_paper_adam_first_step_hand_computed():
    # With bias correction m_hat = g and v_hat = g**2 after the first step, so the step is lr * g / (|g| + epsilon).
    weight = keras.Variable(np.zeros(3), dtype="float64")
    optimizer = Adam(0.5, epsilon=0.5)
    optimizer.apply([tf.constant([2.0, -0.5, 7.0], tf.float64)], [weight])
    np.testing.assert_allclose(weight.numpy(), [-0.5 * 2 / 2.5, 0.5 * 0.5 / 1.0, -0.5 * 7 / 7.5], rtol=1e-12)


@pytest.mark.parametrize(
    "shape, expected",
    [((7, 3), (1, 3)), ((3, 3, 8, 16), (1, 1, 1, 16)), ((5, 4, 6), (1, 1, 6)), ((9,), (9,)), ((), ())],
)
def test_neuron_accumulator_shapes(shape, expected):
    assert accumulator_shape(shape, "neuron") == expected
    assert accumulator_shape(shape, "parameter") == shape


def test_model_slots_follow_granularity():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    optimizer = Adam(granularity="neuron")
    optimizer.build(model.trainable_variables)
    velocity_shapes = [tuple(v.shape) for v in optimizer._velocities]
    momentum_shapes = [tuple(m.shape) for m in optimizer._momentums]
    assert velocity_shapes == [(1, 1, 1, 4), (4,), (4,), (4,), (1, 2), (2,)]
    assert momentum_shapes == [tuple(v.shape) for v in model.trainable_variables]


def nesterov_loss(w):
    """A Rosenbrock chain: sum of (1 - w_i)**2 + 10 * (w_{i+1} - w_i**2)**2, in TensorFlow."""
    return tf.reduce_sum((1 - w[:-1]) ** 2 + 10 * (w[1:] - w[:-1] ** 2) ** 2)


def nesterov_gradient(w):
    """The gradient of :func:`nesterov_loss`, derived by hand."""
    g = np.zeros_like(w)
    inner = w[1:] - w[:-1] ** 2
    g[:-1] += -2 * (1 - w[:-1]) - 40 * w[:-1] * inner
    g[1:] += 20 * inner
    return g


def test_nesterov_stores_look_ahead_point():
    lr, momentum = 2.0 ** -9, 0.9
    w0 = np.array([-1.2, 1.0, 0.5, -0.3])
    stored = keras.Variable(w0, dtype="float64")
    optimizer = Nesterov(lr, momentum=momentum)
    classical = keras.Variable(w0, dtype="float64")
    classical_optimizer = Momentum(lr, momentum=momentum)

    @tf.function
    def step():
        for variable, opt in ((stored, optimizer), (classical, classical_optimizer)):
            with tf.GradientTape() as tape:
                loss = nesterov_loss(variable)
            opt.apply([tape.gradient(loss, variable)], [variable])

    # The explicit recurrence: the gradient at the look-ahead point w + momentum * v.
    w, v = w0.copy(), np.zeros_like(w0)
    largest_gap_to_classical = 0.0
    for t in range(60):
        v = momentum * v - lr * nesterov_gradient(w + momentum * v)
        w = w + v
        step()
        np.testing.assert_allclose(stored.numpy(), w + momentum * v, rtol=1e-10, err_msg=f"step {t + 1}")
        largest_gap_to_classical = max(largest_gap_to_classical, np.max(np.abs(classical.numpy() - stored.numpy())))
    # The check would pass trivially if the look-ahead made no difference on this loss.
    assert largest_gap_to_classical > 1e-3


def test_unknown_granularity_names_value():
    for cls in (Adagrad, Adadelta, RMSProp, Adam):
        with pytest.raises(ValueError, match=r"Invalid granularity 'layer'.*'parameter'.*'neuron'"):
            cls(granularity="layer")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Momentum(momentum=1.0), r"Invalid momentum 1\.0: expected a float in \[0, 1\)"),
        (lambda: Nesterov(momentum=-0.1), r"Invalid momentum -0\.1"),
        (lambda: Momentum(l2_decay=-1), r"Invalid l2_decay -1: expected a float >= 0"),
        (lambda: Adadelta(rho=1.5), r"Invalid rho 1\.5"),
        (lambda: Adam(beta_2=1.0), r"Invalid beta_2 1\.0"),
        (lambda: RMSProp(epsilon="small"), r"Invalid epsilon 'small': expected a float"),
    ],
)
def test_invalid_hyperparameter_names_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


ALL_OPTIMIZERS = {
    "Momentum": lambda: Momentum(0.02, momentum=0.8, l2_decay=1e-3),
    "Nesterov": lambda: Nesterov(0.03, momentum=0.7, l2_decay=2e-3),
    "Adagrad": lambda: Adagrad(0.04, epsilon=1e-6, initial_accumulator_value=0.2, granularity="neuron"),
    "Adadelta": lambda: Adadelta(0.5, rho=0.9, epsilon=1e-5, granularity="neuron"),
    "RMSProp": lambda: RMSProp(0.002, rho=0.8, epsilon=1e-6, granularity="neuron"),
    "Adam": lambda: Adam(0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-6, bias_correction=False,
                         epsilon_inside_sqrt=True, granularity="neuron"),
}


@pytest.mark.parametrize("name", sorted(ALL_OPTIMIZERS))
def test_config_round_trip(name):
    optimizer = ALL_OPTIMIZERS[name]()
    config = optimizer.get_config()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is type(optimizer)
    assert restored.get_config() == config
    assert keras.optimizers.serialize(optimizer)["registered_name"] == f"dl09>{name}"


def test_registry_names_create_project_optimizers():
    expected = {
        "dl09_momentum": Momentum, "dl09_nesterov": Nesterov, "dl09_adagrad": Adagrad,
        "dl09_adadelta": Adadelta, "dl09_rmsprop": RMSProp, "dl09_adam": Adam,
    }
    for name, cls in expected.items():
        optimizer = get_optimizer(name, 0.01)
        assert type(optimizer) is cls, name
        assert float(optimizer.learning_rate) == pytest.approx(0.01)


def test_registry_reads_options_after_name():
    optimizer = get_optimizer("DL09_Adam:granularity=neuron,bias_correction=false,beta_2=0.99", 0.01)
    assert optimizer.granularity == "neuron"
    assert optimizer.bias_correction is False
    assert optimizer.beta_2 == 0.99
    assert parse_optimizer_spec("dl09_momentum:momentum=0.5, l2_decay=1e-4") == (
        "dl09_momentum", {"momentum": 0.5, "l2_decay": 1e-4})


def test_registry_rejects_bad_option():
    with pytest.raises(ValueError, match=r"Invalid optimizer option 'neuron'.*KEY=VALUE"):
        get_optimizer("dl09_adam:neuron", 0.01)
    with pytest.raises(ValueError, match=r"Invalid granularity 'channel'"):
        get_optimizer("dl09_rmsprop:granularity=channel", 0.01)
    with pytest.raises(ValueError, match=r"Unknown optimizer 'dl09_lion'"):
        get_optimizer("dl09_lion", 0.01)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sparse_gradient_matches_dense(case):
    # An Embedding's gradient arrives as tf.IndexedSlices of the rows used. Each step here uses other rows, so a
    # lazy update that skips the decay of unused rows would differ from the dense equation.
    make_optimizer, _ = CASES[case]
    rng = np.random.default_rng(3)
    table = rng.normal(size=(6, 4))
    steps = [([0, 2], rng.normal(size=(2, 4))), ([2, 5], rng.normal(size=(2, 4))), ([1, 3], rng.normal(size=(2, 4)))]

    results = []
    for sparse in (True, False):
        variable = keras.Variable(table, dtype="float64")
        optimizer = make_optimizer()
        for rows, values in steps:
            gradient = tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant([6, 4]))
            optimizer.apply([gradient if sparse else tf.convert_to_tensor(gradient)], [variable])
        results.append(variable.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-15)
