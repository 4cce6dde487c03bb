"""What a user sees on the terminal: results whatever -q says, no TensorFlow start-up noise,
one line per result even for odd file names, and --version."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest

import braintumor_tf

pytestmark = pytest.mark.usefixtures("float32_policy")


def test_version_is_the_packages():
    result = subprocess.run([sys.executable, "-m", "braintumor_tf", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == (
        f"braintumor_tf {braintumor_tf.__version__}")


def test_quiet_predict_prints_results_and_no_tensorflow_noise(tmp_path):
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x)).save(
        tmp_path / "m.keras")
    odd = tmp_path / "two\nlines.png"  # a newline in a name must not fake a second result
    cv2.imwrite(str(tmp_path / "plain.png"), np.full((40, 40), 90, np.uint8))
    os.rename(tmp_path / "plain.png", odd)
    # The user's environment, not the test suite's quieter one: the CLI must quiet TF itself.
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-m", "braintumor_tf", "-q", "predict", "--model",
         str(tmp_path / "m.keras"), str(odd)], capture_output=True, text=True, timeout=300,
        env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "two\\nlines.png: " in lines[0], result.stdout
    assert " (glioma=" in lines[0]
    for noise in ("oneDNN custom operations", "absl::InitializeLog", "batch size"):
        assert noise not in result.stdout + result.stderr


def test_old_flag_spellings_still_work_with_a_note(tmp_path):
    from click.testing import CliRunner

    from braintumor_tf.cli import main

    runner = CliRunner()
    both = runner.invoke(main, ["train", "--out", str(tmp_path / "a"), "--run", str(tmp_path / "b")])
    assert both.exit_code == 2 and "give --run only" in both.output
    # The old spelling is read (the note), then the run starts and stops at the bad key.
    old = runner.invoke(main, ["train", "--out", str(tmp_path / "a"), "--set", "nosuch.key=1"])
    assert old.exit_code != 0 and "train --out is deprecated" in old.output
    assert "use --run" in old.output and "nosuch" in old.output
    audit = runner.invoke(main, ["data", "audit", str(tmp_path / "missing"), "--threshold", "0.9"])
    assert "audit --threshold is deprecated" in audit.output
    assert "data folder not found" in audit.output
