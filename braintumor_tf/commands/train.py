"""Train any task: one function from a Config to a finished run directory.

The run directory is the unit of work. Running the same command again resumes from the last
finished epoch (BackupAndRestore) and reuses the written split; a finished run (summary.json)
is returned as it is.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from braintumor_tf import faults
from braintumor_tf.commands.run_dir import (
    SPLIT_FILES,
    end_worker_fit,
    load_initial_weights,
    prepare_run_data,
    recover_best_checkpoint,
    release_workers,
    setup_training,
    start_run,
    write_learning_rate_plot,
)
from braintumor_tf.config import Config
from braintumor_tf.custom_objects import load_model
from braintumor_tf.data.datasets import EpochPlan
from braintumor_tf.data.run_split import rows_of_split, subjects_summary
from braintumor_tf.log import log
from braintumor_tf.models.macs import count_macs_nested
from braintumor_tf.plots import plot_history
from braintumor_tf.spec import write_keras_spec
from braintumor_tf.tasks import get_task
from braintumor_tf.training.callbacks import read_history, run_callbacks
from braintumor_tf.training.distribute import prepare_model
from braintumor_tf.training.optimizers import make_optimizer
from braintumor_tf.training.schedules import make_schedule

# Keras says these on every epoch of a finite, already shuffled tf.data input: noise, not news.
warnings.filterwarnings("ignore", message="Your input ran out of data")
warnings.filterwarnings("ignore", message="`shuffle=True` was passed")


def train(config: Config, run_dir: str | Path, score_test: bool = True,
          data_dir: Path | None = None, keep: str = "best", finish: bool = True) -> dict:
    """Split, train, keep the best checkpoint by ``train.monitor``, then let the task score the
    test split and write its exports. ``train.stages``: see ``train_stages``; ``data_dir``: where
    generated data lives when not in ``run_dir``. ``keep="last"``: model.keras is the last epoch's
    weights (a cross-validation fold, whose validation images are its held-out fold, must not pick
    its epoch on them); ``finish=False``: no test scoring, guard or exports."""
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    if config.data.folds:
        raise ValueError("data.folds asks for cross-validation: run it with commands."
                         "cross_validate.train_folds (train --folds), not train()")
    if config.train.stages:
        return train_stages(config, run_dir, keep=keep, finish=finish, data_dir=data_dir)
    task = get_task(config.task)
    run_dir, finished = start_run(config, run_dir)
    if finished is not None:
        return finished
    recover_best_checkpoint(run_dir)
    policy, strategy = setup_training(config)

    data = prepare_run_data(task, config, run_dir, data_dir, strategy)
    train_rows = rows_of_split(data.rows, "train", config.data.train_max_per_group,
                               config.data.split_seed, sources=config.data.train_sources)
    val_rows, test_rows = rows_of_split(data.rows, "val"), rows_of_split(data.rows, "test")
    counts = {"train": len(train_rows), "val": len(val_rows), "test": len(test_rows)}
    log(task.describe_split(data, counts))
    if not train_rows or not val_rows:
        raise ValueError("the split left no training or validation images; add data or "
                         "change data.val_fraction / data.test_fraction")

    train_settings = config.train
    steps_per_epoch = train_settings.steps_per_epoch or int(
        np.ceil(len(train_rows) / train_settings.batch_size))
    plan = (EpochPlan(train_settings.epochs, steps_per_epoch,
                      repeat=bool(train_settings.steps_per_epoch))
            if train_settings.deterministic else None)
    train_dataset, val_dataset = task.datasets(config, data, train_rows, val_rows, plan=plan)
    if train_settings.steps_per_epoch and plan is None:
        train_dataset = train_dataset.repeat()
    total_steps = steps_per_epoch * train_settings.epochs

    with strategy.scope():
        model = prepare_model(task.build_model(config), strategy)
        if train_settings.initial_weights:
            load_initial_weights(model, train_settings.initial_weights)
        schedule = make_schedule(config.schedule, config.optimizer.learning_rate, total_steps)
        model.compile(optimizer=make_optimizer(config.optimizer, schedule), loss=task.loss(config),
                      metrics=task.metrics(config), run_eagerly=train_settings.run_eagerly)
    macs = count_macs_nested(task.deployable(config, model))  # per whole image, not per crop
    summary = {**task.summary_fields(config, data), "parameters": int(model.count_params()),
               "macs_per_image": macs, "precision_policy": policy,
               "train_images": counts["train"], "val_images": counts["val"],
               "test_images": counts["test"], "steps_per_epoch": steps_per_epoch,
               "epochs": train_settings.epochs, "subjects": subjects_summary(run_dir)}
    log(f"model {model.name}: {summary['parameters']:,} parameters, {macs / 1e9:.3f} GMAC per image; "
        f"{steps_per_epoch} steps/epoch x {train_settings.epochs} epochs")
    write_learning_rate_plot(schedule, total_steps, steps_per_epoch, run_dir)

    start = time.perf_counter()
    # keep="last" needs the last weights, which only the backup restored by fit holds.
    if keep == "best" and _fit_already_finished(run_dir, train_settings.epochs):
        # A run stopped after its last epoch by a version that deleted the backup at the end of
        # fit: train nothing again, go on to scoring.
        log(f"{run_dir}: history.csv holds all {train_settings.epochs} epochs and best.keras exists;"
            " scoring the test split")
    else:
        _fit(model, train_dataset, val_dataset, train_settings, steps_per_epoch, plan, run_dir)
    summary["fit_seconds"] = time.perf_counter() - start
    if (worker_summary := end_worker_fit(model, strategy, run_dir, summary)) is not None:
        return worker_summary  # not the chief: the chief scores and exports

    plot_history(read_history(run_dir / "history.csv"), run_dir / "training_curves.png")
    best_path = run_dir / "best.keras"
    if keep == "last":
        best = task.deployable(config, model)
    else:
        best = task.deployable(config, load_model(best_path, compile=True)
                               if best_path.exists() else model)
    best.save(run_dir / "model.keras")
    write_keras_spec(run_dir / "model.keras", task.model_spec(config, best))
    faults.reached("finish")
    if finish:
        summary.update(task.finish(config, run_dir, best, data, test_rows if score_test else []))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # finished: summary.json says so
    release_workers(strategy, run_dir)
    return summary


def _fit(model, train_dataset, val_dataset, train_settings, steps_per_epoch, plan, run_dir):
    # An epoch-keyed set is one iterator over all epochs: Keras needs the steps to split it.
    fit_steps = steps_per_epoch if (train_settings.steps_per_epoch or plan) else None
    model.fit(train_dataset, validation_data=val_dataset, epochs=train_settings.epochs,
              steps_per_epoch=fit_steps,
              callbacks=run_callbacks(run_dir, train_settings.batch_size, train_settings.monitor,
                                      plan.start_epoch if plan else None),
              verbose=train_settings.verbose)


def _fit_already_finished(run_dir: Path, epochs: int) -> bool:
    if (run_dir / "backup").exists() or not (run_dir / "best.keras").exists():
        return False
    history = read_history(run_dir / "history.csv")
    return len(history.get("loss", [])) >= epochs


# What a staged run shows at its top level, copied from its last stage: the model, its split and
# test report, so ``export --run``, ``evaluate`` and ``calibrate`` treat it like a one-stage run.
STAGE_OUTPUTS = ("model.keras", "best.keras", "split_manifest.csv", "split.json", "subjects.json",
                 "bad_files.csv", "excluded.csv", "ood_guard.npz", "ood_guard.json",
                 "encoder.weights.h5", "test", "savedmodel")


def train_stages(config: Config, run_dir: str | Path, keep: str = "best",
                 finish: bool = True, data_dir: Path | None = None) -> dict:
    """One run, several trainings: stage k starts from stage k-1's best checkpoint, all share the
    first stage's split (so validation never sees a training subject), and only the last scores
    the test split. Each stage is an ordinary run directory under ``stages/``, so an interrupted
    run resumes inside the stage it stopped in and finished stages are not trained again.
    ``keep="last"`` (a cross-validation fold): every stage hands on its last epoch's weights."""
    run_dir, finished = start_run(config, run_dir)
    if finished is not None:
        return finished
    stages = config.stage_configs()
    previous, stage_summaries = None, []
    for index, (name, stage_config) in enumerate(stages):
        stage_dir = run_dir / "stages" / name
        if previous is not None:
            handed_on = previous / ("best.keras" if keep == "best" else "model.keras")
            stage_config = stage_config.replace(**{"train.initial_weights": str(handed_on)})
            _share_split(previous, stage_dir)
        last = index == len(stages) - 1
        log(f"stage {index + 1}/{len(stages)} ({name}): {stage_config.data.image_size} px, "
            f"{stage_config.train.epochs} epochs -> {stage_dir}")
        summary = train(stage_config, stage_dir, score_test=last, data_dir=data_dir or run_dir,
                        keep=keep, finish=finish)
        stage_summaries.append({"name": name, "run_dir": str(stage_dir), **summary})
        previous = stage_dir
    for name in STAGE_OUTPUTS:
        source, target = previous / name, run_dir / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        elif source.is_file():
            shutil.copy2(source, target)
    final = dict(stage_summaries[-1])
    final.update(stages=stage_summaries, epochs=sum(s["epochs"] for s in stage_summaries),
                 fit_seconds=sum(s.get("fit_seconds", 0.0) for s in stage_summaries))
    (run_dir / "summary.json").write_text(json.dumps(final, indent=2))
    log(f"staged run finished: {run_dir / 'model.keras'} (from stage {previous.name})")
    return final


def _share_split(previous: Path, stage_dir: Path) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FILES:
        if (previous / name).is_file() and not (stage_dir / name).exists():
            shutil.copy2(previous / name, stage_dir / name)
