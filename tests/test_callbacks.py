"""history.csv stays one row per epoch across resumes."""

import csv
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras

from braintumor_tf.training.callbacks import ResumingCSVLogger


def _epochs(path):
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_a_fresh_run_keeps_nothing_and_a_resumed_one_keeps_earlier_epochs(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,1.0\n1,0.9\n")
    logger = ResumingCSVLogger(str(path))
    logger.set_model(_tiny_model())  # no _initial_epoch: nothing was restored
    logger.on_train_begin()
    logger.on_train_end()
    assert _epochs(path) == []


def test_rows_of_epochs_to_be_retrained_are_dropped(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n3,0.7\n")
    model = _tiny_model()
    model._initial_epoch = 2  # what BackupAndRestore sets when it falls back to epoch 2's state
    logger = ResumingCSVLogger(str(path))
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 0.5})
    logger.on_train_end()
    assert _epochs(path) == [0, 1, 2]
    assert path.read_text().splitlines()[-1].startswith("2,0.5")  # the new row, not the old one
