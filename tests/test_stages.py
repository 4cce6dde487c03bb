"""Staged runs (train.stages): one config, several trainings chained by their best weights."""

import json

import keras
import numpy as np
import pytest
from support import run_python

from braintumor_tf.config import CONFIG_DIR, load_config

SEG_CONFIG = CONFIG_DIR / "segmentation.yaml"


def _stages(text):
    return load_config(SEG_CONFIG, [f"train.stages={text}"])


def test_stage_configs_apply_their_overrides_and_nothing_else():
    config = _stages("[{name: coarse, data.image_size: 64}, {data.image_size: 96, "
                     "optimizer.learning_rate: 0.0003, train.epochs: 2}]")
    (first_name, first), (second_name, second) = config.stage_configs()
    assert (first_name, second_name) == ("1_coarse", "2_stage2")
    assert first.data.image_size == 64 and first.train.epochs == config.train.epochs
    assert second.data.image_size == 96 and second.train.epochs == 2
    assert second.optimizer.learning_rate == 0.0003 and first.optimizer.learning_rate == 0.001
    assert first.train.stages == () and second.train.stages == ()
    assert second.segmentation == config.segmentation


@pytest.mark.parametrize("stages, message", [
    ("[{data.image_size: 100}]", r"train.stages\[0\] \(stage1\): .*multiple of 32"),
    ("[{name: a}, {train.epochz: 3}]", r"train.stages\[1\] \(stage2\): unknown config key.*epochz"),
    ("[{data.root: elsewhere}]", "may not set data.root"),
    ("[{train.initial_weights: x.keras}]", "may not set train.initial_weights"),
    ("[3]", "must be a mapping"),
    ("[{name: 'a b'}]", "letters, digits"),
])
def test_bad_stages_fail_before_training_naming_the_stage(stages, message):
    with pytest.raises(ValueError, match=message):
        _stages(stages)


@pytest.mark.slow
def test_a_staged_run_chains_weights_shares_its_split_and_resumes_as_finished(tmp_path):
    run = tmp_path / "run"
    args = ["-m", "braintumor_tf.train", "--config", str(SEG_CONFIG), "--run", str(run),
            "--set", "data.phantom_images_per_class=6", "--set", "data.phantom_image_size=96",
            "--set", "data.image_size=64", "--set", "segmentation.encoder=mobilenetv2",
            "--set", "segmentation.decoder_filters=[8, 8, 4, 4, 4]",
            "--set", "segmentation.train_crop=32", "--set", "train.batch_size=8",
            "--set", "train.precision=float32", "--set", "train.run_eagerly=true",
            "--set", "train.verbose=0", "--set", "train.epochs=1",
            "--set", "train.stages=[{name: crops}, {name: whole, data.image_size: 96, "
                     "segmentation.train_crop: null, optimizer.learning_rate: 0.0002}]"]
    run_python(*args, timeout=600)
    first, second = run / "stages" / "1_crops", run / "stages" / "2_whole"
    # Both stages saw the same split, written once by the first.
    assert (first / "split_manifest.csv").read_text() == (second / "split_manifest.csv").read_text()
    assert (run / "split_manifest.csv").read_text() == (first / "split_manifest.csv").read_text()
    # The second started from the first's best weights, at its own size.
    second_config = load_config(second / "config.yaml")
    assert second_config.train.initial_weights == str(first / "best.keras")
    assert second_config.data.image_size == 96 and second_config.segmentation.train_crop is None
    # Only the last stage scores the test split; the run's top level is that stage's model.
    assert not (first / "test").exists() and (run / "test" / "metrics.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert [stage["name"] for stage in summary["stages"]] == ["1_crops", "2_whole"]
    assert summary["epochs"] == 2 and "vs_masks" in summary["test"]
    final = keras.saving.load_model(run / "model.keras", compile=False)
    crop_stage = keras.saving.load_model(first / "model.keras", compile=False)
    assert final.input_shape == (None, 96, 96, 1) and crop_stage.input_shape == (None, 64, 64, 1)
    # Trained on: the final weights moved away from the first stage's.
    assert any(not np.array_equal(a, b) for a, b in zip(final.get_weights(),
                                                          crop_stage.get_weights(), strict=True))
    # Same command again: the finished run is returned, nothing trains.
    again = run_python(*args, timeout=300)
    assert again.returncode == 0 and "already holds a finished run" in again.stdout + again.stderr
