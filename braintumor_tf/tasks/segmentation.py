"""The tumour segmenter as a task: images with COCO shapes or mask files, ResNet50-UNet, Dice.

The held-out test split is scored against every truth that exists for it (COCO annotations,
expert masks), because the two disagree a lot on the public data (its "polygons" are boxes).
"""

from __future__ import annotations

from pathlib import Path

import keras

from braintumor_tf.config import Config
from braintumor_tf.data.datasets import segmentation_dataset
from braintumor_tf.data.run_split import reuse_split, split_and_write_manifest
from braintumor_tf.data.segmentation import training_source
from braintumor_tf.data.splits import SEGMENTATION_LABELS, segmentation_records
from braintumor_tf.evaluation.segmentation import evaluate_segmentation_images, evaluate_segmenter
from braintumor_tf.export.parity import segmentation_parity
from braintumor_tf.export.savedmodel import export_segmenter
from braintumor_tf.export.validation_data import segmenter_validation
from braintumor_tf.inference import segmentation as inference
from braintumor_tf.log import log
from braintumor_tf.models.unet import build_unet
from braintumor_tf.spec import spec_for
from braintumor_tf.tasks.base import Task, TaskData, training_data_summary
from braintumor_tf.training.losses import DiceCoefficient, make_segmentation_loss

TEST_SUMMARY_KEYS = ("n", "vs_annotations", "vs_masks")


