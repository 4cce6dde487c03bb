"""Two recipes' models mixed in a chosen share (models/ensemble.fold_ensemble with weights)."""

import keras
import numpy as np
import pytest

import braintumor_tf  # noqa: F401  (registers the package's objects for load_model)
from braintumor_tf.models.ensemble import fold_ensemble


def _member(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="block1_out")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))


def test_weighted_mean_of_two_models_survives_saving(tmp_path):
    first, second = _member(1), _member(2)
    mixed = fold_ensemble([first, second], name="mixture", weights=[2, 3])
    pixels = np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 1)).astype("float32")
    expected = 0.4 * first.predict(pixels, verbose=0) + 0.6 * second.predict(pixels, verbose=0)
    np.testing.assert_allclose(mixed.predict(pixels, verbose=0), expected, atol=1e-6)
    mixed.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), expected, atol=1e-6)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -0.5], [0.0, 0.0]])
def test_weights_must_fit_the_members(weights):
    with pytest.raises(ValueError, match="one non-negative weight per member"):
        fold_ensemble([_member(1), _member(2)], weights=weights)
