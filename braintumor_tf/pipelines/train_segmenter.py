"""Train the tumour segmenter (ResNet50-UNet): one function from a Config to a finished run directory.

Same run-directory contract as the classifier (pipelines/run_dir.py): re-running resumes from the
last finished epoch and reuses the written split. The held-out test split is scored against every
truth that exists for it (COCO annotations, expert masks), because the two disagree a lot on the
public data (its "polygons" are boxes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np

from braintumor_tf.config import Config
from braintumor_tf.data import splits as splits_lib
from braintumor_tf.data.phantoms import write_phantom_dataset
from braintumor_tf.data.pipeline import segmentation_dataset
from braintumor_tf.data.segmentation import SegmentationSource, find_segmentation_images
from braintumor_tf.models.unet import build_resnet50_unet, count_macs_nested
from braintumor_tf.pipelines.evaluate_segmenter import evaluate_segmentation_images
from braintumor_tf.pipelines.run_dir import (
    load_initial_weights,
    log,
    setup_training,
    start_run,
    write_learning_rate_plot,
)
from braintumor_tf.pipelines.split_data import split_and_write_manifest, subjects_summary
from braintumor_tf.pipelines.train_classifier import cap_per_group
from braintumor_tf.plots import plot_history
from braintumor_tf.training.callbacks import read_history, run_callbacks
from braintumor_tf.training.losses import DiceCoefficient, make_segmentation_loss
from braintumor_tf.training.optimizers import make_optimizer
from braintumor_tf.training.schedules import make_schedule


def segmentation_source(config: Config, run_dir: Path) -> tuple[SegmentationSource, str]:
    """The images and the target kind to train on; ``data.root: null`` means phantoms with masks."""
    seg = config.segmentation
    if config.data.root is None:
        root, masks = run_dir / "data" / "phantoms", run_dir / "data" / "phantom_masks"
        if not root.exists():
            log(f"no data.root given: generating the built-in phantom data set (with masks) in {root}")
        write_phantom_dataset(root, config.data.phantom_images_per_class,
                              config.data.phantom_image_size, config.data.phantom_seed,
                              masks_root=masks)
        return find_segmentation_images(root, masks, log=log), "masks"
    source = find_segmentation_images(config.data.root, seg.mask_root, log=log)
    return source, seg.targets


def prepare_segmentation_data(config: Config, run_dir: Path, source: SegmentationSource,
                              targets: str) -> list[dict]:
    """Split (or reuse the manifest): the given split folders, or group-aware over all images.

    Duplicate groups are computed either way, for the bad-file check and so the manifest shows
    how many groups straddle the published folders.
    """
    manifest_path = run_dir / "split_manifest.csv"
    if manifest_path.exists():
        log(f"reusing split from {manifest_path}")
        return splits_lib.read_manifest(manifest_path)
    images = source.images_with(targets)
    records = splits_lib.segmentation_records(images, source.has_tumour(images, targets),
                                              source=str(config.data.root or "phantoms"))
    folder_splits = None
    if config.segmentation.use_split_folders and source.has_split_folders:
        folder_splits = dict(zip(source.image_paths, source.folder_splits, strict=True))
    roots = [config.data.root] if config.data.root is not None else []
    return split_and_write_manifest(config, run_dir, records, roots,
                                    class_names=splits_lib.SEGMENTATION_LABELS,
                                    folder_splits=folder_splits)


def build_segmenter(config: Config) -> keras.Model:
    """Built apart from compiling: the schedule needs the run's step count (compile_segmenter)."""
    seg = config.segmentation
    return build_resnet50_unet(config.data.image_size, config.data.channels, seg.encoder_weights,
                               seg.decoder_filters, seg.freeze_encoder,
                               encoder_bn_momentum=seg.encoder_bn_momentum)


def compile_segmenter(model: keras.Model, config: Config, total_steps: int):
    """Returns the schedule so the run can plot it."""
    schedule = make_schedule(config.schedule, config.optimizer.learning_rate, total_steps)
    model.compile(
        optimizer=make_optimizer(config.optimizer, schedule),
        loss=make_segmentation_loss(config.segmentation.loss),
        metrics=[DiceCoefficient(config.segmentation.threshold, name="dice"),
                 keras.metrics.BinaryIoU(target_class_ids=[1], threshold=config.segmentation.threshold,
                                         name="iou")],
        run_eagerly=config.train.run_eagerly,
    )
    return schedule


