"""The callbacks every training run uses, so classifier and segmenter runs leave the same files."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras

from braintumor_tf.log import log


class EpochTimer(keras.callbacks.Callback):
    """Adds images/s to the logs so the CSV history shows throughput per epoch."""

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            seconds = time.perf_counter() - self._start
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self._batches * self.batch_size / max(seconds, 1e-9)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose files are never half-written, and which never fails forever.

    Keras writes the backup in place: a kill during the write leaves a truncated weights file or
    an empty metadata file that every later start trips over (it falls back only on ``OSError``).
    Here each file is written beside its target and moved over it (``os.replace``), a backup that
    cannot be read falls back to the previous one, and when neither is readable the run says so
    and starts from the beginning.
    """

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint and os.path.exists(self._weights_path):
            _copy_atomic(self._weights_path, self._prev_weights_path)
        if self.double_checkpoint and os.path.exists(self._training_metadata_path):
            _copy_atomic(self._training_metadata_path, self._prev_training_metadata_path)
        partial = os.path.join(self.backup_dir, ".partial.weights.h5")
        self.model.save_weights(filepath=partial, overwrite=True)
        os.replace(partial, self._weights_path)
        _write_atomic(self._training_metadata_path,
                      json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))

    def on_train_begin(self, logs=None):
        for attempt in ("latest", "previous"):
            try:
                self._load_model()
                return
            except Exception as error:  # noqa: BLE001 - any unreadable backup, whatever the cause
                reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                if attempt == "latest" and os.path.exists(self._prev_weights_path):
                    log(f"backup in {self.backup_dir} unreadable ({reason}); using the one before")
                    _copy_atomic(self._prev_weights_path, self._weights_path)
                    if os.path.exists(self._prev_training_metadata_path):
                        _copy_atomic(self._prev_training_metadata_path, self._training_metadata_path)
                    continue
                log(f"no readable backup in {self.backup_dir} ({reason}); starting from epoch 1")
                for path in (self._weights_path, self._training_metadata_path,
                             self._prev_weights_path, self._prev_training_metadata_path):
                    if os.path.exists(path):
                        os.remove(path)
                self.model._initial_epoch = 0
                return


def _write_atomic(path: str, text: str) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as handle:
        handle.write(text)
    os.replace(partial, path)


def _copy_atomic(source: str, target: str) -> None:
    partial = f"{target}.partial"
    shutil.copyfile(source, partial)
    os.replace(partial, target)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: stopping is all that makes sense."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first non-finite loss, mid-epoch, so no backup or best checkpoint is written
    from broken weights: the last finite ones stay in backup/ and best.keras."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"training diverged: loss is {float(loss)} at epoch {self._epoch + 1}, step "
                f"{batch + 1}; the last finite checkpoint is kept. Try a lower "
                "optimizer.learning_rate, optimizer.clipnorm, or train.precision=float32")


def monitor_mode(monitor: str) -> str:
    """Losses fall, every other monitored number (accuracy, Dice, IoU) rises."""
    return "min" if monitor.endswith("loss") else "max"


class ResumingCSVLogger(keras.callbacks.CSVLogger):
    """Appends across resumes, first dropping rows of epochs the run is about to train again.

    A kill during the backup save makes BackupAndRestore fall back one epoch; without this the
    repeated epoch would appear twice in history.csv and in the curves.
    """

    def __init__(self, filename):
        super().__init__(filename, append=True)

    def on_train_begin(self, logs=None):
        # Set by BackupAndRestore.on_train_begin, which runs first (see run_callbacks).
        resumed_from = int(getattr(self.model, "_initial_epoch", None) or 0)
        path = Path(self.filename)
        if path.exists():
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))
            if rows:
                header, body = rows[0], rows[1:]
                column = header.index("epoch") if "epoch" in header else None
                kept = [row for row in body if column is None or int(row[column]) < resumed_from]
                if len(kept) != len(body):
                    with open(path, "w", newline="") as handle:
                        csv.writer(handle).writerows([header, *kept])
        super().on_train_begin(logs)


class ResumingModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keeps the best checkpoint across resumes: the best score so far comes back from
    history.csv, so an epoch after a resume that only ties it does not overwrite best.keras."""

    def __init__(self, filepath, history_path, monitor: str):
        super().__init__(filepath, monitor=monitor, mode=monitor_mode(monitor), save_best_only=True)
        self.history_path = Path(history_path)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        resumed_from = int(getattr(self.model, "_initial_epoch", None) or 0)
        if not resumed_from or not Path(self.filepath).exists():
            return
        earlier = [value for epoch, value in zip(*_column(self.history_path, self.monitor),
                                                 strict=True) if epoch < resumed_from]
        if earlier:
            self.best = max(earlier) if monitor_mode(self.monitor) == "max" else min(earlier)


def _column(path: Path, name: str) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    if path.exists():
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get(name) not in (None, ""):
                    epochs.append(int(row["epoch"]))
                    values.append(float(row[name]))
    return epochs, values


def run_callbacks(run_dir: str | Path, batch_size: int, monitor: str) -> list[keras.callbacks.Callback]:
    """Resume (backup/), stop on divergence, throughput, best checkpoint (best.keras), history.csv,
    TensorBoard (logs/).

    BackupAndRestore comes first so a resumed run restores before anything else sees an epoch.
    """
    run_dir = Path(run_dir)
    return [
        # double_checkpoint: a kill during the save falls back to the previous epoch's backup.
        AtomicBackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
        StopOnNonFiniteLoss(),
        EpochTimer(batch_size),
        ResumingModelCheckpoint(str(run_dir / "best.keras"), run_dir / "history.csv", monitor),
        ResumingCSVLogger(str(run_dir / "history.csv")),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
    ]


def read_history(path: str | Path) -> dict[str, list[float]]:
    """history.csv back to lists per metric (the CSV survives resumes; Keras' History does not)."""
    path = Path(path)
    history: dict[str, list[float]] = {}
    if not path.exists():
        return history
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key == "epoch" or value in (None, ""):
                    continue
                history.setdefault(key, []).append(float(value))
    return history
