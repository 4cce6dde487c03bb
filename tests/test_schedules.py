"""The study's warmup-cosine-floor schedule: phase boundaries, validation, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from braintumor_tf.config import ScheduleConfig
from braintumor_tf.training.schedules import WarmupCosineFloor, make_schedule, schedule_values

BASE = 1e-3
TOTAL = 100
# The study's schedule: 20 % warmup from 0.1x, cosine to 0.1x over the next 30 %, then flat.
STUDY = dict(warmup_start_factor=0.1, warmup_fraction=0.2, decay_fraction=0.3, floor_factor=0.1)


def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


@pytest.mark.parametrize("warmup_fraction", [0.2, 0.25])
def test_phase_boundaries(warmup_fraction):
    schedule = WarmupCosineFloor(BASE, TOTAL, 0.1, warmup_fraction, 0.3, 0.1)
    warmup = warmup_fraction * TOTAL
    decay = 0.3 * TOTAL
    floor = 0.1 * BASE
    expected = {
        0: 0.1 * BASE,
        warmup / 2: (0.1 * BASE + BASE) / 2,
        warmup: BASE,
        warmup + decay / 2: (BASE + floor) / 2,
        warmup + decay: floor,
        warmup + decay + 1: floor,
        TOTAL - 1: floor,
        TOTAL: floor,
        10 * TOTAL: floor,
    }
    for step, value in expected.items():
        assert _lr(schedule, step) == pytest.approx(value, rel=1e-5), step


def test_monotone_phases():
    values = schedule_values(WarmupCosineFloor(BASE, TOTAL, **STUDY), TOTAL)
    assert values.dtype == np.float32 and values.shape == (TOTAL,)
    assert np.all(np.diff(values[:21]) > 0)
    assert np.all(np.diff(values[20:51]) < 0)
    assert np.all(values[50:] == values[-1])


def test_zero_warmup_and_zero_decay():
    no_warmup = WarmupCosineFloor(BASE, TOTAL, **{**STUDY, "warmup_fraction": 0.0, "decay_fraction": 0.5})
    assert _lr(no_warmup, 0) == pytest.approx(BASE)
    assert _lr(no_warmup, 25) == pytest.approx((BASE + 0.1 * BASE) / 2)
    assert _lr(no_warmup, 50) == pytest.approx(0.1 * BASE)
    no_decay = WarmupCosineFloor(BASE, TOTAL, **{**STUDY, "warmup_fraction": 0.5, "decay_fraction": 0.0})
    assert _lr(no_decay, 49) < BASE
    assert _lr(no_decay, 50) == pytest.approx(0.1 * BASE)


def test_graph_mode_with_tensor_step():
    schedule = WarmupCosineFloor(BASE, TOTAL, **STUDY)

    @tf.function
    def lr_at(step):
        return schedule(step)

    for step in (0, 20, 35, 50):
        value = lr_at(tf.constant(step, dtype=tf.int64))
        assert value.dtype == tf.float32
        assert float(value) == pytest.approx(_lr(schedule, step), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"total_steps": 0}, "0"),
        ({"total_steps": 2.5}, "2.5"),
        ({"warmup_fraction": -0.1}, "-0.1"),
        ({"decay_fraction": 1.5}, "1.5"),
        ({"warmup_fraction": 0.6, "decay_fraction": 0.6}, "0.6"),
        ({"warmup_start_factor": -1.0}, "-1.0"),
        ({"floor_factor": -0.5}, "-0.5"),
        ({"base_learning_rate": 0.0}, "0.0"),
    ],
)
def test_invalid_arguments(kwargs, fragment):
    args = {"base_learning_rate": BASE, "total_steps": TOTAL, **kwargs}
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        WarmupCosineFloor(**args)


def test_config_round_trip():
    schedule = WarmupCosineFloor(2e-3, 77, 0.2, 0.25, 0.5, 0.05)
    clone = WarmupCosineFloor.from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupCosineFloor)
    np.testing.assert_allclose(schedule_values(restored, 77), schedule_values(schedule, 77))


def test_save_and_load_keeps_schedule(tmp_path):
    schedule = WarmupCosineFloor(3e-3, 40, 0.1, 0.25, 0.5, 0.1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.optimizer._learning_rate
    assert isinstance(restored, WarmupCosineFloor)
    assert restored.get_config() == schedule.get_config()
    assert int(loaded.optimizer.iterations) == 1
    assert float(loaded.optimizer.learning_rate) == pytest.approx(_lr(schedule, 1), rel=1e-6)


def test_make_schedule_and_values():
    config = ScheduleConfig(warmup_start_factor=0.1, warmup_fraction=0.2, decay_fraction=0.3,
                            floor_factor=0.1)
    schedule = make_schedule(config, BASE, TOTAL)
    assert isinstance(schedule, WarmupCosineFloor)
    assert schedule.get_config()["warmup_fraction"] == 0.2
    constant = make_schedule(ScheduleConfig(name="constant"), BASE, TOTAL)
    assert constant == BASE and isinstance(constant, float)
    np.testing.assert_array_equal(schedule_values(constant, 5), np.full(5, BASE, np.float32))
    cosine = keras.optimizers.schedules.CosineDecay(BASE, TOTAL)
    assert schedule_values(cosine, 3).shape == (3,)


def test_schedule_defaults_are_the_config_defaults():
    """One source of defaults: a schedule built without arguments is the config's."""
    schedule, config = WarmupCosineFloor(BASE, TOTAL), ScheduleConfig()
    for name in ("warmup_start_factor", "warmup_fraction", "decay_fraction", "floor_factor"):
        assert getattr(schedule, name) == getattr(config, name), name
