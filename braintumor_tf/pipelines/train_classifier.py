"""Train the tumour classifier: one function from a Config to a finished run directory.

The run directory is the unit of work. Running the same command again resumes
from the last finished epoch (BackupAndRestore) and reuses the written split.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np

from braintumor_tf.config import Config
from braintumor_tf.data import splits as splits_lib
from braintumor_tf.data.discover import CLASS_NAMES, class_counts, discover_images
from braintumor_tf.data.phantoms import write_phantom_dataset
from braintumor_tf.data.pipeline import classification_dataset
from braintumor_tf.data.subjects import resolve_subjects
from braintumor_tf.export.savedmodel import export_classifier
from braintumor_tf.models.classifier import build_classifier
from braintumor_tf.models.unet import count_macs_nested
from braintumor_tf.pipelines.evaluate import evaluate_records
from braintumor_tf.pipelines.run_dir import (
    load_initial_weights,
    setup_training,
    start_run,
    write_learning_rate_plot,
)
from braintumor_tf.pipelines.run_dir import log as _log
from braintumor_tf.pipelines.split_data import split_and_write_manifest, subjects_summary
from braintumor_tf.plots import plot_history
from braintumor_tf.training.callbacks import read_history, run_callbacks
from braintumor_tf.training.optimizers import make_optimizer
from braintumor_tf.training.schedules import make_schedule


def prepare_data(config: Config, run_dir: Path):
    """Discover images, drop broken ones and split by duplicate groups (or reuse the manifest)."""
    manifest_path = run_dir / "split_manifest.csv"
    if manifest_path.exists():
        _log(f"reusing split from {manifest_path}")
        rows = splits_lib.read_manifest(manifest_path)
        return rows
    if config.data.root is None:
        root = run_dir / "data" / "phantoms"
        _log(f"no data.root given: generating the built-in phantom data set in {root}")
        write_phantom_dataset(root, config.data.phantom_images_per_class,
                              config.data.phantom_image_size, config.data.phantom_seed)
        roots = [root]
    else:
        roots = [Path(p) for p in str(config.data.root).split(",")]
    records = discover_images(roots)
    _log(f"found {len(records)} labelled images under {', '.join(map(str, roots))}: "
         f"{class_counts(records)}")
    if config.data.exclude_duplicates_of:
        records = _exclude_near_duplicates(records, config, run_dir, roots)
    # Phantoms have no patients; never pick up a subjects.csv from the run directory's parents.
    subject_roots = roots if config.data.root is not None else []
    return split_and_write_manifest(config, run_dir, records, subject_roots)


def _exclude_near_duplicates(records, config: Config, run_dir: Path, roots):
    """Drop every image that is a near-duplicate of one under ``data.exclude_duplicates_of`` and,
    where subjects are known, every image of the subjects those images show (neighbouring slices
    of a patient are not copies but still leak); ``excluded.csv`` lists what was dropped and why."""
    import csv

    exclude_roots = [Path(p) for p in config.data.exclude_duplicates_of]
    references = [r.path for r in discover_images(exclude_roots, require_label=False)]
    if not references:
        raise ValueError("data.exclude_duplicates_of: no images found under "
                         f"{', '.join(config.data.exclude_duplicates_of)}")
    kept, dropped = splits_lib.drop_near_duplicates_of(records, references,
                                                       config.data.group_threshold, run_dir / "cache")
    table, _ = resolve_subjects(config.data.subjects, [*roots, *exclude_roots])
    if table is not None:
        dropped_paths = [row["path"] for row in dropped]
        excluded_subjects = {s for s in table.lookup(references + dropped_paths) if s}
        subjects = table.lookup([r.path for r in kept])
        dropped += [{"path": r.path, "matches": f"subject {s}", "correlation": ""}
                    for r, s in zip(kept, subjects, strict=True) if s in excluded_subjects]
        kept = [r for r, s in zip(kept, subjects, strict=True) if s not in excluded_subjects]
        _log(f"excluding whole subjects: {len(excluded_subjects)} subjects of {table.csv_path} "
             "appear among the excluded images")
    with open(run_dir / "excluded.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "matches", "correlation"])
        writer.writeheader()
        writer.writerows(dropped)
    _log(f"excluded {len(dropped)} of {len(records)} images (near-duplicates of the "
         f"{len(references)} images under {', '.join(config.data.exclude_duplicates_of)}, and their "
         f"subjects; listed in {run_dir / 'excluded.csv'}); {len(kept)} remain: {class_counts(kept)}")
    return kept


def _split_arrays(rows, name, max_per_group=None, seed=0):
    chosen = [row for row in rows if row["split"] == name]
    if max_per_group is not None:
        chosen = cap_per_group(chosen, max_per_group, seed)
    return [row["path"] for row in chosen], [int(row["label"]) for row in chosen]


def cap_per_group(rows, max_per_group: int, seed: int = 0):
    """At most ``max_per_group`` copies of each duplicate group, chosen at random but reproducibly.

    Groups of dozens of copies of one slice otherwise dominate an epoch; capping spends the
    compute on distinct slices instead.
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    taken: dict[str, int] = {}
    keep = []
    for index in order:
        group = str(rows[index]["group"])
        if taken.get(group, 0) < max_per_group:
            taken[group] = taken.get(group, 0) + 1
            keep.append(index)
    return [rows[index] for index in sorted(keep)]


