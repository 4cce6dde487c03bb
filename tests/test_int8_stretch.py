"""An int8 LiteRT file of a model with the in-graph percentile stretch must run.

LiteRT's int8 comparison aborts the whole process (QuantizeMultiplierGreaterThanOne) and its
int8 division refuses divisors whose raw value is 0; the stretch uses both, and a real
classifier's int8 file died on its first slice. The conversion now keeps those operations in
float (int8 weights and activations everywhere else, float input and output), and refuses the
integer-only contract for such a model with a clear error instead of a file that crashes."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.export.tflite import FLOAT_OPS_IN_INT8, convert_to_tflite, quantised_ops
from braintumor_tf.models.layers import PercentileStretch

SIZE = 48


def _slices(count, seed):
    """Dark background and a disc of random brightness and contrast: two 'classes' by size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, labels = [], []
    for index in range(count):
        label = index % 2
        radius = SIZE * (0.2 if label == 0 else 0.4)
        disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < radius ** 2
        image = disc * rng.uniform(40, 250) * rng.uniform(0.6, 1.0, (SIZE, SIZE))
        images.append(np.clip(image, 0, 255))
        labels.append(label)
    return np.asarray(images, np.float32)[..., None], np.asarray(labels)


def test_int8_file_of_a_stretched_model_keeps_the_stretch_in_float_and_runs(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255.0)(PercentileStretch()(inputs))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    images, labels = _slices(64, 0)
    model.fit(images, labels, epochs=30, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="--int8-io float32"):
        convert_to_tflite(model, tmp_path / "m_int8.tflite", "int8",
                          representative_images=images[:16])
    assert not (tmp_path / "m_int8.tflite").exists()
    path = convert_to_tflite(model, tmp_path / "m_int8_float_io.tflite", "int8",
                             representative_images=images[:16], int8_io="float32")
    assert quantised_ops(path.read_bytes(), {"CONV_2D"})  # the network itself is integer
    # No comparison or division is left on int8 tensors; input and output stay float32.
    assert not quantised_ops(path.read_bytes(), FLOAT_OPS_IN_INT8)
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert source["dtype"] == np.float32
    test_images, _ = _slices(32, 1)
    test_images[0] = 0.0  # a flat image: the stretch maps it to 0, as before
    answers = []
    for image in test_images:  # the bare interpreter, as an edge app runs it
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        answers.append(int(interpreter.get_tensor(target["index"])[0].argmax()))
    # Its softmax is int8 inside: the runtime hands out rows that sum to 1 (evaluate insists).
    probabilities = load_runtime(path).predict(test_images)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    expected = model.predict(test_images, verbose=0).argmax(axis=1)
    assert np.mean(np.asarray(answers) == expected) >= 0.9
    assert list(probabilities.argmax(axis=1)) == answers


def test_the_stretch_maps_a_flat_image_to_zero_and_others_to_the_full_range():
    layer = PercentileStretch()
    flat = np.full((1, SIZE, SIZE, 1), 7.0, np.float32)
    assert np.all(np.asarray(layer(flat)) == 0.0)
    images, _ = _slices(4, 2)
    stretched = np.asarray(layer(images))
    assert stretched.min() == 0.0 and stretched.max() == 255.0


def test_the_int8_file_of_a_guarded_classifier_keeps_weights_and_temperature_not_the_score(tmp_path):
    """An int8 ood_score is calibrated on in-distribution slices only: its range ends below the
    threshold and it never flags (release 2's int8 file flagged 0 of 300 non-MRI probes). The
    int8 file is made without it; its probabilities stay the guarded model's."""
    from test_guard import SIZE as GUARD_SIZE
    from test_guard import _random_guard, _tiny

    from braintumor_tf.commands.export import _tflite_source
    from braintumor_tf.models.guard import with_guard

    model = _tiny()
    guarded = with_guard(model, _random_guard(model))
    kept, info = _tflite_source(guarded, "dynamic")
    assert kept is guarded and info["ood_threshold"] == 3.0
    source, info = _tflite_source(guarded, "int8")
    assert "ood_threshold" not in info and "never flag" in info["ood_score"]
    assert info["temperature"] == 1.7
    pixels = np.random.default_rng(3).uniform(0, 255, (24, GUARD_SIZE, GUARD_SIZE, 1))
    pixels = pixels.astype(np.float32)
    path = convert_to_tflite(source, tmp_path / "c_int8.tflite", "int8",
                             representative_images=pixels[:8], metadata=info)
    runtime = load_runtime(path)
    assert runtime.ood_threshold is None  # one output: the probabilities
    want = np.asarray(guarded(pixels)["probabilities"])
    got = runtime.predict(pixels)
    assert np.mean(got.argmax(axis=1) == want.argmax(axis=1)) >= 0.9
