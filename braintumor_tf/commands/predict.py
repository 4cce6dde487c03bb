"""Predict classes (classifier) or tumour masks (segmenter) for image files with any model form,
or classes from a TF Serving server."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from braintumor_tf.data import filesystem
from braintumor_tf.data.discover import discover_images
from braintumor_tf.export.runtimes import load_runtime, resolve_batch_size
from braintumor_tf.inference.common import default_masks_dir
from braintumor_tf.inference.explain import EXPLAIN_NEEDS_KERAS
from braintumor_tf.inference.volumes import is_nifti
from braintumor_tf.log import log, result
from braintumor_tf.tasks import get_task

# --classifier's default: the released classifier for a segmenter's inputs, where one is found.
AUTO_CLASSIFIER = "auto"


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Folders are searched for image files; files named explicitly are always kept, so a
    broken or oddly named one is reported rather than silently dropped. A ``scheme://`` input
    (gs://, ...) is listed through tf.io.gfile and kept as written (a Path drops a slash)."""
    paths: list[str] = []
    for item in inputs:
        if filesystem.is_remote(item):
            if filesystem.is_dir(item):
                paths.extend(r.path for r in discover_images([item], require_label=False))
            elif filesystem.exists(item):
                paths.append(item)
            else:
                raise FileNotFoundError(f"no such file or folder: {item}")
            continue
        path = Path(item)
        if path.is_dir():
            paths.extend(r.path for r in discover_images([path], require_label=False))
        elif path.exists():
            paths.append(str(path))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return list(dict.fromkeys(paths))


def predict(
    inputs: Sequence[str | os.PathLike],
    model_path=None,
    server: str | None = None,
    model_name: str | None = None,
    json_path=None,
    csv_path=None,
    explain_dir=None,
    batch_size: int | None = None,
    masks_dir=None,
    timeout: float = 60.0,
    classifier_path=None,
    axis: int | None = None,
    jsonl_path=None,
) -> list[dict]:
    """One record per file: class and probabilities (classifier), tumour area and mask file
    (segmenter), or the reason the file could not be read. ``classifier_path`` (segmenters):
    a classifier's view of each slice goes beside its mask, with a warning where they disagree.
    NIfTI volumes (.nii, .nii.gz) are predicted slice by slice along ``axis`` (default: axial;
    inference.volumes): one record per volume. ``jsonl_path`` streams: records are appended
    there batch by batch (memory stays bounded whatever the folder size; only each file's path
    and error come back) and a re-run with the same file skips what it already holds; so does a
    ``csv_path`` given alone with a local model. ``batch_size`` None: from the machine.
    ``classifier_path="auto"``: the released classifier, where found, for a local segmenter."""
    batch_size = resolve_batch_size(batch_size)
    expanded = expand_inputs(inputs)  # the folders are walked once
    # "auto": a segmenter's inputs get the released classifier's view and guard when one is
    # found (the segmenter has no guard of its own); streaming goes without.
    auto_classifier = classifier_path == AUTO_CLASSIFIER
    if auto_classifier:
        classifier_path = None
    if jsonl_path is not None:
        if json_path is not None or csv_path is not None or server is not None \
                or classifier_path is not None:
            raise ValueError("--jsonl goes alone: not with --json, --csv, --server or --classifier")
        return _stream(expanded, model_path, jsonl_path, explain_dir, batch_size, masks_dir, "jsonl")
    if (csv_path is not None and json_path is None and server is None and model_path is not None
            and classifier_path is None and not any(is_nifti(p) for p in expanded)):
        # A CSV alone streams like --jsonl: rows written as they come, a re-run skips done files.
        return _stream(expanded, model_path, csv_path, explain_dir, batch_size, masks_dir, "csv")
    if (model_path is None) == (server is None):
        raise ValueError("give exactly one of --model PATH or --server URL")
    if json_path is not None and csv_path is not None:
        raise ValueError("give at most one of --json FILE and --csv FILE")
    if explain_dir is not None and server is not None:
        raise ValueError(EXPLAIN_NEEDS_KERAS)
    paths = expanded
    volumes = [path for path in paths if is_nifti(path)]
    paths = [path for path in paths if not is_nifti(path)]
    if not paths and not volumes:
        raise ValueError("no image files found in the given paths")
    masks_dir = masks_dir if masks_dir is not None else default_masks_dir(json_path, csv_path)
    if volumes:
        if server is not None:
            raise ValueError("NIfTI volumes are predicted locally: give --model, not --server")
        if csv_path is not None and not paths:
            raise ValueError("NIfTI volumes go to --json, not --csv (one record holds every slice)")
        volume_records = _predict_volumes(volumes, model_path, masks_dir, batch_size, axis)
        if not paths:
            _write_json(volume_records, json_path)
            return volume_records
    if server is not None:
        from braintumor_tf.export.rest_client import predict_files

        if not model_name:
            raise ValueError("--server needs --model-name (the name in models.config)")
        outputs = predict_files(server, model_name, paths, batch_size=batch_size, timeout=timeout,
                                read_file=filesystem.read_bytes)  # gs:// inputs too
        served = "segmentation" if any(out.get("task") == "segmentation" for out in outputs) \
            else "classification"
        task = _ServedTask(served)
        records = task.records_from_server(paths, outputs, masks_dir)
    else:
        runtime = load_runtime(model_path, batch_size=batch_size)
        task = get_task(runtime.task)
        records = task.predict_files(runtime, paths, masks_dir, explain_dir, batch_size)
    if auto_classifier and task.name == "segmentation" and server is None:
        classifier_path = _released_classifier()
    if classifier_path is not None:
        if task.name != "segmentation":
            raise ValueError("--classifier goes with a segmenter --model")
        from braintumor_tf.inference.classification import predict_classes
        from braintumor_tf.inference.segmentation import cross_check

        classifier = load_runtime(classifier_path, batch_size=batch_size)
        classifier.expect_task("classification", f"--classifier {classifier_path} is not a classifier")
        cross_check(records, predict_classes(classifier, paths, None, batch_size))
    for record in records:
        result(f"{record['path']}: ERROR {record['error']}" if record["error"]
               else task.describe(record))
    failed = sum(1 for r in records if r["error"])
    log(f"{len(records) - failed} predicted, {failed} unreadable")
    if task.writes_masks and len(records) > failed:
        log(f"masks written to {masks_dir}")
    if csv_path is not None:
        task.write_csv(records, csv_path)
        if volumes:
            log(f"{len(volumes)} NIfTI volume(s) are not in the CSV: use --json")
    if volumes:
        records = records + volume_records
    _write_json(records, json_path)
    return records


