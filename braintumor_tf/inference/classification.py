"""Classifier predictions: class and probabilities per file, Grad-CAM pictures on request."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.decode import DecodeError, read_image
from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.inference.common import error_text, file_stem, unique_name
from braintumor_tf.inference.explain import explaining_runtime, grad_cam_pictures
from braintumor_tf.serving.predictor import Predictor


def class_record(path, class_names, probabilities=None, class_id=None, error=None,
                 ood_score=None, in_distribution=None) -> dict:
    """``ood_score``/``in_distribution`` are None when the model carries no guard."""
    if error is not None:
        return {"path": path, "class_name": None, "class_id": None, "probabilities": None,
                "ood_score": None, "in_distribution": None, "error": error}
    probabilities = np.asarray(probabilities, np.float32)
    class_id = int(probabilities.argmax()) if class_id is None else int(class_id)
    return {"path": path, "class_name": class_names[class_id], "class_id": class_id,
            "probabilities": {n: float(p) for n, p in zip(class_names, probabilities, strict=True)},
            "ood_score": None if ood_score is None else float(ood_score),
            "in_distribution": None if in_distribution is None else bool(in_distribution),
            "error": None}


def predict_classes(runtime, paths, explain_dir=None, batch_size: int = 32) -> list[dict]:
    return [record for chunk in iter_class_records(runtime, paths, explain_dir, batch_size)
            for record in chunk]


def iter_class_records(runtime, paths, explain_dir=None, batch_size: int = 32):
    """Records one batch at a time, in input order: only one batch of pixels is ever held, so
    a folder of any size predicts in bounded memory."""
    predictor = Predictor(runtime)
    explainer = explaining_runtime(runtime) if explain_dir is not None else None
    used: set[str] = set()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, good, records = [], [], {}
        for path in chunk:
            try:
                image = predictor.read(path)
                # Only Grad-CAM needs the original: otherwise a batch of large scans is held at
                # model size (bounded memory whatever the inputs' size).
                images.append(image if explain_dir is not None else predictor.pixels([image])[0])
                good.append(path)
            except (DecodeError, OSError) as error:
                records[path] = class_record(path, runtime.class_names,
                                             error=error_text(path, error))
        for path, answer in zip(good, predictor.classify(images), strict=True):
            records[path] = class_record(path, runtime.class_names, answer.probabilities,
                                         ood_score=answer.ood_score,
                                         in_distribution=answer.in_distribution)
        if good and explain_dir is not None:
            write_explanations(explainer, good, predictor.pixels(images), explain_dir,
                               batch_size, records, used, originals=images)
        yield [records[p] for p in chunk]


def write_explanations(explainer, paths, pixels, explain_dir, batch_size, records,
                       used: set[str] | None = None, originals=None) -> None:
    """Captioned Grad-CAM pictures at each file's own size, explaining the answered class."""
    explain_dir = Path(explain_dir)
    explain_dir.mkdir(parents=True, exist_ok=True)
    used = set() if used is None else used
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        shown = originals[start:start + batch_size] if originals is not None else \
            [read_image(path, explainer.channels) for path in chunk]
        pictures = grad_cam_pictures(explainer, pixels[start:start + batch_size],
                                     [records[path] for path in chunk], shown)
        for path, picture in zip(chunk, pictures, strict=True):
            out = explain_dir / f"{unique_name(file_stem(path), used)}_gradcam.png"
            cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            records[path]["explanation"] = str(out)


def records_from_server(paths, outputs) -> list[dict]:
    records = []
    for path, out in zip(paths, outputs, strict=True):
        if "error" in out:
            records.append(class_record(path, CLASS_NAMES, error=out["error"]))
            continue
        names = CLASS_NAMES if len(out["probabilities"]) == len(CLASS_NAMES) else \
            tuple(f"class_{i}" for i in range(len(out["probabilities"])))
        records.append(class_record(path, names, out["probabilities"], out["class_id"],
                                    ood_score=out.get("ood_score"),
                                    in_distribution=out.get("in_distribution")))
    return records


def describe(record: dict) -> str:
    probabilities = " ".join(f"{n}={p:.3f}" for n, p in record["probabilities"].items())
    line = f"{record['path']}: {record['class_name']} ({probabilities})"
    if record.get("in_distribution") is False:
        line += (f"  WARNING: does not look like the brain MRI slices the model was trained on "
                 f"(ood score {record['ood_score']:.0f}); do not trust this class")
    return line


def class_csv_header(names=CLASS_NAMES) -> list[str]:
    return ["path", "class_name", *names, "ood_score", "in_distribution", "error"]


def class_csv_row(record: dict, names=CLASS_NAMES) -> list[str]:
    r = record
    probabilities = [f"{r['probabilities'][n]:.6f}" for n in names] if r["probabilities"] \
        else [""] * len(names)
    score = "" if r.get("ood_score") is None else f"{r['ood_score']:.3f}"
    inside = "" if r.get("in_distribution") is None else str(r["in_distribution"]).lower()
    return [r["path"], r["class_name"] or "", *probabilities, score, inside, r["error"] or ""]


def write_class_csv(records: list[dict], csv_path) -> None:
    names = next((list(r["probabilities"]) for r in records if r["probabilities"]), list(CLASS_NAMES))
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    with open_csv(csv_path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(class_csv_header(names))
        for record in records:
            writer.writerow(class_csv_row(record, names))
