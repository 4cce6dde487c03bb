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
import numpy as np

from braintumor_tf import faults
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
        faults.reached("train_batch")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            seconds = time.perf_counter() - self._start
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self._batches * self.batch_size / max(seconds, 1e-9)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose backups are never half-written, never mixed, never fail forever.

    Keras writes the backup in place: a kill during the write leaves a truncated weights file or
    an empty metadata file that every later start trips over (it falls back only on ``OSError``),
    and a kill between the two files pairs new weights with the old epoch. Here each epoch's
    weights go to their own file (``epoch-N.weights.h5``, written beside it and moved into
    place), and the metadata that names them is the commit: written last, atomically, together
    with the dropout layers' random-generator states (not part of Keras' weights, yet needed for
    a resumed run to draw the same masks). A backup that cannot be read falls back to the
    previous one; when neither can, the run says so and starts from the beginning.

    ``commit_last``: save only when ``commit_epoch`` is called (by CommitBackup at the end of
    the callback list) instead of in this callback's own ``on_epoch_end``.
    """

    def __init__(self, backup_dir, commit_last: bool = False, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.commit_last = commit_last

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{self._current_epoch}-batch-{self._last_batch_seen}.weights.h5"
        partial = os.path.join(self.backup_dir, ".partial.weights.h5")
        self.model.save_weights(filepath=partial, overwrite=True)
        faults.reached("backup_weights_written")
        os.replace(partial, os.path.join(self.backup_dir, name))
        faults.reached("backup_metadata_written")  # new weights on disk, not yet committed
        if self.double_checkpoint and os.path.exists(self._training_metadata_path):
            _copy_atomic(self._training_metadata_path, self._prev_training_metadata_path)
        _write_atomic(self._training_metadata_path, json.dumps({
            "epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name,
            "seed_generator_states": [state.tolist() for state in _seed_states(self.model)]}))
        self._remove_unreferenced_weights()

    def on_epoch_end(self, epoch, logs=None):
        if self.commit_last:
            self._pending_epoch = (epoch, logs)
        else:
            super().on_epoch_end(epoch, logs)

    def commit_epoch(self):
        pending = getattr(self, "_pending_epoch", None)
        if pending is not None:
            super().on_epoch_end(*pending)
            self._pending_epoch = None

    def on_train_begin(self, logs=None):
        candidates = [(which, path) for which, path in (
            ("latest", self._training_metadata_path),
            ("previous", self._prev_training_metadata_path)) if os.path.exists(path)]
        for which, path in candidates:
            try:
                self._restore(path, legacy_weights=self._weights_path if which == "latest"
                              else self._prev_weights_path)
                if which == "previous":
                    log(f"the latest backup in {self.backup_dir} was unreadable; resumed from "
                        "the one before")
                return
            except Exception as error:  # noqa: BLE001 - any unreadable backup, whatever the cause
                reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                log(f"{which} backup in {self.backup_dir} unreadable ({reason})")
        if candidates:
            log(f"no readable backup in {self.backup_dir}; starting from epoch 1")
            shutil.rmtree(self.backup_dir, ignore_errors=True)
        self.model._initial_epoch = 0

    def _restore(self, metadata_path: str, legacy_weights: str) -> None:
        with open(metadata_path) as handle:
            metadata = json.loads(handle.read())
        # Backups written before epoch-named files hold their weights in latest.weights.h5(.bkp).
        weights = (os.path.join(self.backup_dir, metadata["weights"]) if metadata.get("weights")
                   else legacy_weights)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights)
        states = metadata.get("seed_generator_states")
        generators = _seed_states(self.model, variables=True)
        if states is not None and len(states) == len(generators):
            for variable, state in zip(generators, states, strict=True):
                variable.assign(np.asarray(state, dtype=variable.dtype))
        self.model._initial_epoch = int(metadata["epoch"])

    def _remove_unreferenced_weights(self):
        referenced = set()
        for path in (self._training_metadata_path, self._prev_training_metadata_path):
            try:
                with open(path) as handle:
                    referenced.add(json.loads(handle.read()).get("weights"))
            except (OSError, ValueError):
                continue
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name not in referenced and not name.startswith("."):
                os.remove(os.path.join(self.backup_dir, name))
        for legacy in (self._weights_path, self._prev_weights_path):
            if os.path.exists(legacy):
                os.remove(legacy)


def _seed_states(model, variables: bool = False):
    """The random-generator state of every layer (dropout masks), in a fixed order."""
    found = [generator.state for layer in model._flatten_layers(include_self=True)
             for generator in getattr(layer, "_seed_generators", [])]
    return found if variables else [np.asarray(keras.ops.convert_to_numpy(v)) for v in found]


class CommitBackup(keras.callbacks.Callback):
    """Last in the list: writes the epoch's backup once every other callback has seen it."""

    def __init__(self, backup: AtomicBackupAndRestore):
        super().__init__()
        self.backup = backup

    def on_epoch_end(self, epoch, logs=None):
        self.backup.commit_epoch()


