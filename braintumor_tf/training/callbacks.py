"""The callbacks every training run uses, so classifier and segmenter runs leave the same files."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import keras


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


def run_callbacks(run_dir: str | Path, batch_size: int, monitor: str) -> list[keras.callbacks.Callback]:
    """Resume (backup/), stop on divergence, throughput, best checkpoint (best.keras), history.csv,
    TensorBoard (logs/).

    BackupAndRestore comes first so a resumed run restores before anything else sees an epoch.
    """
    run_dir = Path(run_dir)
    return [
        # double_checkpoint: a kill during the save falls back to the previous epoch's backup.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
        StopOnNonFiniteLoss(),
        EpochTimer(batch_size),
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor=monitor,
                                        mode=monitor_mode(monitor), save_best_only=True),
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
