"""Predict classes for image files with any model form or a TF Serving server."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data.decode import DecodeError, read_image
from braintumor_tf.data.discover import CLASS_NAMES, discover_images
from braintumor_tf.export.runtimes import load_runtime


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Folders are searched for image files; files named explicitly are always kept, so a
    broken or oddly named one is reported rather than silently dropped."""
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(r.path for r in discover_images([path], require_label=False))
        elif path.exists():
            paths.append(str(path))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return list(dict.fromkeys(paths))


def _error_text(path: str, error: Exception) -> str:
    if isinstance(error, OSError):
        return f"cannot read file: {error.strerror or error}"
    text = str(error)
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


def _record(path, class_names, probabilities=None, class_id=None, error=None) -> dict:
    if error is not None:
        return {"path": path, "class_name": None, "class_id": None, "probabilities": None,
                "error": error}
    probabilities = np.asarray(probabilities, np.float32)
    class_id = int(probabilities.argmax()) if class_id is None else int(class_id)
    return {"path": path, "class_name": class_names[class_id], "class_id": class_id,
            "probabilities": {n: float(p) for n, p in zip(class_names, probabilities, strict=True)},
            "error": None}


def _predict_local(model_path, paths, explain_dir, batch_size) -> list[dict]:
    runtime = load_runtime(model_path, class_names=CLASS_NAMES, batch_size=batch_size)
    images, good, records = [], [], {}
    for path in paths:
        try:
            images.append(read_image(path, runtime.channels, runtime.image_size))
            good.append(path)
        except (DecodeError, OSError) as error:
            records[path] = _record(path, runtime.class_names, error=_error_text(path, error))
    if good:
        pixels = np.stack(images)
        probabilities = runtime.predict(pixels)
        for path, row in zip(good, probabilities, strict=True):
            records[path] = _record(path, runtime.class_names, row)
        if explain_dir is not None:
            _write_explanations(runtime, good, pixels, explain_dir, batch_size, records)
    return [records[p] for p in paths]


def _write_explanations(runtime, paths, pixels, explain_dir, batch_size, records) -> None:
    import cv2

    from braintumor_tf.models.gradcam import GradCAM, overlay

    explain_dir = Path(explain_dir)
    explain_dir.mkdir(parents=True, exist_ok=True)
    cam = GradCAM(runtime.keras_model)
    used: set[str] = set()
    for start in range(0, len(paths), batch_size):
        heatmaps, _ = cam.heatmaps(pixels[start:start + batch_size])
        for offset, heatmap in enumerate(heatmaps):
            path = paths[start + offset]
            name = Path(path).stem
            while name in used:  # same file name in different folders
                name += "_"
            used.add(name)
            out = explain_dir / f"{name}_gradcam.png"
            picture = overlay(pixels[start + offset], heatmap)
            cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            records[path]["explanation"] = str(out)


def predict(
    inputs: Sequence[str | os.PathLike],
    model_path=None,
    server: str | None = None,
    model_name: str | None = None,
    json_path=None,
    csv_path=None,
    explain_dir=None,
    batch_size: int = 32,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One record per file (class, probabilities, or the reason it could not be read)."""
    if (model_path is None) == (server is None):
        raise ValueError("give exactly one of --model PATH or --server URL")
    if json_path is not None and csv_path is not None:
        raise ValueError("give at most one of --json FILE and --csv FILE")
    if explain_dir is not None and (server is not None or Path(model_path).suffix != ".keras"):
        raise ValueError("--explain (Grad-CAM) needs a .keras model: it reads the layers and their "
                         "gradients, which SavedModel, .tflite and served models do not expose")
    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError("no image files found in the given paths")
    if server is not None:
        from braintumor_tf.export.rest_client import predict_files

        if not model_name:
            raise ValueError("--server needs --model-name (the name in models.config)")
        records = []
        for path, out in zip(paths, predict_files(server, model_name, paths), strict=True):
            if "error" in out:
                records.append(_record(path, CLASS_NAMES, error=out["error"]))
            else:
                names = CLASS_NAMES if len(out["probabilities"]) == len(CLASS_NAMES) else \
                    tuple(f"class_{i}" for i in range(len(out["probabilities"])))
                records.append(_record(path, names, out["probabilities"], out["class_id"]))
    else:
        records = _predict_local(model_path, paths, explain_dir, batch_size)
    for record in records:
        if record["error"]:
            log(f"{record['path']}: ERROR {record['error']}")
        else:
            probabilities = " ".join(f"{n}={p:.3f}" for n, p in record["probabilities"].items())
            log(f"{record['path']}: {record['class_name']} ({probabilities})")
    failed = sum(1 for r in records if r["error"])
    log(f"{len(records) - failed} predicted, {failed} unreadable")
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(records, indent=2) + "\n")
    if csv_path is not None:
        _write_csv(records, csv_path)
    return records


def _write_csv(records: list[dict], csv_path) -> None:
    names = next((list(r["probabilities"]) for r in records if r["probabilities"]), list(CLASS_NAMES))
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "class_name", *names, "error"])
        for r in records:
            probabilities = [f"{r['probabilities'][n]:.6f}" for n in names] if r["probabilities"] \
                else [""] * len(names)
            writer.writerow([r["path"], r["class_name"] or "", *probabilities, r["error"] or ""])