def train_classifier(config: Config, run_dir: str | Path) -> dict:
    """Train, keep the best checkpoint, export, and evaluate on the held-out test split."""
    run_dir, finished = start_run(config, run_dir)
    if finished is not None:
        return finished
    policy, strategy = setup_training(config)

    rows = prepare_data(config, run_dir)
    train_paths, train_labels = _split_arrays(rows, "train", config.data.train_max_per_group,
                                              config.data.split_seed)
    val_paths, val_labels = _split_arrays(rows, "val")
    test_paths, test_labels = _split_arrays(rows, "test")
    _log(f"split: {len(train_paths)} train / {len(val_paths)} val / {len(test_paths)} test "
         f"images (group-aware: {config.data.group_aware})")
    if not train_paths or not val_paths:
        raise ValueError("the split left no training or validation images; add data or "
                         "change data.val_fraction / data.test_fraction")

    data, train = config.data, config.train
    common = dict(image_size=data.image_size, channels=data.channels, batch_size=train.batch_size,
                  num_classes=config.model.num_classes, cache=data.cache)
    train_dataset = classification_dataset(train_paths, train_labels, training=True,
                                           augment_config=data.augment, seed=train.seed, **common)
    val_dataset = classification_dataset(val_paths, val_labels, training=False, **common)
    steps_per_epoch = train.steps_per_epoch or int(np.ceil(len(train_paths) / train.batch_size))
    if train.steps_per_epoch:
        train_dataset = train_dataset.repeat()
    total_steps = steps_per_epoch * train.epochs

    with strategy.scope():
        model = build_classifier(config.model, data.image_size, data.channels)
        if train.initial_weights:
            load_initial_weights(model, train.initial_weights)
        schedule = make_schedule(config.schedule, config.optimizer.learning_rate, total_steps)
        optimizer = make_optimizer(config.optimizer, schedule)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            run_eagerly=train.run_eagerly,
        )
    macs = count_macs_nested(model)
    summary = {"parameters": int(model.count_params()), "macs_per_image": macs,
               "precision_policy": policy, "train_images": len(train_paths),
               "val_images": len(val_paths), "test_images": len(test_paths),
               "steps_per_epoch": steps_per_epoch, "epochs": train.epochs,
               "subjects": subjects_summary(run_dir)}
    _log(f"model {model.name}: {summary['parameters']:,} parameters, "
         f"{macs / 1e9:.3f} GMAC per image; {steps_per_epoch} steps/epoch x {train.epochs} epochs")
    write_learning_rate_plot(schedule, total_steps, steps_per_epoch, run_dir)

    callbacks = run_callbacks(run_dir, train.batch_size, train.monitor)
    start = time.perf_counter()
    model.fit(train_dataset, validation_data=val_dataset, epochs=train.epochs,
              steps_per_epoch=steps_per_epoch if train.steps_per_epoch else None,
              callbacks=callbacks, verbose=train.verbose)
    summary["fit_seconds"] = time.perf_counter() - start

    history = read_history(run_dir / "history.csv")
    plot_history(history, run_dir / "training_curves.png")
    best = keras.models.load_model(run_dir / "best.keras") if (run_dir / "best.keras").exists() \
        else model
    best.save(run_dir / "model.keras")
    if config.model.name == "resnet50":
        from braintumor_tf.models.resnet50_classifier import save_encoder_weights

        summary["encoder_weights_file"] = save_encoder_weights(best, run_dir / "encoder.weights.h5")
        _log(f"encoder weights for the segmenter: {summary['encoder_weights_file']} "
             "(segmentation.encoder_weights)")

    if test_paths:
        report = evaluate_records(run_dir / "model.keras", test_paths, test_labels,
                                  out_dir=run_dir / "test", batch_size=train.batch_size)
        summary["test"] = {k: report[k] for k in ("n", "accuracy", "macro_f1", "roc_auc_ovr",
                                                   "ece")}
    export_dir = run_dir / "savedmodel"
    if export_dir.exists():
        import shutil

        shutil.rmtree(export_dir)
    export_classifier(best, export_dir, CLASS_NAMES)
    _log(f"saved {run_dir / 'model.keras'} and SavedModel {export_dir}")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
