"""Score a classifier (any saved form) on labelled images: metrics, confusion matrix, per-image CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.datasets import image_dataset
from braintumor_tf.data.decode import check_images
from braintumor_tf.data.discover import ImageRecord, discover_images
from braintumor_tf.data.manifest import manifest_split
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.log import logger
from braintumor_tf.plots import plot_confusion_matrix
from braintumor_tf.training.metrics import classification_report, format_report


def predict_paths(runtime, paths, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (and OOD scores, None without a guard) for each path, read by the one
    predictor (serving.predictor), as ``predict`` and the API read them."""
    import time

    from braintumor_tf.serving.predictor import Predictor

    outputs, scores = [], []
    started, last_report, done = time.perf_counter(), 0.0, 0
    read = Predictor(runtime).model_input
    for batch in image_dataset(paths, runtime.image_size, runtime.channels, batch_size, read):
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
                     json_path=None, verbose: bool = True, runtime=None, sources=None) -> dict:
    runtime = runtime or load_runtime(model_path)
    class_names = list(runtime.class_names)
    probabilities, scores = predict_paths(runtime, paths, batch_size)
    report = classification_report(np.asarray(labels), probabilities, class_names)
    if sources is not None:
        report["per_source"] = per_source_report(labels, probabilities, sources, class_names)
    report["model"] = str(model_path)
    report["model_kind"] = runtime.kind
    inside = runtime.in_distribution(scores)
    if inside is not None:  # every image here is an MRI slice: flags are false alarms
        report["ood_flagged"] = float(np.mean(~inside))
        report["ood_threshold"] = runtime.ood_threshold
    if verbose:
        print(format_report(report), flush=True)
        if sources is not None:
            print(format_per_source(report["per_source"]), flush=True)
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


def _manifest_records(path: Path | str, split: str | None) -> tuple[list[ImageRecord], list[str]]:
    rows = manifest_split(path, split)
    records = [ImageRecord(path=row["path"], label=int(row["label"]), source=str(path))
               for row in rows]
    return records, [row.get("source") or "manifest" for row in rows]


def per_source_report(labels, probabilities, sources, class_names) -> dict:
    """Accuracy (and how often a tumour is called no tumour) of each source's images: a model
    right on one rendering and wrong on another has learned the export, not the anatomy."""
    labels, predicted = np.asarray(labels), np.asarray(probabilities).argmax(axis=1)
    sources = np.asarray(sources)
    notumor = list(class_names).index("notumor") if "notumor" in class_names else None
    found = {}
    for name in sorted(set(sources.tolist())):
        chosen = sources == name
        entry = {"n": int(chosen.sum()),
                 "accuracy": float(np.mean(predicted[chosen] == labels[chosen]))}
        if notumor is not None:
            tumour = chosen & (labels != notumor)
            if tumour.any():
                entry["tumour_called_notumor"] = float(np.mean(predicted[tumour] == notumor))
        found[name] = entry
    return found


def format_per_source(per_source: dict) -> str:
    lines = ["per source:"]
    for name, entry in per_source.items():
        called = entry.get("tumour_called_notumor")
        lines.append(f"  {name:<24} n={entry['n']:<6} accuracy {entry['accuracy']:.4f}"
                     + (f", tumours called notumor {called * 100:.1f} %" if called is not None
                        else ""))
    return "\n".join(lines)


def evaluate_classifier(runtime, data_paths, json_path=None, out_dir=None, batch_size: int = 32,
                        split: str | None = None, masks=None, labels=(), shifts=None) -> dict:
    """Every labelled, decodable image under ``data_paths`` (folders, or a run's
    ``split_manifest.csv`` restricted to ``split``) and in the ``labels`` tables (path,class);
    unreadable files are reported and skipped. Accuracy is also reported per source (the top
    folder under a data root, or a table's folder). ``shifts`` ("all" or names from
    evaluation/shifts.py): the images re-rendered by each shift, scored again."""
    from braintumor_tf.data.labels_csv import records_from_labels, source_name

    if masks is not None:
        raise ValueError(f"--masks is for segmentation models; {runtime.path} is a classifier")
    records, sources = [], []
    folders = [_local_or_remote(p) for p in data_paths if not str(p).endswith(".csv")]
    for path in data_paths:
        if str(path).endswith(".csv"):
            found, found_sources = _manifest_records(_local_or_remote(path), split)
            records += found
            sources += found_sources
    if folders:
        found = discover_images(folders)
        records += found
        sources += [source_name(record) for record in found]
    for table in labels:
        found = records_from_labels(table)
        records += found
        sources += [source_name(record) for record in found]
    source_of = {record.path: source for record, source in zip(records, sources, strict=True)}
    good, bad = check_images([r.path for r in records])
    if bad:
        logger.warning(f"skipped {len(bad)} unreadable files: "
                       + "; ".join(f"{b['path']} ({b['reason']})" for b in bad[:5])
                       + (" ..." if len(bad) > 5 else ""))
    good_set = set(good)
    kept = [r for r in records if r.path in good_set]
    kept_sources = [source_of[r.path] for r in kept]
    report = evaluate_records(runtime.path, [r.path for r in kept], [r.label for r in kept],
                              out_dir=out_dir, batch_size=batch_size, json_path=json_path,
                              runtime=runtime, sources=kept_sources)
    if shifts is not None:
        from braintumor_tf.evaluation.shift_report import format_shift_report, shift_report

        report["shifts"] = shift_report(runtime, [r.path for r in kept], [r.label for r in kept],
                                        kept_sources, shifts, batch_size=batch_size)
        print(format_shift_report(report["shifts"]), flush=True)
        if out_dir is not None:
            (Path(out_dir) / "shifts.md").write_text(format_shift_report(report["shifts"]))
    report["skipped_files"] = bad
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report
