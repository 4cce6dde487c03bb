import keras
import numpy as np
import pytest

from braintumor_tf.config import load_config
from braintumor_tf.models.classifier import build_classifier, build_residual_cnn
from braintumor_tf.models.macs import count_macs

TINY = dict(image_size=32, channels=1, num_classes=4, stem_filters=8, stem_stride=2,
            block_filters=(8, 16), block_kernel_sizes=(3, 3), block_downsample=(True, False))


pytestmark = pytest.mark.usefixtures("float32_policy")


def test_seed_config_matches_the_study_cost():
    config = load_config("configs/classification_seed.yaml")
    model = build_classifier(config.model, config.data.image_size, config.data.channels)
    macs = count_macs(model)
    assert 20e9 < macs < 25e9  # the study's network: about 22 GMAC per image
    assert model.input_shape == (None, 224, 224, 1)
    assert model.get_layer("flatten").output.shape[-1] == 7 * 7 * 128


def test_default_config_fits_the_cpu_budget():
    config = load_config()
    model = build_classifier(config.model, config.data.image_size, config.data.channels)
    assert count_macs(model) <= 1e9


def test_count_macs_on_a_hand_computed_model():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8*9*2*4 = 4608
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)  # 256*3 = 768
    assert count_macs(keras.Model(inputs, outputs)) == 4608 + 768


@pytest.mark.parametrize("bad, message", [
    (dict(channels=2), "channels"),
    (dict(block_kernel_sizes=(3,)), "same length|equal length"),
    (dict(head="max"), "head"),
    (dict(dropout=1.5), "dropout"),
])
def test_constructor_rejects_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        build_residual_cnn(**{**TINY, **bad})


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_precision_policies_give_float32_probabilities_and_finite_loss(policy):
    keras.mixed_precision.set_global_policy(policy)
    model = build_residual_cnn(**TINY)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 1)).astype("float32")
    y = keras.utils.to_categorical(np.arange(8) % 4, 4)
    probabilities = model(x)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=1), 1.0, atol=1e-3)
    if policy != "float32":
        assert model.get_layer("block1_conv1").compute_dtype != "float32"
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)


def test_training_solves_a_separable_task():
    """Bright-left vs bright-right images (and two more quadrant classes) must be learned."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    labels = np.arange(256) % 4
    images = rng.normal(60, 20, (256, 32, 32, 1))
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[index, row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] += 120
    images = np.clip(images, 0, 255).astype("float32")
    targets = keras.utils.to_categorical(labels, 4)
    model = build_residual_cnn(**TINY)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(images, targets, batch_size=32, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.9


def test_save_and_load_round_trip(tmp_path):
    model = build_residual_cnn(**TINY)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)


def test_a_stem_whose_kernel_skips_pixels_is_refused():
    with pytest.raises(ValueError, match="stem_kernel_size 3 is smaller than stem_stride 4"):
        build_residual_cnn(**{**TINY, "stem_stride": 4})
    model = build_residual_cnn(**{**TINY, "stem_stride": 4, "stem_kernel_size": 4})
    assert model.get_layer("stem_conv").kernel.shape[:2] == (4, 4)
