"""ADOPT against a NumPy transcription of the paper's rule; the optimizer factory."""

import types

import keras
import numpy as np
import pytest

from braintumor_tf.config import OptimizerConfig
from braintumor_tf.training.optimizers import ADOPT, make_optimizer

SHAPES = [(3, 4), (4,), (2, 2, 3)]


def reference_adopt(params, grad_steps, lr, beta_1, beta_2, eps, clip_exponent=None,
                    weight_decay=0.0):
    """Algorithm 1 of arXiv 2411.02853, with the authors' clip and decoupled decay as options."""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grad_steps):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            params[i] = params[i] * (1.0 - lr * weight_decay)
            if t == 0:
                v[i] = g * g
                continue
            normed = g / np.maximum(np.sqrt(v[i]), eps)
            if clip_exponent is not None:
                bound = t ** clip_exponent
                normed = np.clip(normed, -bound, bound)
            m[i] = beta_1 * m[i] + (1.0 - beta_1) * normed
            params[i] = params[i] - lr * m[i]
            v[i] = beta_2 * v[i] + (1.0 - beta_2) * g * g
    return params, m, v


def _gradients(rng, steps):
    # A small first gradient makes later ratios g / sqrt(v) large, so clipping really bites.
    first = [0.01 * rng.standard_normal(s).astype("float32") for s in SHAPES]
    later = [[rng.standard_normal(s).astype("float32") for s in SHAPES] for _ in range(steps - 1)]
    return [first, *later]


def _run_keras(optimizer, params, grad_steps):
    variables = [keras.Variable(p) for p in params]
    for grads in grad_steps:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize(
    "clip_exponent, weight_decay",
    [(None, 0.0), (0.25, 0.0), (None, 0.05), (0.25, 0.05)],
)
def test_adopt_matches_reference(clip_exponent, weight_decay):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype("float32") for s in SHAPES]
    grad_steps = _gradients(rng, 7)
    kwargs = {"lr": 0.01, "beta_1": 0.8, "beta_2": 0.95, "eps": 1e-6}
    optimizer = ADOPT(learning_rate=kwargs["lr"], beta_1=kwargs["beta_1"],
                      beta_2=kwargs["beta_2"], epsilon=kwargs["eps"],
                      clip_exponent=clip_exponent, weight_decay=weight_decay or None)
    got = _run_keras(optimizer, params, grad_steps)
    want, want_m, want_v = reference_adopt(params, grad_steps, clip_exponent=clip_exponent,
                                           weight_decay=weight_decay, **kwargs)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    for i in range(len(SHAPES)):
        np.testing.assert_allclose(optimizer._momentums[i].numpy(), want_m[i], rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(optimizer._velocities[i].numpy(), want_v[i], rtol=1e-5,
                                   atol=1e-8)


def test_first_step_only_initialises_v_and_clipping_changes_result():
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype("float32") for s in SHAPES]
    grad_steps = _gradients(rng, 5)
    first = _run_keras(ADOPT(learning_rate=0.1), params, grad_steps[:1])
    for p, q in zip(first, params, strict=True):
        np.testing.assert_array_equal(p, q)
    clipped = _run_keras(ADOPT(learning_rate=0.1, clip_exponent=0.25), params, grad_steps)
    unclipped = _run_keras(ADOPT(learning_rate=0.1), params, grad_steps)
    assert not np.allclose(clipped[0], unclipped[0])


def test_invalid_hyperparameters():
    with pytest.raises(ValueError, match="1.5"):
        ADOPT(beta_2=1.5)
    with pytest.raises(ValueError, match="-0.25"):
        ADOPT(clip_exponent=-0.25)


def test_config_round_trip():
    optimizer = ADOPT(learning_rate=3e-3, beta_1=0.85, beta_2=0.999, epsilon=1e-7,
                      clip_exponent=0.25, weight_decay=1e-4, clipnorm=1.0)
    config = optimizer.get_config()
    clone = ADOPT.from_config(config)
    assert clone.get_config() == config
    assert config["clip_exponent"] == 0.25 and config["weight_decay"] == 1e-4
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, ADOPT) and restored.get_config() == config


def _separable(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 4)).astype("float32") + 2.0 * (2 * y[:, None] - 1)
    return x, y.astype("int32")


def _tiny_model():
    return keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(2, activation="softmax", dtype="float32"),
    ])


def test_save_and_load_model_with_adopt(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _separable(64)
    model = _tiny_model()
    model.compile(optimizer=ADOPT(learning_rate=1e-2, clip_exponent=0.25, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "adopt.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, ADOPT)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))


@pytest.fixture
def mixed_float16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def test_mixed_float16_loss_scaling_trains(mixed_float16):
    keras.utils.set_random_seed(0)
    x, y = _separable()
    model = _tiny_model()
    assert model.layers[0].compute_dtype == "float16"
    optimizer = keras.optimizers.LossScaleOptimizer(ADOPT(learning_rate=1e-2, clip_exponent=0.25))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * before
    assert int(optimizer.iterations) > 0
    for weight in model.trainable_weights:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(weight)))


@pytest.mark.parametrize(
    "name, cls",
    [
        ("adam", keras.optimizers.Adam),
        ("adamw", keras.optimizers.AdamW),
        ("sgd", keras.optimizers.SGD),
        ("rmsprop", keras.optimizers.RMSprop),
        ("adopt", ADOPT),
    ],
)
def test_make_optimizer_kinds(name, cls):
    config = OptimizerConfig(name=name, learning_rate=5e-3, weight_decay=1e-4, momentum=0.8,
                             beta_1=0.85, beta_2=0.99, epsilon=1e-6, clipnorm=2.0)
    schedule = keras.optimizers.schedules.ExponentialDecay(5e-3, 10, 0.5)
    optimizer = make_optimizer(config, schedule)
    assert type(optimizer) is cls
    assert optimizer.clipnorm == 2.0
    assert optimizer._learning_rate is schedule
    if name == "sgd":
        assert optimizer.momentum == 0.8 and optimizer.nesterov is False
    if name in ("adamw", "adopt"):
        assert optimizer.weight_decay == pytest.approx(1e-4)
    if name in ("adam", "adamw", "adopt"):
        assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.85, 0.99, 1e-6)
    plain = make_optimizer(config, 0.01)
    assert float(plain.learning_rate) == pytest.approx(0.01)
    assert float(make_optimizer(config).learning_rate) == pytest.approx(5e-3)


def test_make_optimizer_rejects_unknown_name():
    config = types.SimpleNamespace(**{**OptimizerConfig().__dict__, "name": "lamb"})
    with pytest.raises(ValueError, match="lamb"):
        make_optimizer(config, 1e-3)
