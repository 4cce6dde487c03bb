import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import pytest

from braintumor_tf.cli import TTA_CHOICES
from braintumor_tf.commands.export import export_model
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.models.tta import TTA_MODES, SquareSymmetry, with_test_time_augmentation

SIZE = 16


pytestmark = pytest.mark.usefixtures("float32_policy")


def _segmenter(seed=0):
    """Random convolutions: nothing about it is mirror- or turn-symmetric."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(1, 5, padding="same", activation="sigmoid", dtype="float32")(x)
    return keras.Model(inputs, x, name="tiny_segmenter")


def _pixels(count=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 1)).astype(np.float32)


def _numpy_view(x, turns, mirror):
    x = np.rot90(x, turns, axes=(1, 2))
    return x[:, :, ::-1] if mirror else x


@pytest.mark.parametrize("turns", range(4))
@pytest.mark.parametrize("mirror", [False, True])
def test_views_match_numpy_and_are_undone(turns, mirror):
    x = _pixels()
    view = np.asarray(SquareSymmetry(turns, mirror)(x))
    np.testing.assert_array_equal(view, _numpy_view(x, turns, mirror))
    back = np.asarray(SquareSymmetry(turns, mirror, inverse=True)(view))
    np.testing.assert_array_equal(back, x)


def _numpy_undo(y, turns, mirror):
    y = y[:, :, ::-1] if mirror else y
    return np.rot90(y, -turns, axes=(1, 2))


def test_averages_the_undone_views():
    model = _segmenter()
    x = _pixels()
    expected = np.mean([
        _numpy_undo(np.asarray(model(_numpy_view(x, turns, mirror).copy())), turns, mirror)
        for turns in range(4) for mirror in (False, True)], axis=0)
    averaged = np.asarray(with_test_time_augmentation(model, "dihedral")(x))
    np.testing.assert_allclose(averaged, expected, atol=1e-6)
    assert averaged.dtype == np.float32


@pytest.mark.parametrize("mode,symmetries", [
    ("flips", [(0, True), (2, False), (2, True)]),
    ("dihedral", [(1, False), (3, True), (0, True)]),
])
def test_averaged_model_is_equivariant(mode, symmetries):
    """Averaging over a group makes the masks follow the image under that group; the plain
    model does not, so a wrong inverse would show here."""
    model = _segmenter()
    averaged = with_test_time_augmentation(model, mode)
    x = _pixels()
    for turns, mirror in symmetries:
        moved = _numpy_view(x, turns, mirror).copy()
        np.testing.assert_allclose(np.asarray(averaged(moved)),
                                   _numpy_view(np.asarray(averaged(x)), turns, mirror), atol=1e-6)
        assert not np.allclose(np.asarray(model(moved)),
                               _numpy_view(np.asarray(model(x)), turns, mirror), atol=1e-3)


def test_none_is_the_model_itself_and_round_trips(tmp_path):
    model = _segmenter()
    assert with_test_time_augmentation(model, "none") is model
    wrapped = with_test_time_augmentation(model, "flips")
    path = tmp_path / "tta.keras"
    wrapped.save(path)
    reloaded = keras.models.load_model(path, compile=False)
    x = _pixels()
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(wrapped(x)), atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        with_test_time_augmentation(_segmenter(), "rotations")
    flat = keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.Conv2D(1, 3)])
    with pytest.raises(ValueError, match="output \\[N, S, S, 1\\]"):
        with_test_time_augmentation(keras.Sequential([flat, keras.layers.Reshape((14, 14))]))
    with pytest.raises(ValueError, match="quarter_turns"):
        SquareSymmetry(4)
    assert TTA_CHOICES == TTA_MODES


def test_exports_compute_the_averaged_masks(tmp_path):
    model_path = tmp_path / "tiny.keras"
    _segmenter().save(model_path)
    summary = export_model(tmp_path / "segmenter", model_path=model_path, tflite_variants="float32",
                           tta="flips")
    assert summary["test_time_augmentation"] == "flips"
    x = _pixels()
    keras_tta = load_runtime(model_path, tta="flips").predict(x)
    plain = load_runtime(model_path).predict(x)
    assert not np.allclose(keras_tta, plain, atol=1e-3)
    for exported in (summary["savedmodel"], summary["tflite"]["float32"]):
        np.testing.assert_allclose(load_runtime(exported).predict(x), keras_tta, atol=1e-5)
    sidecar = json.loads((tmp_path / "segmenter" / "segmenter_float32.json").read_text())
    assert sidecar["test_time_augmentation"] == "flips"
    with pytest.raises(ValueError, match="computes what it was exported with"):
        load_runtime(summary["tflite"]["float32"], tta="flips")


def test_tflite_stores_the_shared_weights_once(tmp_path):
    """Eight views call one set of weights: the file must not hold eight copies."""
    from braintumor_tf.export.tflite import convert_to_tflite

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(96, 3, padding="same")(inputs)
    x = keras.layers.Conv2D(96, 3, padding="same")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))
    plain = convert_to_tflite(model, tmp_path / "plain.tflite", "dynamic").stat().st_size
    averaged = convert_to_tflite(with_test_time_augmentation(model, "dihedral"),
                                 tmp_path / "dihedral.tflite", "dynamic").stat().st_size
    assert model.count_params() > 80_000  # weights dominate the file
    assert averaged < 1.3 * plain


def test_benchmark_takes_models_of_different_input_sizes(tmp_path):
    from braintumor_tf.commands.benchmark import benchmark

    paths = []
    for size in (SIZE, 2 * SIZE):
        inputs = keras.Input((size, size, 1))
        model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same",
                                                        activation="sigmoid")(inputs))
        paths.append(tmp_path / f"seg{size}.keras")
        model.save(paths[-1])
    results = benchmark(paths, images=4, batch_sizes=(1,))
    assert sorted(results["image_size"].values()) == [SIZE, 2 * SIZE]
    assert all(rows[0]["images"] == 4 for rows in results["backends"].values())


def _classifier(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1), name="pixels")
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax", dtype="float32")(x))


def test_classifier_mirror_averages_probabilities_and_exports(tmp_path):
    """A classifier's views need no undoing: mirror = mean of p(x) and p(x mirrored)."""
    model = _classifier()
    x = _pixels()
    expected = (np.asarray(model(x)) + np.asarray(model(x[:, :, ::-1]))) / 2
    assert not np.allclose(expected, np.asarray(model(x)), atol=1e-4)
    wrapped = with_test_time_augmentation(model, "mirror")
    np.testing.assert_allclose(np.asarray(wrapped(x)), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(wrapped(x[:, :, ::-1])), expected, atol=1e-6)
    model_path = tmp_path / "classifier.keras"
    model.save(model_path)
    summary = export_model(tmp_path / "classifier", model_path=model_path,
                           tflite_variants="float32", tta="mirror")
    for exported in (summary["savedmodel"], summary["tflite"]["float32"]):
        np.testing.assert_allclose(load_runtime(exported).predict(x), expected, atol=1e-5)
    sidecar = json.loads((tmp_path / "classifier" / "classifier_float32.json").read_text())
    assert sidecar["test_time_augmentation"] == "mirror"
