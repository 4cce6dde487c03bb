"""What a task (classification, segmentation) must provide to the one training driver.

The driver (``commands/train.py``) owns everything both tasks share: the run directory, seeds,
precision and strategy, the schedule and optimizer, fit, history and the best checkpoint. A task
owns what differs: its data and split, model, loss and metrics, and what happens to the finished
model (test-split scoring, exports). No ``if task == ...`` outside the task classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from braintumor_tf.config import Config


def training_data_summary(config: Config) -> dict:
    """The data a model was trained on, as its spec records it (no pixels, no patient ids)."""
    data = config.data
    return {"root": None if data.root is None else str(data.root),
            "labels": [str(table) for table in data.labels],
            "train_sources": list(data.train_sources or []),
            "subjects": None if data.subjects is None else str(data.subjects),
            "split_seed": data.split_seed, "folds": data.folds,
            "teacher": config.train.teacher}


@dataclass
class TaskData:
    """A run's split rows plus whatever the task needs to read their targets (e.g. masks)."""

    rows: list[dict]
    extras: dict[str, Any] = field(default_factory=dict)


class Task:
    name: str = ""
    # Export: images that calibrate int8 and check parity (a UNet is slow on CPU: fewer).
    calibration_images: int = 200
    parity_images: int = 1000
    writes_masks: bool = False  # predict writes mask files (and says where)

    def prepare_data(self, config: Config, run_dir: Path, data_dir: Path | None = None) -> TaskData:
        """Find the images and split them (or reuse the run's manifest). ``data_dir``: where
        generated data (phantoms) lives, if not in ``run_dir`` (the stages of one run share it)."""
        raise NotImplementedError

    def discover(self, config: Config, run_dir: Path, data_dir: Path | None = None):
        """(labelled records, folders to look for a subjects.csv in): the data before any split;
        cross-validation assigns folds to them."""
        raise NotImplementedError

    def predict_held_out(self, config: Config, model_path: Path, rows: list[dict], out_path: Path,
                         data_dir: Path | None = None) -> None:
        """Score a fold's held-out ``rows`` with its model; write the out-of-fold CSV."""
        raise NotImplementedError

    def finish_ensemble(self, config: Config, run_dir: Path) -> None:
        """Whatever the fold ensemble (``run_dir/model.keras``) needs beside it."""

    def describe_split(self, data: TaskData, counts: dict[str, int]) -> str:
        return f"split: {counts['train']} train / {counts['val']} val / {counts['test']} test images"

    def datasets(self, config: Config, data: TaskData, train_rows, val_rows, plan=None):
        """(train, val) ``tf.data`` datasets of (inputs, targets) batches; with ``plan``
        (data.datasets.EpochPlan, ``train.deterministic``) the training set is epoch-keyed."""
        raise NotImplementedError

    def build_model(self, config: Config):
        raise NotImplementedError

    def model_spec(self, config: Config, model):
        """What the saved model says about itself (``spec.ModelSpec``), stored inside it."""
        raise NotImplementedError

    def deployable(self, config: Config, model):
        """The model as written to model.keras (e.g. with a fixed input size)."""
        return model

    def loss(self, config: Config):
        raise NotImplementedError

    def metrics(self, config: Config) -> list:
        raise NotImplementedError

    def summary_fields(self, config: Config, data: TaskData) -> dict:
        """Task-specific entries at the top of summary.json."""
        return {}

    def finish(self, config: Config, run_dir: Path, best_model, data: TaskData, test_rows) -> dict:
        """After model.keras is written: score the test split, write exports; returns summary
        entries."""
        raise NotImplementedError

    def evaluate(self, runtime, data_paths, **options) -> dict:
        """``braintumor-tf evaluate`` for a saved model of this task."""
        raise NotImplementedError

    def export_savedmodel(self, model, target: Path, tta: str, threshold: float,
                          spec=None) -> tuple[Path, dict]:
        """Write the SavedModel version; returns it and the metadata every export file records
        (``threshold``: the run's segmentation.threshold, for segmenters; ``spec``: the exported
        form's spec.ModelSpec)."""
        raise NotImplementedError

    def parity_data(self, image_size: int, channels: int, run_dir=None, validation_data=None,
                    masks=None, representative_data=None, split: str = "val"):
        """What ``parity`` compares on (None when no images were given); ``split``: which part
        of a run's manifest (the release is judged on ``test``)."""
        raise NotImplementedError

    def parity(self, reference, tflite_files: dict, validation) -> tuple[dict, dict, str]:
        """(full report for tflite_parity.json/md, per-variant summary, one log line)."""
        raise NotImplementedError

    def predict_files(self, runtime, paths, masks_dir, explain_dir, batch_size: int) -> list[dict]:
        """``braintumor-tf predict`` with a local model: one record per path."""
        return [record for chunk in self.iter_files(runtime, paths, masks_dir, explain_dir,
                                                    batch_size) for record in chunk]

    def iter_files(self, runtime, paths, masks_dir, explain_dir, batch_size: int):
        """The same records, one batch (list) at a time, holding one batch of pixels."""
        raise NotImplementedError

    def records_from_server(self, paths, outputs, masks_dir) -> list[dict]:
        """Records from TF Serving's answers (``export.rest_client``)."""
        raise NotImplementedError

    def describe(self, record: dict) -> str:
        raise NotImplementedError

    def write_csv(self, records: list[dict], csv_path) -> None:
        raise NotImplementedError

    def csv_header(self) -> list[str]:
        """Columns of a streamed CSV (``write_csv`` writes the same for a whole list)."""
        raise NotImplementedError

    def csv_row(self, record: dict) -> list:
        raise NotImplementedError