def _split_paths(rows, name, max_per_group=None, seed=0) -> list[str]:
    chosen = [row for row in rows if row["split"] == name]
    if max_per_group is not None:
        chosen = cap_per_group(chosen, max_per_group, seed)
    return [row["path"] for row in chosen]


def train_segmenter(config: Config, run_dir: str | Path) -> dict:
    """Train, keep the best checkpoint by ``train.monitor`` (val_dice), score the test split."""
    if config.task != "segmentation":
        raise ValueError(f"train_segmenter needs task: segmentation, got {config.task!r}")
    run_dir, finished = start_run(config, run_dir)
    if finished is not None:
        return finished
    policy, strategy = setup_training(config)

    source, targets = segmentation_source(config, run_dir)
    rows = prepare_segmentation_data(config, run_dir, source, targets)
    data, train = config.data, config.train
    train_paths = _split_paths(rows, "train", data.train_max_per_group, data.split_seed)
    val_paths, test_paths = _split_paths(rows, "val"), _split_paths(rows, "test")
    log(f"targets: {targets}; split: {len(train_paths)} train / {len(val_paths)} val / "
        f"{len(test_paths)} test images")
    if not train_paths or not val_paths:
        raise ValueError("the split left no training or validation images; add data or "
                         "change data.val_fraction / data.test_fraction")

    common = dict(image_size=data.image_size, channels=data.channels, batch_size=train.batch_size,
                  cache=data.cache, seed=train.seed)
    train_dataset = segmentation_dataset(train_paths, source.dataset_masks(train_paths, targets),
                                         training=True, augment=config.segmentation.augment, **common)
    val_dataset = segmentation_dataset(val_paths, source.dataset_masks(val_paths, targets),
                                       training=False, **common)
    steps_per_epoch = train.steps_per_epoch or int(np.ceil(len(train_paths) / train.batch_size))
    if train.steps_per_epoch:
        train_dataset = train_dataset.repeat()
    total_steps = steps_per_epoch * train.epochs

    with strategy.scope():
        model = build_segmenter(config)
        if train.initial_weights:
            load_initial_weights(model, train.initial_weights)
        schedule = compile_segmenter(model, config, total_steps)
    macs = count_macs_nested(model)
    summary = {"task": "segmentation", "targets": targets, "parameters": int(model.count_params()),
               "macs_per_image": macs, "precision_policy": policy,
               "encoder_weights": config.segmentation.encoder_weights,
               "initial_weights": train.initial_weights,
               "train_images": len(train_paths), "val_images": len(val_paths),
               "test_images": len(test_paths), "steps_per_epoch": steps_per_epoch,
               "epochs": train.epochs, "subjects": subjects_summary(run_dir)}
    log(f"model {model.name}: {summary['parameters']:,} parameters, {macs / 1e9:.3f} GMAC per image; "
        f"{steps_per_epoch} steps/epoch x {train.epochs} epochs")
    write_learning_rate_plot(schedule, total_steps, steps_per_epoch, run_dir)

    start = time.perf_counter()
    model.fit(train_dataset, validation_data=val_dataset, epochs=train.epochs,
              steps_per_epoch=steps_per_epoch if train.steps_per_epoch else None,
              callbacks=run_callbacks(run_dir, train.batch_size, train.monitor),
              verbose=train.verbose)
    summary["fit_seconds"] = time.perf_counter() - start

    plot_history(read_history(run_dir / "history.csv"), run_dir / "training_curves.png")
    best = keras.models.load_model(run_dir / "best.keras") if (run_dir / "best.keras").exists() \
        else model
    best.save(run_dir / "model.keras")
    log(f"saved {run_dir / 'model.keras'}")

    if test_paths:
        from braintumor_tf.export.runtimes import load_runtime

        runtime = load_runtime(run_dir / "model.keras", batch_size=train.batch_size)
        report = evaluate_segmentation_images(
            runtime, test_paths, source, out_dir=run_dir / "test",
            threshold=config.segmentation.threshold, batch_size=train.batch_size)
        summary["test"] = {key: report[key] for key in ("n", "vs_annotations", "vs_masks")
                           if key in report}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
