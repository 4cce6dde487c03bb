"""Score a classifier (any saved form) on labelled images: metrics, confusion matrix, per-image CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.datasets import image_dataset
from braintumor_tf.data.decode import check_images
from braintumor_tf.data.discover import CLASS_NAMES, ImageRecord, discover_images
from braintumor_tf.data.manifest import manifest_split
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.log import logger
from braintumor_tf.plots import plot_confusion_matrix
from braintumor_tf.training.metrics import classification_report, format_report


def predict_paths(runtime, paths, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (and OOD scores, None without a guard) for each path, decoded exactly as
    in training."""
    import time

    outputs, scores = [], []
    started, last_report, done = time.perf_counter(), 0.0, 0
    for batch in image_dataset(paths, runtime.image_size, runtime.channels, batch_size):
        probabilities, batch_scores = runtime.predict_with_scores(batch.numpy())
        outputs.append(np.asarray(probabilities))
        scores.append(batch_scores)
        done += len(probabilities)
        elapsed = time.perf_counter() - started
        if elapsed - last_report >= 5.0:
            last_report = elapsed
            logger.info(f"evaluated {done}/{len(paths)} images ({done / elapsed:.1f} images/s)")
    guarded = bool(scores) and scores[0] is not None
    return np.concatenate(outputs, axis=0), (np.concatenate(scores) if guarded else None)


def evaluate_records(model_path, paths, labels, out_dir=None, batch_size: int = 32,
                     json_path=None, verbose: bool = True, runtime=None) -> dict:
    runtime = runtime or load_runtime(model_path, class_names=CLASS_NAMES)
    class_names = list(runtime.class_names)
    probabilities, scores = predict_paths(runtime, paths, batch_size)
    report = classification_report(np.asarray(labels), probabilities, class_names)
    report["model"] = str(model_path)
    report["model_kind"] = runtime.kind
    inside = runtime.in_distribution(scores)
    if inside is not None:  # every image here is an MRI slice: flags are false alarms
        report["ood_flagged"] = float(np.mean(~inside))
        report["ood_threshold"] = runtime.ood_threshold
    if verbose:
        print(format_report(report), flush=True)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        plot_confusion_matrix(np.asarray(report["confusion_matrix"]), class_names,
                              out_dir / "confusion_matrix.png",
                              title=f"{Path(model_path).name}: n={report['n']}, "
                                    f"accuracy {report['accuracy']:.3f}")
        with open_csv(out_dir / "predictions.csv", "w") as handle:
            extra = ",ood_score,in_distribution" if inside is not None else ""
            handle.write("path,label,predicted," + ",".join(class_names) + extra + "\n")
            for index, (path, label, row) in enumerate(zip(paths, labels, probabilities,
                                                           strict=True)):
                guard = (f",{scores[index]:.3f},{str(bool(inside[index])).lower()}"
                         if inside is not None else "")
                handle.write(f"{path},{class_names[label]},{class_names[int(row.argmax())]},"
                             + ",".join(f"{p:.6f}" for p in row) + guard + "\n")
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def _local_or_remote(path):
    """A ``scheme://`` path stays ``str`` (a Path would drop a slash of the scheme)."""
    return path if filesystem.is_remote(path) else Path(path)


def _manifest_records(path: Path | str, split: str | None) -> list[ImageRecord]:
    return [ImageRecord(path=row["path"], label=int(row["label"]), source=str(path))
            for row in manifest_split(path, split)]


def evaluate_classifier(runtime, data_paths, json_path=None, out_dir=None, batch_size: int = 32,
                        split: str | None = None, masks=None) -> dict:
    """Every labelled, decodable image under ``data_paths`` (folders, or a run's
    ``split_manifest.csv`` restricted to ``split``); unreadable files are reported and skipped."""
    if masks is not None:
        raise ValueError(f"--masks is for segmentation models; {runtime.path} is a classifier")
    records = []
    folders = [_local_or_remote(p) for p in data_paths if not str(p).endswith(".csv")]
    for path in data_paths:
        if str(path).endswith(".csv"):
            records += _manifest_records(_local_or_remote(path), split)
    if folders:
        records += discover_images(folders)
    good, bad = check_images([r.path for r in records])
    if bad:
        logger.warning(f"skipped {len(bad)} unreadable files: "
                       + "; ".join(f"{b['path']} ({b['reason']})" for b in bad[:5])
                       + (" ..." if len(bad) > 5 else ""))
    good_set = set(good)
    kept = [r for r in records if r.path in good_set]
    report = evaluate_records(runtime.path, [r.path for r in kept], [r.label for r in kept],
                              out_dir=out_dir, batch_size=batch_size, json_path=json_path,
                              runtime=runtime)
    report["skipped_files"] = bad
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report
