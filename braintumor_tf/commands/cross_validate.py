"""Patient-level K-fold cross-validation: the yardstick recipes are chosen by.

One split of ~170 patients moved 4-8 points between validation and test here, and choices made on
it did not hold on new patients. Every image is held out exactly once instead, by a model that
never saw its patient, and each number comes with a patient-bootstrap interval.

Layout of a CV run directory::

    config.yaml, folds.csv             the fold of every image (whole subjects per fold)
    folds/fold<k>/                     an ordinary, resumable run directory per fold
    folds/fold<k>/out_of_fold.csv      its held-out images' predictions (written last)
    out_of_fold.csv, cv_report.{json,md}, summary.json

Re-running the same command resumes: finished folds are skipped, an interrupted one resumes at
its last finished epoch.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np

from braintumor_tf.commands.run_dir import read_summary, start_run
from braintumor_tf.config import Config
from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.discover import ImageRecord
from braintumor_tf.data.labels_csv import source_names
from braintumor_tf.data.manifest import write_manifest
from braintumor_tf.data.run_split import split_by_subject
from braintumor_tf.data.splits import group_folds
from braintumor_tf.evaluation.cross_validation import (
    OUT_OF_FOLD_NAME,
    cv_report,
    read_out_of_fold,
    write_cv_report,
)
from braintumor_tf.log import log
from braintumor_tf.spec import write_keras_spec
from braintumor_tf.tasks import get_task

FOLDS_FILE = "folds.csv"
FOLD_COLUMNS = ("path", "label", "group", "unit", "subject", "source", "fold")


def _tta_name(mode: str) -> str:
    return OUT_OF_FOLD_NAME.replace(".csv", f"_tta-{mode}.csv")


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / "folds" / f"fold{fold}"


def train_folds(config: Config, run_dir: str | Path, data_dir: Path | None = None,
                publish_dir: str | Path | None = None) -> dict:
    """Train ``data.folds`` models, fold k held out from model k; write every image's out-of-fold
    prediction and the CV report. ``publish_dir``: also copy each fold's out-of-fold CSV there as
    soon as it exists (e.g. under docs/, so a lost run directory loses only weights)."""
    from braintumor_tf.commands.train import train
    from braintumor_tf.training.distribute import worker_role

    if worker_role(config.train.distribute) is not None:
        # Each fold's scoring reads the fold model, which only the chief writes.
        raise ValueError("cross-validation (data.folds) trains on one machine; TF_CONFIG names "
                         "several workers: unset it, or train each fold's recipe without --folds "
                         "on the cluster (docs/DISTRIBUTED.md)")
    folds = config.data.folds
    run_dir, finished = start_run(config, run_dir)
    if finished is not None:
        return finished
    task = get_task(config.task)
    rows = _fold_rows(config, task, run_dir, data_dir)
    log(_describe_folds(rows, folds))
    fold_config = config.replace(**{"data.folds": 0})
    started = time.perf_counter()
    fold_summaries = []
    for fold in range(folds):
        directory = fold_dir(run_dir, fold)
        out_of_fold = directory / OUT_OF_FOLD_NAME
        held_out = [row for row in rows if row["fold"] == fold]
        if out_of_fold.exists():
            log(f"fold {fold + 1}/{folds}: finished ({out_of_fold})")
        else:
            log(f"fold {fold + 1}/{folds}: training on {sum(r['fold'] != fold for r in rows)} "
                f"images, holding out {sum(r['fold'] == fold for r in rows)} -> {directory}")
            # A staged recipe splits in its first stage's directory; the others share it.
            first_stage = (directory / "stages" / fold_config.stage_configs()[0][0]
                           if fold_config.train.stages else directory)
            _write_fold_manifest(rows, fold, first_stage)
            train(fold_config, directory, score_test=False, data_dir=run_dir, keep="last",
                  finish=False)
            task.predict_held_out(fold_config, directory / "model.keras", held_out, out_of_fold,
                                  data_dir=run_dir)
        for mode in config.train.held_out_tta:
            averaged = directory / _tta_name(mode)
            if not averaged.exists():
                log(f"fold {fold + 1}/{folds}: scoring the held-out fold with {mode} averaging")
                task.predict_held_out(fold_config, directory / "model.keras", held_out, averaged,
                                      data_dir=run_dir, tta=mode)
        if publish_dir is not None:
            Path(publish_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy2(out_of_fold, Path(publish_dir) / f"fold{fold}.csv")
            for mode in config.train.held_out_tta:
                shutil.copy2(directory / _tta_name(mode),
                             Path(publish_dir) / f"fold{fold}_tta-{mode}.csv")
        summary_path = directory / "summary.json"
        fold_summaries.append(read_summary(summary_path, move_aside=False) or {})
    if config.data.folds_ensemble:
        _write_ensemble(config, task, run_dir, folds)
    predictions = read_out_of_fold([fold_dir(run_dir, fold) / OUT_OF_FOLD_NAME
                                    for fold in range(folds)])
    _write_rows(run_dir / OUT_OF_FOLD_NAME, predictions)
    report = cv_report(predictions, task=config.task, seed=config.data.split_seed)
    report.update(run=str(run_dir), folds=folds, train_sources=list(config.data.train_sources))
    write_cv_report(report, run_dir)
    for mode in config.train.held_out_tta:
        averaged = read_out_of_fold([fold_dir(run_dir, fold) / _tta_name(mode)
                                     for fold in range(folds)])
        _write_rows(run_dir / _tta_name(mode), averaged)
        tta_report = cv_report(averaged, task=config.task, seed=config.data.split_seed)
        tta_report.update(run=str(run_dir), folds=folds, test_time_augmentation=mode)
        write_cv_report(tta_report, run_dir, suffix=f"_tta-{mode}")
        report["headline"][f"with {mode} averaging"] = tta_report["headline"]
    summary = {"task": config.task, "folds": folds, "images": len(rows),
               "fit_seconds": sum(s.get("fit_seconds", 0.0) for s in fold_summaries),
               "seconds_this_invocation": time.perf_counter() - started,
               "epochs": config.train.epochs, "headline": report["headline"]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"cross-validation finished: {run_dir / 'cv_report.md'}")
    return summary


def _write_ensemble(config: Config, task, run_dir: Path, folds: int) -> None:
    """``model.keras``: the fold models averaged in one graph, what a CV run releases. The last
    fold's manifest becomes the run's (export --run, calibrate and parity read it): its model's
    features feed the OOD guard, fitted on that model's training folds and checked on its
    held-out fold."""
    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.models.ensemble import fold_ensemble

    members = [task.deployable(config, load_model(fold_dir(run_dir, k) / "model.keras"))
               for k in range(folds)]
    ensemble = fold_ensemble(members, name=f"{members[0].name}_ensemble{folds}")
    target = run_dir / "model.keras"
    temporary = run_dir / "model.tmp.keras"
    ensemble.save(temporary)
    write_keras_spec(temporary, task.model_spec(config, ensemble))
    temporary.replace(target)
    shutil.copy2(fold_dir(run_dir, folds - 1) / "split_manifest.csv", run_dir / "split_manifest.csv")
    log(f"fold ensemble of {folds} models: {target} ({ensemble.count_params():,} parameters)")
    task.finish_ensemble(config, run_dir)


def _fold_rows(config: Config, task, run_dir: Path, data_dir: Path | None) -> list[dict]:
    """The fold of every image, computed once and read back on resume (``folds.csv``)."""
    path = run_dir / FOLDS_FILE
    if path.exists():
        rows = read_folds(path)
        log(f"reusing folds from {path} ({len(rows)} images)")
        return rows
    records, subject_roots = task.discover(config, run_dir, data_dir)
    data = config.data
    result, subject_report = split_by_subject(config, run_dir, records, subject_roots)
    labels = np.array([r.label for r in result.records], np.int64)
    folds = group_folds(labels, result.units, data.folds, data.split_seed)
    sources = source_names(result.records)
    rows = [{"path": r.path, "label": int(r.label), "group": int(g), "unit": int(u),
             "subject": s, "source": src, "fold": int(f)}
            for r, g, u, s, src, f in zip(result.records, result.groups, result.units,
                                          result.subjects, sources, folds, strict=True)]
    subject_report.split_units = int(len(np.unique(result.units)))
    (run_dir / "subjects.json").write_text(json.dumps(subject_report.as_dict(), indent=2))
    if result.bad:
        log(f"skipped {len(result.bad)} unreadable files: "
            + "; ".join(f"{b['path']} ({b['reason']})" for b in result.bad[:3]))
    _write_rows(path, rows, FOLD_COLUMNS)
    return rows


def read_folds(path) -> list[dict]:
    with open_csv(path) as handle:
        reader = csv.DictReader(handle)
        missing = set(FOLD_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a folds file, missing columns {sorted(missing)}")
        return [{**row, "label": int(row["label"]), "group": int(row["group"]),
                 "unit": int(row["unit"]), "fold": int(row["fold"])} for row in reader]


def _write_rows(path: Path, rows: list[dict], columns=None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    temporary = path.with_name(path.name + ".tmp")
    with open_csv(temporary, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


def _write_fold_manifest(rows: list[dict], fold: int, directory: Path) -> None:
    """Fold ``fold`` is the validation split (curves only: the fold keeps its last epoch), every
    other fold the training split; an existing manifest is the run's own and is kept."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / "split_manifest.csv"
    if manifest.exists():
        return
    records = [ImageRecord(path=row["path"], label=row["label"], source="") for row in rows]
    write_manifest(manifest, records, [row["group"] for row in rows],
                   ["val" if row["fold"] == fold else "train" for row in rows],
                   subjects=[row["subject"] for row in rows],
                   sources=[row["source"] for row in rows])


