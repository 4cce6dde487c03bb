"""The Python API as a user calls it: ``import braintumor_tf as bt; bt.load(PATH).predict(...)``."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from support import base_image, write_png

import braintumor_tf as bt
from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.export.savedmodel import export_classifier, export_segmenter
from braintumor_tf.models.classifier import build_residual_cnn

SIZE = 32
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("float32_policy")


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = build_residual_cnn(SIZE, 1, 4, stem_filters=8, stem_stride=2, block_filters=(8,),
                               block_kernel_sizes=(3,), block_downsample=(True,), dense_units=0,
                               dropout=0.0)
    path = tmp_path_factory.mktemp("api") / "classifier.keras"
    model.save(path)
    return path


def test_version_and_a_light_import():
    assert bt.__version__ and bt.__version__[0].isdigit()
    code = ("import sys, braintumor_tf; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_classifier_predicts_paths_and_arrays_in_order(classifier_file, tmp_path):
    model = bt.load(classifier_file)
    assert (model.task, model.class_names, model.image_size) == ("classification", CLASS_NAMES, SIZE)
    grey = base_image(1, 48)
    path = write_png(tmp_path / "scan.png", grey)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    records = model.predict([str(path), grey, broken, rgb])
    assert [record["input"] for record in records] == [str(path), "array[1]", str(broken), "array[3]"]
    assert records[2]["error"] and records[2]["class_name"] is None
    good = [records[i] for i in (0, 1, 3)]
    assert all(record["error"] is None for record in good)
    # The same pixels, whether read from the file or given as grey or RGB arrays.
    for record in good[1:]:
        for name in CLASS_NAMES:
            assert record["probabilities"][name] == pytest.approx(good[0]["probabilities"][name],
                                                                  abs=1e-5)
    assert sum(good[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert good[0]["class_name"] == max(good[0]["probabilities"], key=good[0]["probabilities"].get)
    # A single input and a 4-D batch are accepted too.
    assert len(model.predict(path)) == 1 and len(model.predict(np.stack([grey, grey]))) == 2
    with pytest.raises(TypeError, match="expected a path or a numpy array"):
        model.predict([42])


def test_explain_gives_a_heatmap_picture_per_input(classifier_file, tmp_path):
    pictures = bt.load(classifier_file).explain([base_image(2, 40), tmp_path / "missing.png"])
    # The slice at its own size, above a band with the caption and the colour scale.
    assert pictures[0].shape[1:] == (40, 3) and pictures[0].shape[0] > 40
    assert pictures[0].dtype == np.uint8 and pictures[1] is None
    assert pictures[0][:40].std() > 0 and pictures[0][40:].max() > 0


def test_every_model_form_names_its_classes(classifier_file, tmp_path):
    saved = export_classifier(keras.models.load_model(classifier_file), tmp_path / "served" / "1",
                              CLASS_NAMES)
    model = bt.load(saved)
    assert model.class_names == CLASS_NAMES and model.runtime.kind == "savedmodel"
    with pytest.raises(ValueError, match="none found in"):
        model.explain([base_image(3, 40)])
    # The .keras released beside the serving base, with the same spec, explains the served model.
    import shutil

    from braintumor_tf.spec import spec_for, write_keras_spec

    keras_copy = tmp_path / "served" / "classifier.keras"
    shutil.copy2(classifier_file, keras_copy)
    size = keras.models.load_model(classifier_file).input_shape[1]
    write_keras_spec(keras_copy, spec_for("classification", CLASS_NAMES, size, 1))
    [picture] = model.explain([base_image(3, 40)])
    assert picture.shape[1:] == (40, 3)


def test_segmenter_masks_come_back_at_each_input_size(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    # Bright pixels are "tumour": a fixed rule, so the expected mask is known.
    constant = keras.initializers.Constant
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer=constant(0.2),
                                  bias_initializer=constant(-20.0))(inputs)
    saved = export_segmenter(keras.Model(inputs, outputs), tmp_path / "seg" / "1")
    model = bt.load(saved)
    image = np.zeros((64, 80), np.uint8)
    image[10:30, 20:50] = 255
    [record] = model.predict(image)
    assert record["mask"].shape == (64, 80) and record["error"] is None
    assert abs(record["tumour_area_pixels"] - 20 * 30) < 0.15 * 20 * 30
    [picture] = model.explain(image)
    assert picture.shape == (64, 80, 3)


def test_plain_keras_opens_our_files_once_the_package_is_imported(classifier_file):
    """Custom objects register when Keras loads, whichever is imported first."""
    for imports in ("import braintumor_tf, keras", "import keras, braintumor_tf"):
        code = (f"{imports}\nmodel = keras.models.load_model({str(classifier_file)!r})\n"
                "assert model.get_layer('rescale') is not None")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]


def test_the_readme_example_runs():
    failures, tried = doctest.testfile(str(ROOT / "README.md"), module_relative=False,
                                       optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0


def test_grey_arrays_and_files_decode_alike(tmp_path):
    from braintumor_tf.serving.predictor import array_image as _array_image

    grey = base_image(4, 30)
    path = write_png(tmp_path / "x.png", grey)
    from_file = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    np.testing.assert_array_equal(_array_image(grey, 1)[:, :, 0], from_file)
    with pytest.raises(ValueError, match="expected an image"):
        _array_image(np.zeros((4, 4, 2)), 1)
