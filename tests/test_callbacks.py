"""history.csv stays one row per epoch across resumes; backups survive kills."""

import csv
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np

from braintumor_tf.training.callbacks import (
    AtomicBackupAndRestore,
    ResumingCSVLogger,
    ResumingModelCheckpoint,
)


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


class _Interrupt(Exception):
    pass


class _StopAfter(keras.callbacks.Callback):
    """Stands in for a kill after ``epochs`` finished epochs (their backups written)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs, self.seen = epochs, []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if len(self.seen) >= self.epochs:
            raise _Interrupt


def _fit(backup_dir, stop_after=99, epochs=4):
    model = _tiny_model()
    recorder = _StopAfter(stop_after)
    x = np.zeros((8, 3), np.float32)
    try:
        model.fit(x, x[:, :1], epochs=epochs, verbose=0, callbacks=[
            AtomicBackupAndRestore(str(backup_dir), double_checkpoint=True), recorder])
    except _Interrupt:
        pass
    return recorder.seen


def test_a_truncated_backup_falls_back_then_starts_over_instead_of_failing(tmp_path):
    backup = tmp_path / "backup"
    assert _fit(backup, stop_after=3) == [0, 1, 2]
    # Only the weights the two metadata files name are kept; no partial files left behind.
    assert sorted(p.name for p in backup.iterdir()) == [
        "epoch-2-batch-0.weights.h5", "epoch-3-batch-0.weights.h5", "training_metadata.json",
        "training_metadata.json.bkp"]
    # A kill during the save: newest weights truncated, metadata empty -> the one before (epoch 2).
    newest = backup / "epoch-3-batch-0.weights.h5"
    newest.write_bytes(newest.read_bytes()[:96])
    (backup / "training_metadata.json").write_text("")
    assert _fit(backup, stop_after=1) == [2]
    # Nothing readable left at all -> one line, and training starts from the first epoch.
    for path in backup.glob("*.weights.h5"):
        path.write_bytes(b"\x89HDF\r\n\x1a\n broken")
    assert _fit(backup) == [0, 1, 2, 3]


def test_weights_written_but_not_committed_are_not_paired_with_the_old_epoch(tmp_path):
    backup = tmp_path / "backup"
    assert _fit(backup, stop_after=2) == [0, 1]
    committed = json.loads((backup / "training_metadata.json").read_text())
    # As a kill between the weights file and its metadata: a newer, uncommitted weights file.
    (backup / "epoch-9-batch-0.weights.h5").write_bytes(b"not what the metadata names")
    assert _fit(backup, stop_after=1) == [committed["epoch"]]


def test_dropout_draws_continue_across_a_resume(tmp_path):
    """The dropout generator's state is not in Keras' weights: the backup carries it."""
    def model_with_dropout():
        keras.utils.set_random_seed(3)
        inputs = keras.Input((3,))
        outputs = keras.layers.Dense(1)(keras.layers.Dropout(0.5)(keras.layers.Dense(8)(inputs)))
        model = keras.Model(inputs, outputs)
        model.compile("sgd", "mse")
        return model

    x = np.random.default_rng(0).random((8, 3)).astype(np.float32)
    straight = model_with_dropout()
    straight.fit(x, x[:, :1], epochs=3, batch_size=8, shuffle=False, verbose=0)
    interrupted = model_with_dropout()
    try:
        interrupted.fit(x, x[:, :1], epochs=3, batch_size=8, shuffle=False, verbose=0, callbacks=[
            AtomicBackupAndRestore(str(tmp_path / "b"), double_checkpoint=True), _StopAfter(2)])
    except _Interrupt:
        pass
    resumed = model_with_dropout()
    resumed.fit(x, x[:, :1], epochs=3, batch_size=8, shuffle=False, verbose=0,
                callbacks=[AtomicBackupAndRestore(str(tmp_path / "b"), double_checkpoint=True)])
    for got, want in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_best_checkpoint_remembers_its_score_across_a_resume(tmp_path):
    best = tmp_path / "best.keras"
    model = _tiny_model()
    model.save(best)
    (tmp_path / "history.csv").write_text("epoch,val_loss\n0,0.5\n1,0.2\n2,0.3\n")
    checkpoint = ResumingModelCheckpoint(str(best), tmp_path / "history.csv", "val_loss")
    model._initial_epoch = 2  # resumed after epoch 1: epoch 2 is retrained, its row ignored
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    assert checkpoint.best == 0.2
    before = best.stat().st_mtime_ns
    checkpoint.on_epoch_end(2, {"val_loss": 0.2})  # ties the best: must not overwrite it
    assert best.stat().st_mtime_ns == before
    checkpoint.on_epoch_end(3, {"val_loss": 0.1})
    assert best.stat().st_mtime_ns != before
