"""Both tasks go through the same export round trip (tests/export_harness.py)."""

from __future__ import annotations

import keras
import pytest
from export_harness import run_export_round_trip

from braintumor_tf.models.classifier import build_residual_cnn

SIZE = 32

pytestmark = pytest.mark.usefixtures("float32_policy")


def _tiny_classifier():
    keras.utils.set_random_seed(0)
    return build_residual_cnn(SIZE, 1, 4, stem_filters=8, stem_stride=2, block_filters=(8, 16),
                              block_kernel_sizes=(3, 3), block_downsample=(True, False),
                              dense_units=0, dropout=0.0)


def _tiny_segmenter():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1), name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("task_name, build", [("classification", _tiny_classifier),
                                              ("segmentation", _tiny_segmenter)])
def test_every_model_form_agrees_with_keras(task_name, build, tmp_path):
    differences = run_export_round_trip(task_name, build(), tmp_path)
    assert set(differences) == {"keras reload", "savedmodel predict_pixels",
                                "savedmodel serving_default", "savedmodel runtime",
                                "tflite float32"}
