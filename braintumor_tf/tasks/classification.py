"""The tumour-type classifier as a task: folder-per-class data, softmax model, accuracy."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from braintumor_tf.config import Config
from braintumor_tf.data import filesystem
from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.datasets import classification_dataset
from braintumor_tf.data.discover import CLASS_NAMES, class_counts, discover_images
from braintumor_tf.data.duplicates import drop_near_duplicates_of
from braintumor_tf.data.labels_csv import records_from_labels
from braintumor_tf.data.phantoms import write_phantom_dataset
from braintumor_tf.data.run_split import reuse_split, split_and_write_manifest
from braintumor_tf.data.subjects import resolve_subjects
from braintumor_tf.evaluation.classification import evaluate_classifier, evaluate_records
from braintumor_tf.evaluation.guard_fit import calibrate_classifier
from braintumor_tf.export.parity import tflite_parity
from braintumor_tf.export.savedmodel import export_classifier
from braintumor_tf.export.validation_data import folder_rows, load_pixels, manifest_rows
from braintumor_tf.inference import classification as inference
from braintumor_tf.log import log
from braintumor_tf.models.classifier import build_classifier
from braintumor_tf.models.guard import load_guard_of, with_guard
from braintumor_tf.spec import read_spec, spec_for
from braintumor_tf.tasks.base import Task, TaskData, training_data_summary
from braintumor_tf.training.distill import (
    keras_teacher,
    savedmodel_teacher,
    transfer_weights,
    with_teacher_answers,
)

TEST_SUMMARY_KEYS = ("n", "accuracy", "macro_f1", "roc_auc_ovr", "ece")


class ClassificationTask(Task):
    name = "classification"
    parity_images = 2000  # a whole test split of ../shared/data (1,222 images), not a sample

    def prepare_data(self, config: Config, run_dir: Path, data_dir: Path | None = None) -> TaskData:
        """Discover images, drop broken ones and split by subject/duplicate group (or reuse the
        manifest)."""
        rows = reuse_split(run_dir)
        if rows is not None:
            return TaskData(rows)
        records, subject_roots = self.discover(config, run_dir, data_dir)
        return TaskData(split_and_write_manifest(config, run_dir, records, subject_roots))

    def discover(self, config: Config, run_dir: Path, data_dir: Path | None = None):
        """(labelled records, folders where a subjects.csv is looked for) of the configured data:
        folder-per-class roots (or generated phantoms) plus any ``data.labels`` tables."""
        if config.data.root is None:
            root = (data_dir or run_dir) / "data" / "phantoms"
            log(f"no data.root given: generating the built-in phantom data set in {root}")
            write_phantom_dataset(root, config.data.phantom_images_per_class,
                                  config.data.phantom_image_size, config.data.phantom_seed)
            roots = [root]
        else:
            roots = [_data_path(p) for p in str(config.data.root).split(",")]
        records = discover_images(roots)
        log(f"found {len(records)} labelled images under {', '.join(map(str, roots))}: "
            f"{class_counts(records)}")
        for table in config.data.labels:
            listed = records_from_labels(table)
            log(f"found {len(listed)} labelled images listed in {table}: {class_counts(listed)}")
            records += listed
        if config.data.exclude_duplicates_of:
            records = _exclude_near_duplicates(records, config, run_dir, roots)
        # Phantoms have no patients; never pick up a subjects.csv from the run directory's parents.
        subject_roots = roots if config.data.root is not None else []
        subject_roots += [filesystem.dirname(table) for table in config.data.labels]
        return records, subject_roots

    def datasets(self, config: Config, data: TaskData, train_rows, val_rows, plan=None):
        settings = dict(image_size=config.data.image_size, channels=config.data.channels,
                        batch_size=config.train.batch_size, num_classes=config.model.num_classes,
                        cache=config.data.cache)
        train = classification_dataset(*_paths_and_labels(train_rows), training=True,
                                       augment_config=config.data.augment, seed=config.train.seed,
                                       plan=plan, **settings)
        val = classification_dataset(*_paths_and_labels(val_rows), training=False, **settings)
        if config.train.teacher:
            teacher = self._teacher(config)
            train, val = (with_teacher_answers(dataset, teacher.answer, teacher.image_size,
                                               config.data.image_size) for dataset in (train, val))
        return train, val

    def build_model(self, config: Config):
        model = build_classifier(config.model, config.data.image_size, config.data.channels)
        if config.train.teacher and not config.train.initial_weights:
            teacher = self._teacher(config)
            if teacher.model is not None:
                copied = transfer_weights(teacher.model, model)
                log(f"distillation: {len(copied)} of the student's layers start from the "
                    f"teacher's weights")
        return model

    def _teacher(self, config: Config) -> Teacher:
        """The teacher of a distillation run, loaded once."""
        cached = getattr(self, "_loaded_teacher", None)
        if cached is None or cached.path != config.train.teacher:
            cached = self._loaded_teacher = load_teacher(config.train.teacher,
                                                         config.data.channels)
        return cached

    def model_spec(self, config: Config, model):
        return spec_for(self.name, CLASS_NAMES, model.input_shape[1], model.input_shape[3],
                        intensity=config.model.intensity,
                        training_data=training_data_summary(config))

    def loss(self, config: Config):
        if config.train.teacher:  # the targets are the teacher's probabilities: match them
            return keras.losses.KLDivergence()
        return keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing)

    def metrics(self, config: Config) -> list:
        return [keras.metrics.CategoricalAccuracy(name="accuracy")]

    def finish(self, config: Config, run_dir: Path, best_model, data: TaskData, test_rows) -> dict:
        summary = {}
        if config.model.name == "resnet50":
            from braintumor_tf.models.resnet50_classifier import save_encoder_weights

            summary["encoder_weights_file"] = save_encoder_weights(
                best_model, run_dir / "encoder.weights.h5")
            log(f"encoder weights for the segmenter: {summary['encoder_weights_file']} "
                "(segmentation.encoder_weights)")
        # Before the test: the guard changes the probabilities (temperature) the test scores.
        try:
            summary["ood_guard"] = calibrate_classifier(
                run_dir / "model.keras", manifest_rows(run_dir, "train"),
                manifest_rows(run_dir, "val"))
        except ValueError as error:  # e.g. a class missing from a tiny training split
            log(f"warning: no out-of-distribution guard for this run: {error}")
        if test_rows:
            paths, labels = _paths_and_labels(test_rows)
            report = evaluate_records(run_dir / "model.keras", paths, labels,
                                      out_dir=run_dir / "test", batch_size=config.train.batch_size)
            summary["test"] = {key: report[key] for key in TEST_SUMMARY_KEYS}
        export_dir = run_dir / "savedmodel"
        if export_dir.exists():
            shutil.rmtree(export_dir)
        guard = load_guard_of(run_dir / "model.keras")
        export_classifier(best_model if guard is None else with_guard(best_model, guard),
                          export_dir, CLASS_NAMES, spec=read_spec(run_dir / "model.keras"))
        log(f"saved {run_dir / 'model.keras'} and SavedModel {export_dir}")
        return summary

    def predict_held_out(self, config: Config, model_path: Path, rows: list[dict], out_path: Path,
                         data_dir: Path | None = None, tta: str = "none"):
        """A cross-validation fold's held-out images scored by its model (``tta``: averaged over
        those views): one row per image with its fold, subject and source, the truth, the
        prediction and the probabilities."""
        from braintumor_tf.evaluation.cross_validation import write_classification_out_of_fold
        from braintumor_tf.export.runtimes import load_runtime

        paths, labels = _paths_and_labels(rows)
        scratch = out_path.parent / ("held_out" if tta == "none" else f"held_out_tta-{tta}")
        runtime = load_runtime(model_path,
                               batch_size=config.train.batch_size, tta=tta)
        report = evaluate_records(model_path, paths, labels, out_dir=scratch,
                                  batch_size=config.train.batch_size, verbose=False, runtime=runtime)
        log(f"held-out fold{'' if tta == 'none' else f' ({tta} averaging)'}: accuracy "
            f"{report['accuracy']:.4f} on {report['n']} images")
        write_classification_out_of_fold(rows, scratch / "predictions.csv", out_path)

    def finish_ensemble(self, config: Config, run_dir: Path) -> None:
        """The OOD guard and temperature of a CV run's fold ensemble (see cross_validate); the
        temperature from the out-of-fold answers (with the first held-out averaging, if any)."""
        from braintumor_tf.evaluation.cross_validation import out_of_fold_rows

        tta = config.train.held_out_tta[0] if config.train.held_out_tta else "none"
        try:
            calibrate_classifier(run_dir / "model.keras", manifest_rows(run_dir, "train"),
                                 manifest_rows(run_dir, "val"),
                                 out_of_fold=out_of_fold_rows(run_dir, tta))
        except ValueError as error:
            log(f"warning: no out-of-distribution guard for the ensemble: {error}")

    def evaluate(self, runtime, data_paths, **options) -> dict:
        return evaluate_classifier(runtime, data_paths, **options)

    def export_savedmodel(self, model, target: Path, tta: str, threshold: float,
                          spec=None) -> tuple[Path, dict]:
        return export_classifier(model, target, CLASS_NAMES, tta, spec), {
            "class_names": list(CLASS_NAMES), "test_time_augmentation": tta}

    def parity_data(self, image_size: int, channels: int, run_dir=None, validation_data=None,
                    masks=None, representative_data=None, split: str = "val"):
        if run_dir is not None:
            rows = manifest_rows(Path(run_dir), split)
        elif validation_data is not None or representative_data is not None:
            rows = folder_rows(validation_data or representative_data)
        else:
            return None
        return load_pixels(rows, image_size, channels, self.parity_images, seed=1)

    def parity(self, reference, tflite_files: dict, validation):
        pixels, labels = validation
        labels = labels if np.all(labels >= 0) else None
        report = tflite_parity(reference, tflite_files, pixels, labels)
        variants = report["variants"]
        message = f"parity on {len(pixels)} images: " + ", ".join(
            f"{v} {e['agreement'] * 100:.2f} % "
            f"({'no gate' if e['passed'] is None else 'pass' if e['passed'] else 'FAIL'})"
            for v, e in variants.items())
        summary = {v: {"agreement": e["agreement"], "passed": e["passed"]} for v, e in variants.items()}
        return report, summary, message

    def iter_files(self, runtime, paths, masks_dir, explain_dir, batch_size: int):
        return inference.iter_class_records(runtime, paths, explain_dir, batch_size)

    def records_from_server(self, paths, outputs, masks_dir) -> list[dict]:
        return inference.records_from_server(paths, outputs)

    def describe(self, record: dict) -> str:
        return inference.describe(record)

    def write_csv(self, records: list[dict], csv_path) -> None:
        inference.write_class_csv(records, csv_path)

    def csv_header(self) -> list[str]:
        return inference.class_csv_header()

    def csv_row(self, record: dict) -> list:
        return inference.class_csv_row(record)


def _paths_and_labels(rows) -> tuple[list[str], list[int]]:
    return [row["path"] for row in rows], [int(row["label"]) for row in rows]


def _data_path(path: str):
    """A local folder as a Path; a ``scheme://`` one stays a string (Path would drop a slash)."""
    return path if filesystem.is_remote(path) else Path(path)