def _released_classifier():
    """The released classifier to check a segmenter's inputs with, or None (said so)."""
    from braintumor_tf.export.released import default_classifier

    try:
        path = default_classifier()
    except FileNotFoundError:
        log("no released classifier found: the segmenter's inputs go unchecked (it has no guard "
            "of its own; --classifier PATH names one)")
        return None
    log(f"checking each input with the released classifier {path} (--classifier none: skip)")
    return path


class _ServedTask:
    """The part of a task that turns a served model's answers into records, lines and tables,
    taken from ``inference`` directly: the task classes import Keras, and ``predict --server``
    must not pay for TensorFlow (600 MB, seconds) to print what a server computed."""

    def __init__(self, name: str):
        if name == "segmentation":
            from braintumor_tf.inference import segmentation as inference

            self._write_csv = inference.write_segment_csv
        else:
            from braintumor_tf.inference import classification as inference

            self._write_csv = inference.write_class_csv
        self.name, self._inference = name, inference
        self.writes_masks = name == "segmentation"

    def records_from_server(self, paths, outputs, masks_dir) -> list[dict]:
        if self.writes_masks:
            return self._inference.records_from_server(paths, outputs, masks_dir)
        return self._inference.records_from_server(paths, outputs)

    def describe(self, record: dict) -> str:
        return self._inference.describe(record)

    def write_csv(self, records: list[dict], csv_path) -> None:
        self._write_csv(records, csv_path)