def _describe_folds(rows: list[dict], folds: int) -> str:
    parts = []
    for fold in range(folds):
        members = [row for row in rows if row["fold"] == fold]
        units = len({row["unit"] for row in members})
        by_source: dict[str, int] = {}
        for row in members:
            by_source[row["source"]] = by_source.get(row["source"], 0) + 1
        parts.append(f"fold {fold}: {len(members)} images, {units} subjects/groups "
                     f"({', '.join(f'{k} {v}' for k, v in sorted(by_source.items()))})")
    return f"{folds}-fold cross-validation by subject:\n  " + "\n  ".join(parts)


def shifts_out_of_fold(run_dir: str | Path, names: str | None = "all", tta: str = "none",
                       batch_size: int = 32) -> dict:
    """Every fold's model on its held-out images, unshifted and re-rendered by each shift: the
    robustness report of a CV run, out of fold (``shifts_out_of_fold[_tta-MODE].{json,md}``)."""
    from braintumor_tf.evaluation.shift_report import format_shift_report, shift_report_of_parts
    from braintumor_tf.export.runtimes import load_runtime

    run_dir = Path(run_dir)
    if not (run_dir / FOLDS_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a cross-validation run (no {FOLDS_FILE})")
    rows = read_folds(run_dir / FOLDS_FILE)
    folds = max(row["fold"] for row in rows) + 1
    from braintumor_tf.config import load_config

    config = load_config(run_dir / "config.yaml")
    if config.task == "segmentation":
        return _segmentation_shifts_out_of_fold(config, run_dir, rows, folds, names, tta,
                                                batch_size)
    parts = []
    for fold in range(folds):
        model_path = fold_dir(run_dir, fold) / "model.keras"
        if not model_path.is_file():
            raise FileNotFoundError(f"fold {fold} has no model yet ({model_path}): finish the "
                                    "cross-validation first")
        runtime = load_runtime(model_path, batch_size=batch_size, tta=tta)
        runtime.expect_task("classification", "out-of-fold shifts are reported for classifiers")
        held_out = [row for row in rows if row["fold"] == fold]
        parts.append((runtime, [row["path"] for row in held_out], [row["label"] for row in held_out],
                      [row["source"] for row in held_out]))
    report = shift_report_of_parts(parts, names, batch_size)
    report.update(run=str(run_dir), test_time_augmentation=tta)
    suffix = "" if tta == "none" else f"_tta-{tta}"
    (run_dir / f"shifts_out_of_fold{suffix}.json").write_text(json.dumps(report, indent=2))
    (run_dir / f"shifts_out_of_fold{suffix}.md").write_text(format_shift_report(report))
    return report


def _segmentation_shifts_out_of_fold(config, run_dir: Path, rows, folds: int, names, tta: str,
                                     batch_size: int) -> dict:
    """Each fold model's shift report on its held-out slices, pooled over folds (means weighted
    by slices; medians do not pool and are left out)."""
    from braintumor_tf.data.segmentation import training_source
    from braintumor_tf.evaluation.segmentation import (
        format_segmentation_shifts,
        segmentation_shift_report,
    )
    from braintumor_tf.export.runtimes import load_runtime

    source, _ = training_source(config, run_dir)
    reports = []
    for fold in range(folds):
        runtime = load_runtime(fold_dir(run_dir, fold) / "model.keras", batch_size=batch_size, tta=tta)
        paths = [row["path"] for row in rows if row["fold"] == fold]
        reports.append(segmentation_shift_report(runtime, paths, source, names,
                                                 config.segmentation.threshold, batch_size))

    def pooled(entries):
        total = sum(entry["n"] for entry in entries)
        merged = {"n": total, "median_dice": float("nan")}
        for key in ("mean_dice", "fraction_dice_below_0_1", "mean_hd95"):
            values = [(entry[key], entry["n"]) for entry in entries if entry[key] is not None]
            merged[key] = (sum(v * n for v, n in values) / sum(n for _, n in values)
                           if values else None)
        return merged

    report = {"truth": reports[0]["truth"], "models": folds, "run": str(run_dir),
              "test_time_augmentation": tta, "unshifted": pooled([r["unshifted"] for r in reports]),
              "shifts": {}}
    for name in reports[0]["shifts"]:
        entry = pooled([r["shifts"][name] for r in reports])
        entry["kind"] = reports[0]["shifts"][name]["kind"]
        entry["dice_change"] = entry["mean_dice"] - report["unshifted"]["mean_dice"]
        report["shifts"][name] = entry
    suffix = "" if tta == "none" else f"_tta-{tta}"
    (run_dir / f"shifts_out_of_fold{suffix}.json").write_text(json.dumps(report, indent=2))
    (run_dir / f"shifts_out_of_fold{suffix}.md").write_text(format_segmentation_shifts(report))
    return report