class SegmentationTask(Task):
    name = "segmentation"
    calibration_images = 32
    parity_images = 100
    writes_masks = True

    def prepare_data(self, config: Config, run_dir: Path, data_dir: Path | None = None) -> TaskData:
        """Split (or reuse the manifest): the given split folders, or by subject and duplicate
        group over all images. Groups are computed either way, for the bad-file check and so the
        log shows how many units straddle the published folders."""
        source, targets = training_source(config, data_dir or run_dir)
        extras = {"source": source, "targets": targets}
        rows = reuse_split(run_dir)
        if rows is not None:
            return TaskData(rows, extras)
        records, _ = self.discover(config, run_dir, data_dir, (source, targets))
        folder_splits = None
        if config.segmentation.use_split_folders and source.has_split_folders:
            folder_splits = dict(zip(source.image_paths, source.folder_splits, strict=True))
        roots = [config.data.root] if config.data.root is not None else []
        rows = split_and_write_manifest(config, run_dir, records, roots,
                                        class_names=SEGMENTATION_LABELS,
                                        folder_splits=folder_splits)
        return TaskData(rows, extras)

    def discover(self, config: Config, run_dir: Path, data_dir: Path | None = None,
                 source_and_targets=None):
        """(records labelled 1 where the slice shows a tumour, folders where a subjects.csv is
        looked for)."""
        source, targets = source_and_targets or training_source(config, data_dir or run_dir)
        images = source.images_with(targets)
        records = segmentation_records(images, source.has_tumour(images, targets),
                                       source=str(config.data.root or "phantoms"))
        return records, [config.data.root] if config.data.root is not None else []

    def predict_held_out(self, config: Config, model_path: Path, rows: list[dict], out_path: Path,
                         data_dir: Path | None = None, tta: str = "none"):
        """A cross-validation fold's held-out slices scored by its model (``tta``: averaged over
        those views) at each slice's own size (vs the expert masks when given, else the
        annotations): Dice, HD95 and tumour size per slice, with its fold, subject and source."""
        from braintumor_tf.evaluation.segmentation_cv import write_segmentation_out_of_fold
        from braintumor_tf.export.runtimes import load_runtime

        source, _ = training_source(config, data_dir or out_path.parent)
        runtime = load_runtime(model_path, batch_size=config.train.batch_size, tta=tta)
        scratch = out_path.parent / ("held_out" if tta == "none" else f"held_out_tta-{tta}")
        report = evaluate_segmentation_images(
            runtime, [row["path"] for row in rows], source, out_dir=scratch,
            threshold=config.segmentation.threshold, batch_size=config.train.batch_size,
            verbose=False)
        truth = "vs_masks" if "vs_masks" in report else "vs_annotations"
        log(f"held-out fold: mean Dice {report[truth]['mean_dice']:.4f} ({truth}) on "
            f"{report[truth]['n']} slices")
        write_segmentation_out_of_fold(rows, scratch / "predictions.csv", truth, out_path)

    def finish_ensemble(self, config: Config, run_dir: Path) -> None:
        """Nothing to fit: a segmenter has no guard."""

    def describe_split(self, data: TaskData, counts: dict[str, int]) -> str:
        return f"targets: {data.extras['targets']}; {super().describe_split(data, counts)}"

    def datasets(self, config: Config, data: TaskData, train_rows, val_rows, plan=None):
        source, targets = data.extras["source"], data.extras["targets"]
        settings = dict(image_size=config.data.image_size, channels=config.data.channels,
                        batch_size=config.train.batch_size, cache=config.data.cache,
                        seed=config.train.seed)
        train_paths = [row["path"] for row in train_rows]
        val_paths = [row["path"] for row in val_rows]
        train = segmentation_dataset(train_paths, source.dataset_masks(train_paths, targets),
                                     training=True, augment=config.segmentation.augment,
                                     plan=plan, crop=config.segmentation.train_crop,
                                     crop_tumour_fraction=config.segmentation.crop_tumour_fraction,
                                     **settings)
        val = segmentation_dataset(val_paths, source.dataset_masks(val_paths, targets),
                                   training=False, **settings)
        return train, val

    def build_model(self, config: Config, any_size: bool | None = None):
        """``any_size`` (default: when training on crops): spatial dimensions left open, so one
        set of weights trains on crops and validates on whole images."""
        seg = config.segmentation
        if any_size is None:
            any_size = seg.train_crop is not None
        return build_unet(config.data.image_size, config.data.channels, seg.encoder,
                          seg.encoder_weights, seg.decoder_filters, seg.freeze_encoder,
                          encoder_bn_momentum=seg.encoder_bn_momentum, any_size=any_size,
                          intensity=seg.intensity)

    def deployable(self, config: Config, model):
        """Exports and runtimes read the input size off the model: a crop-trained model is
        rebuilt at data.image_size with the same weights."""
        if model.input_shape[1] is not None:
            return model
        fixed = self.build_model(config, any_size=False)
        fixed.set_weights(model.get_weights())
        return fixed

    def loss(self, config: Config):
        return make_segmentation_loss(config.segmentation.loss)

    def model_spec(self, config: Config, model):
        return spec_for(self.name, ("tumour",), model.input_shape[1], model.input_shape[3],
                        intensity=config.segmentation.intensity,
                        threshold=config.segmentation.threshold,
                        training_data=training_data_summary(config))

    def metrics(self, config: Config) -> list:
        threshold = config.segmentation.threshold
        return [DiceCoefficient(threshold, name="dice"),
                keras.metrics.BinaryIoU(target_class_ids=[1], threshold=threshold, name="iou")]

    def summary_fields(self, config: Config, data: TaskData) -> dict:
        return {"task": "segmentation", "targets": data.extras["targets"],
                "encoder": config.segmentation.encoder,
                "encoder_weights": config.segmentation.encoder_weights,
                "initial_weights": config.train.initial_weights}

    def finish(self, config: Config, run_dir: Path, best_model, data: TaskData, test_rows) -> dict:
        log(f"saved {run_dir / 'model.keras'}")
        if not test_rows:
            return {}
        from braintumor_tf.export.runtimes import load_runtime

        runtime = load_runtime(run_dir / "model.keras", batch_size=config.train.batch_size)
        report = evaluate_segmentation_images(
            runtime, [row["path"] for row in test_rows], data.extras["source"],
            out_dir=run_dir / "test", threshold=config.segmentation.threshold,
            batch_size=config.train.batch_size)
        return {"test": {key: report[key] for key in TEST_SUMMARY_KEYS if key in report}}

    def evaluate(self, runtime, data_paths, **options) -> dict:
        return evaluate_segmenter(runtime, data_paths, **options)

    def export_savedmodel(self, model, target: Path, tta: str, threshold: float,
                          spec=None) -> tuple[Path, dict]:
        return (export_segmenter(model, target, threshold=threshold, tta=tta, spec=spec),
                {"task": "segmentation", "test_time_augmentation": tta, "threshold": threshold})

    def parity_data(self, image_size: int, channels: int, run_dir=None, validation_data=None,
                    masks=None, representative_data=None, split: str = "val"):
        return segmenter_validation(image_size, channels, self.parity_images, run_dir,
                                    validation_data, masks, representative_data, split=split)

    def parity(self, reference, tflite_files: dict, validation):
        pixels, truth = validation
        report = segmentation_parity(reference, tflite_files, pixels, truth)
        variants = report["variants"]
        message = (f"parity on {len(pixels)} images ({'with' if truth is not None else 'without'} "
                   "truth masks): " + ", ".join(
                       f"{v} Dice vs Keras {e['dice_vs_reference']:.4f} "
                       f"({'pass' if e['passed'] else 'FAIL'})" for v, e in variants.items()))
        summary = {v: {"dice_vs_reference": e["dice_vs_reference"],
                       "dice_delta_vs_truth": e["dice_delta_vs_truth"], "passed": e["passed"]}
                   for v, e in variants.items()}
        return report, summary, message

    def iter_files(self, runtime, paths, masks_dir, explain_dir, batch_size: int):
        return inference.iter_mask_records(runtime, paths, masks_dir, explain_dir, batch_size)

    def records_from_server(self, paths, outputs, masks_dir) -> list[dict]:
        return inference.records_from_server(paths, outputs, masks_dir)

    def describe(self, record: dict) -> str:
        return inference.describe(record)

    def write_csv(self, records: list[dict], csv_path) -> None:
        inference.write_segment_csv(records, csv_path)

    def csv_header(self) -> list[str]:
        return list(inference.SEGMENT_CSV_COLUMNS)

    def csv_row(self, record: dict) -> list:
        return inference.segment_csv_row(record)