def _done_paths(path: Path, fmt: str, header: list[str]) -> set[str]:
    """Paths an earlier run already predicted without error (a torn last line is ignored)."""
    done: set[str] = set()
    if not path.is_file() or not path.stat().st_size:
        return done
    with open(path, encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            reader = csv.DictReader(handle)
            if reader.fieldnames != header:
                raise ValueError(f"{path} holds other columns ({', '.join(reader.fieldnames or [])}) "
                                 "than this model writes; choose another --csv file")
            for row in reader:
                if None not in row.values() and not row.get("error") and row.get("path"):
                    done.add(row["path"])
            return done
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and not record.get("error") and "path" in record:
                done.add(record["path"])
    return done


def _drop_torn_tail(path: Path) -> None:
    """A run killed mid-write leaves a partial last line: cut it, so the next record starts clean."""
    if not path.is_file() or not path.stat().st_size:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with open(path, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)


def _stream(paths, model_path, out_path, explain_dir, batch_size, masks_dir, fmt) -> list[dict]:
    """Records appended batch by batch to ``out_path`` (JSON lines or CSV rows), holding one
    batch of pixels; paths already there without error are skipped."""
    import time

    out_path = Path(out_path)
    paths = [path for path in paths if not is_nifti(path)]
    if not paths:
        raise ValueError("no image files found in the given paths")
    runtime = load_runtime(model_path, batch_size=batch_size)
    task = get_task(runtime.task)
    header = task.csv_header() if fmt == "csv" else []
    _drop_torn_tail(out_path)
    done = _done_paths(out_path, fmt, header)
    todo = [path for path in paths if path not in done]
    if done:
        log(f"{len(paths) - len(todo)} of {len(paths)} images already in {out_path}: skipped "
            "(delete the file to predict them again)")
    results = [{"path": path, "error": None} for path in paths if path in done]
    if not todo:
        return results
    if masks_dir is None:
        masks_dir = out_path.with_name(f"{out_path.stem}_masks")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out_path.is_file() or not out_path.stat().st_size
    started, last_report, count = time.perf_counter(), 0.0, 0
    with open(out_path, "a", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle) if fmt == "csv" else None
        if writer is not None and new_file:
            writer.writerow(header)
        for chunk in task.iter_files(runtime, todo, masks_dir, explain_dir, batch_size):
            for record in chunk:
                if writer is not None:
                    writer.writerow(task.csv_row(record))
                else:
                    handle.write(json.dumps(record) + "\n")
                results.append({"path": record["path"], "error": record["error"]})
            handle.flush()
            count += len(chunk)
            elapsed = time.perf_counter() - started
            if elapsed - last_report >= 2.0 or count == len(todo):
                last_report = elapsed
                log(f"predicted {count}/{len(todo)} images ({count / max(elapsed, 1e-9):.1f} "
                    f"images/s) -> {out_path}")
    return results


def _write_json(records, json_path) -> None:
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(records, indent=2) + "\n")


def _predict_volumes(volumes, model_path, masks_dir, batch_size, axis) -> list[dict]:
    from braintumor_tf.inference import volumes as volume_inference

    runtime = load_runtime(model_path, batch_size=batch_size)
    records = []
    for path in volumes:
        try:
            if runtime.task == "classification":
                record = volume_inference.predict_volume_classes(runtime, path, axis, batch_size)
                answer = record["volume"]
                result(f"{path}: ERROR {record['error']}" if record["error"] else
                       f"{path}: {answer['class_name']} (volume; tumour slices "
                       f"{answer['tumour_slices'] or 'none'} of {answer['slices_counted']} counted)")
            else:
                name = filesystem.basename(path) if filesystem.is_remote(path) else Path(path).name
                stem = name[:-len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem
                record = volume_inference.predict_volume_mask(
                    runtime, path, Path(masks_dir) / f"{stem}_mask.nii.gz", axis)
                result(f"{path}: tumour in {record['slices_with_tumour']} of {record['slices']} "
                       f"slices, {record['tumour_voxels']} voxels, mask {record['mask']}")
        except (ValueError, ImportError, OSError) as error:
            record = {"path": str(path), "error": str(error)}
            result(f"{path}: ERROR {error}")
        records.append({"kind": "volume", **record})
    return records