def _exclude_near_duplicates(records, config: Config, run_dir: Path, roots):
    """Drop every image that is a near-duplicate of one under ``data.exclude_duplicates_of`` and,
    where subjects are known, every image of the subjects those images show (neighbouring slices
    of a patient are not copies but still leak); ``excluded.csv`` lists what was dropped and why."""
    exclude_roots = [_data_path(p) for p in config.data.exclude_duplicates_of]
    references = [r.path for r in discover_images(exclude_roots, require_label=False)]
    if not references:
        raise ValueError("data.exclude_duplicates_of: no images found under "
                         f"{', '.join(config.data.exclude_duplicates_of)}")
    kept, dropped = drop_near_duplicates_of(records, references,
                                                       config.data.group_threshold, run_dir / "cache")
    table, _ = resolve_subjects(config.data.subjects, [*roots, *exclude_roots])
    if table is not None:
        dropped_paths = [row["path"] for row in dropped]
        excluded_subjects = {s for s in table.lookup(references + dropped_paths) if s}
        subjects = table.lookup([r.path for r in kept])
        dropped += [{"path": r.path, "matches": f"subject {s}", "correlation": ""}
                    for r, s in zip(kept, subjects, strict=True) if s in excluded_subjects]
        kept = [r for r, s in zip(kept, subjects, strict=True) if s not in excluded_subjects]
        log(f"excluding whole subjects: {len(excluded_subjects)} subjects of {table.csv_path} "
            "appear among the excluded images")
    with open_csv(run_dir / "excluded.csv", "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "matches", "correlation"])
        writer.writeheader()
        writer.writerows(dropped)
    log(f"excluded {len(dropped)} of {len(records)} images (near-duplicates of the "
        f"{len(references)} images under {', '.join(config.data.exclude_duplicates_of)}, and their "
        f"subjects; listed in {run_dir / 'excluded.csv'}); {len(kept)} remain: {class_counts(kept)}")
    return kept


@dataclass(frozen=True)
class Teacher:
    path: str
    answer: object  # images [N, S, S, C] 0..255 -> probabilities [N, classes], traceable
    image_size: int
    model: keras.Model | None  # a .keras teacher (its weights can start the student)


def load_teacher(path, channels: int) -> Teacher:
    """A classifier to distil from: a .keras file (with the averaging its spec states) or a
    SavedModel (version folder or serving base: its ``predict_pixels`` signature)."""
    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.export.runtimes import load_runtime
    from braintumor_tf.models.tta import with_test_time_augmentation

    runtime = load_runtime(path)  # the checks and errors every surface gives
    if runtime.task != "classification":
        raise ValueError(f"train.teacher {path} is a {runtime.task} model, not a classifier")
    if runtime.channels != channels:
        raise ValueError(f"train.teacher {path} takes {runtime.channels}-channel images, the "
                         f"student {channels} (data.channels)")
    if runtime.kind == "keras":
        model = load_model(runtime.path, compile=False)
        averaging = runtime.spec.averaging if runtime.spec is not None else "none"
        averaged = with_test_time_augmentation(model, averaging or "none")
        answer = keras_teacher(averaged)
    elif runtime.kind == "savedmodel":
        model, answer = None, savedmodel_teacher(runtime.path)
    else:
        raise ValueError(f"train.teacher must be a .keras file or a SavedModel, got {path} "
                         f"({runtime.kind})")
    log(f"distillation: the student learns the answers of {path} ({runtime.image_size} px)")
    return Teacher(str(path), answer, runtime.image_size, model)
