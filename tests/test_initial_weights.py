"""train.initial_weights: warm-starting a run from a finished model or a weights file."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import pytest

from braintumor_tf.commands.run_dir import load_initial_weights
from braintumor_tf.config import ModelConfig, load_config
from braintumor_tf.models.classifier import build_classifier


def _small(filters=(8, 16)):
    model_config = ModelConfig(block_filters=filters, block_kernel_sizes=(3,) * len(filters),
                               block_downsample=(True,) * len(filters), dense_units=8)
    return build_classifier(model_config, 32, 1)


@pytest.fixture
def pixels():
    return np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")


@pytest.mark.parametrize("file_name", ["source.keras", "source.weights.h5"])
def test_a_fresh_model_takes_the_saved_weights(tmp_path, pixels, file_name):
    keras.utils.set_random_seed(1)
    source = _small()
    path = tmp_path / file_name
    source.save(path) if file_name.endswith(".keras") else source.save_weights(path)
    keras.utils.set_random_seed(2)
    fresh = _small()
    assert not np.allclose(fresh.predict(pixels, verbose=0), source.predict(pixels, verbose=0))
    load_initial_weights(fresh, path)
    np.testing.assert_allclose(fresh.predict(pixels, verbose=0), source.predict(pixels, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_another_architecture_is_refused_with_the_differing_weight(tmp_path):
    _small((8, 16)).save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match="has shape"):
        load_initial_weights(_small((8, 24)), tmp_path / "other.keras")
    _small((8, 16, 32)).save(tmp_path / "deeper.keras")
    with pytest.raises(ValueError, match="not the same architecture"):
        load_initial_weights(_small((8, 16)), tmp_path / "deeper.keras")


@pytest.mark.parametrize("name, message", [("missing.keras", "no such file"),
                                           ("weights.npz", ".keras model or a .weights.h5")])
def test_bad_paths_fail_clearly(tmp_path, name, message):
    if name.endswith(".npz"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError, match=message):
        load_initial_weights(_small(), tmp_path / name)


def test_the_option_reaches_the_config_from_the_command_line(tmp_path):
    config = load_config(None, ["train.initial_weights=runs/a/model.keras",
                                "segmentation.encoder_bn_momentum=0.9"])
    assert config.train.initial_weights == "runs/a/model.keras"
    assert config.segmentation.encoder_bn_momentum == 0.9
    with pytest.raises(ValueError, match="encoder_bn_momentum"):
        load_config(None, ["segmentation.encoder_bn_momentum=1.5"])