class StartEpochSync(keras.callbacks.Callback):
    """Tells an epoch-keyed training set (data.datasets.EpochPlan) where a resumed run starts;
    runs after BackupAndRestore has restored, before the first batch is drawn."""

    def __init__(self, start_epoch_variable):
        super().__init__()
        self.start_epoch_variable = start_epoch_variable

    def on_train_begin(self, logs=None):
        self.start_epoch_variable.assign(int(getattr(self.model, "_initial_epoch", None) or 0))


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

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        faults.reached("history_written")


class ResumingModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keeps the best checkpoint across resumes: the best score so far comes back from
    history.csv, so an epoch after a resume that only ties it does not overwrite best.keras."""

    def __init__(self, filepath, history_path, monitor: str):
        super().__init__(filepath, monitor=monitor, mode=monitor_mode(monitor), save_best_only=True)
        self.history_path = Path(history_path)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        faults.reached("best_saved")

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


class TensorBoardLogs(keras.callbacks.TensorBoard):
    """Keras' TensorBoard writer, whose disk refusals (full, read-only) stop training with one
    line naming the logs folder instead of a traceback; the backup of the last finished epoch
    stays, so the same command resumes once there is room."""


def _reporting(name):
    parent = getattr(keras.callbacks.TensorBoard, name)

    def hook(self, *args, **kwargs):
        from braintumor_tf import writes

        with writes.reported(self.log_dir, "TensorBoard logs in", name_the_file=False):
            return parent(self, *args, **kwargs)

    hook.__name__ = name
    return hook


for _name in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
              "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
              "set_model"):
    setattr(TensorBoardLogs, _name, _reporting(_name))


def run_callbacks(run_dir: str | Path, batch_size: int, monitor: str,
                  start_epoch_variable=None) -> list[keras.callbacks.Callback]:
    """Resume (backup/), stop on divergence, throughput, best checkpoint (best.keras), history.csv,
    TensorBoard (logs/).

    BackupAndRestore comes first so a resumed run restores before anything else sees an epoch;
    its epoch-end save comes last (CommitBackup), after best.keras and history.csv.
    """
    run_dir = Path(run_dir)
    # double_checkpoint: a kill during the save falls back to the previous epoch's backup.
    # Kept after fit (delete_checkpoint=False): a kill while the test split is scored resumes
    # past the last epoch instead of training again; commands.train removes it once finished.
    backup = AtomicBackupAndRestore(str(run_dir / "backup"), commit_last=True,
                                    double_checkpoint=True, delete_checkpoint=False)
    callbacks = [backup]
    if start_epoch_variable is not None:
        callbacks.append(StartEpochSync(start_epoch_variable))
    return callbacks + [
        StopOnNonFiniteLoss(),
        EpochTimer(batch_size),
        ResumingModelCheckpoint(str(run_dir / "best.keras"), run_dir / "history.csv", monitor),
        ResumingCSVLogger(str(run_dir / "history.csv")),
        TensorBoardLogs(str(run_dir / "logs"), write_graph=False),
        CommitBackup(backup),
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
