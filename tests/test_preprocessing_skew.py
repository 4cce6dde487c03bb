"""Skew between the ways one image reaches a model: Python decoding (the Keras and LiteRT
runtimes), the SavedModel's own decoding of the file's bytes (``serving_default``) and its
``predict_pixels`` on unresized pixels. Images that need resizing, at several sizes and bit
depths, so the two resize kernels (OpenCV area/linear, TF antialiased bilinear) and the two
16-bit stretches meet. Tolerance: 0.03 on any probability, and the same class; measured
differences are printed (``-s``) for docs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from braintumor_tf.data.decode import read_image
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.export.savedmodel import export_classifier
from braintumor_tf.export.tflite import convert_to_tflite

pytestmark = pytest.mark.usefixtures("float32_policy")
SIZE = 48
TOLERANCE = 0.03
NAMES = ("glioma", "meningioma", "notumor", "pituitary")


def _slice(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth bright blob on a dark background: MRI-like content at any size."""
    rng = np.random.default_rng(seed)
    low = cv2.resize(rng.random((5, 5)).astype(np.float32), (width, height),
                     interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:height, :width]
    disc = ((yy - height / 2) ** 2 / (height / 2.4) ** 2 + (xx - width / 2) ** 2
            / (width / 2.4) ** 2) < 1
    return np.clip((0.3 + 0.7 * low) * disc, 0, 1)


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 5, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)  # position-sensitive: resize differences reach the output
    dense = keras.layers.Dense(4, activation="softmax",
                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.3))
    return keras.Model(inputs, dense(x))


def test_python_savedmodel_bytes_pixels_and_litert_agree_on_images_that_need_resizing(tmp_path):
    model = _model()
    saved = export_classifier(model, tmp_path / "served" / "1", NAMES)
    tflite = convert_to_tflite(model, tmp_path / "m_float32.tflite", "float32")
    model.save(tmp_path / "m.keras")
    files = []
    for index, (height, width) in enumerate([(200, 160), (31, 90), (640, 640), (48, 48)]):
        image = _slice(height, width, index)
        eight = tmp_path / f"s{index}_8bit.png"
        cv2.imwrite(str(eight), np.round(image * 255).astype(np.uint8))
        sixteen = tmp_path / f"s{index}_16bit.png"  # a scanner's export: a narrow 16-bit range
        cv2.imwrite(str(sixteen), np.round(300 + image * 1800).astype(np.uint16))
        jpeg = tmp_path / f"s{index}.jpg"
        cv2.imwrite(str(jpeg), np.round(image * 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        files += [eight, sixteen, jpeg]
    python_pixels = np.stack([read_image(f, 1, SIZE) for f in files])
    forms = {
        "keras (Python decoding)": load_runtime(tmp_path / "m.keras").predict(python_pixels),
        "LiteRT (Python decoding)": load_runtime(tflite).predict(python_pixels),
    }
    loaded = tf.saved_model.load(str(saved))
    forms["SavedModel serving_default (bytes)"] = loaded.signatures["serving_default"](
        images=tf.constant([f.read_bytes() for f in files]))["probabilities"].numpy()
    forms["SavedModel predict_pixels (unresized)"] = np.concatenate([
        loaded.signatures["predict_pixels"](pixels=tf.constant(read_image(f, 1)[None]))[
            "probabilities"].numpy() for f in files])
    reference = forms["keras (Python decoding)"]
    assert reference.std(axis=0).max() > 0.01  # the images give different answers
    for name, probabilities in forms.items():
        difference = np.abs(probabilities - reference).max()
        print(f"{name}: max probability difference {difference:.4f}")
        assert difference <= TOLERANCE, name
        assert (probabilities.argmax(1) == reference.argmax(1)).all(), name


def test_evaluate_reads_files_as_the_predictor_does(tmp_path):
    """``evaluate`` batches files through tf.data for speed; each file still goes through the
    predictor's read -> standardise -> resize, so its scores are those ``predict`` gives."""
    from braintumor_tf.evaluation.classification import predict_paths
    from braintumor_tf.serving.predictor import Predictor

    model = _model()
    model.save(tmp_path / "m.keras")
    paths = []
    for index, (height, width) in enumerate([(200, 160), (31, 90), (97, 97)]):
        image = _slice(height, width, index + 10)
        eight, sixteen = tmp_path / f"e{index}_8.png", tmp_path / f"e{index}_16.png"
        cv2.imwrite(str(eight), np.round(image * 255).astype(np.uint8))
        cv2.imwrite(str(sixteen), np.round(image * 4000 + 300).astype(np.uint16))
        paths += [str(eight), str(sixteen)]
    runtime = load_runtime(tmp_path / "m.keras")
    evaluated, _ = predict_paths(runtime, paths, batch_size=4)
    predictor = Predictor(runtime)
    predicted = np.stack([answer.probabilities for answer in
                          predictor.classify([predictor.read(path) for path in paths])])
    np.testing.assert_allclose(evaluated, predicted, atol=1e-6)
    assert len({tuple(np.round(row, 4)) for row in evaluated}) == len(paths)  # not one answer
