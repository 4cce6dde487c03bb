"""Predict classes (classifier) or tumour masks (segmenter) for image files with any model form,
or classes from a TF Serving server."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data.decode import DecodeError, read_image, resize_image
from braintumor_tf.data.discover import CLASS_NAMES, discover_images
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.training.seg_metrics import THRESHOLD

SEGMENT_CSV_COLUMNS = ("path", "height", "width", "tumour_area_pixels", "tumour_fraction", "mask",
                       "error")


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


def _predict_local(runtime, paths, explain_dir, batch_size) -> list[dict]:
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


def _unique_name(stem: str, used: set[str]) -> str:
    """Same file name in different folders must not overwrite each other's outputs."""
    while stem in used:
        stem += "_"
    used.add(stem)
    return stem


def _segment_record(path, error=None, mask=None, mask_file=None) -> dict:
    if error is not None:
        return {"path": path, "height": None, "width": None, "tumour_area_pixels": None,
                "tumour_fraction": None, "mask": None, "error": error}
    area = int(np.count_nonzero(mask))
    return {"path": path, "height": int(mask.shape[0]), "width": int(mask.shape[1]),
            "tumour_area_pixels": area, "tumour_fraction": area / mask.size, "mask": str(mask_file),
            "error": None}


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """RGB uint8: the image with the predicted tumour tinted red and outlined in yellow."""
    import cv2

    image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image.copy()
    inside = mask > 0
    tint = np.zeros_like(rgb)
    tint[..., 0] = 255
    rgb[inside] = np.round((1 - alpha) * rgb[inside] + alpha * tint[inside]).astype(np.uint8)
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(rgb.shape[:2]) / 256))
    cv2.drawContours(rgb, contours, -1, (255, 255, 0), thickness)
    return rgb


def _segment_local(runtime, paths, masks_dir, explain_dir, batch_size,
                   threshold: float = THRESHOLD) -> list[dict]:
    """Batch by batch, so a large folder of full-size images is never in memory at once. The
    probability map is resized back bilinearly before thresholding, as the SavedModel does."""
    import cv2

    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    if explain_dir is not None:
        Path(explain_dir).mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    used: set[str] = set()
    for start in range(0, len(paths), batch_size):
        originals, good = [], []
        for path in paths[start:start + batch_size]:
            try:
                originals.append(read_image(path, runtime.channels))
                good.append(path)
            except (DecodeError, OSError) as error:
                records[path] = _segment_record(path, error=_error_text(path, error))
        if not good:
            continue
        pixels = np.stack([resize_image(image, runtime.image_size) for image in originals])
        probabilities = runtime.predict(pixels)[..., 0]
        for path, image, probability in zip(good, originals, probabilities, strict=True):
            height, width = image.shape[:2]
            if (height, width) != probability.shape:
                probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
            mask = (probability > threshold).astype(np.uint8)
            name = _unique_name(Path(path).stem, used)
            mask_file = _write_mask(mask, masks_dir, name)
            records[path] = _segment_record(path, mask=mask, mask_file=mask_file)
            if explain_dir is not None:
                out = Path(explain_dir) / f"{name}_overlay.png"
                cv2.imwrite(str(out), cv2.cvtColor(mask_overlay(image, mask), cv2.COLOR_RGB2BGR))
                records[path]["explanation"] = str(out)
    return [records[p] for p in paths]


def _write_mask(mask: np.ndarray, masks_dir: Path, name: str) -> Path:
    import cv2

    mask_file = masks_dir / f"{name}_mask.png"
    if not cv2.imwrite(str(mask_file), mask.astype(np.uint8) * 255):
        raise OSError(f"could not write {mask_file}")
    return mask_file


def _server_records(paths, outputs, task, masks_dir) -> list[dict]:
    """Records from TF Serving's answers; a segmenter's masks are written as PNGs like local ones."""
    records, used = [], set()
    if task == "segmentation":
        Path(masks_dir).mkdir(parents=True, exist_ok=True)
    for path, out in zip(paths, outputs, strict=True):
        if "error" in out:
            error_record = _segment_record if task == "segmentation" else \
                lambda p, error: _record(p, CLASS_NAMES, error=error)
            records.append(error_record(path, error=out["error"]))
        elif task == "segmentation":
            mask = out["mask"]
            mask_file = _write_mask(mask, Path(masks_dir), _unique_name(Path(path).stem, used))
            records.append(_segment_record(path, mask=mask, mask_file=mask_file))
        else:
            names = CLASS_NAMES if len(out["probabilities"]) == len(CLASS_NAMES) else \
                tuple(f"class_{i}" for i in range(len(out["probabilities"])))
            records.append(_record(path, names, out["probabilities"], out["class_id"]))
    return records


def default_masks_dir(json_path=None, csv_path=None) -> Path:
    """Beside the table (``<table stem>_masks/``) so tables and masks travel together."""
    table = json_path or csv_path
    if table is None:
        return Path("masks")
    return Path(table).parent / f"{Path(table).stem}_masks"


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
            name = _unique_name(Path(path).stem, used)
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
    masks_dir=None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One record per file: class and probabilities (classifier), tumour area and mask file
    (segmenter), or the reason the file could not be read."""
    if (model_path is None) == (server is None):
        raise ValueError("give exactly one of --model PATH or --server URL")
    if json_path is not None and csv_path is not None:
        raise ValueError("give at most one of --json FILE and --csv FILE")
    if explain_dir is not None and server is not None:
        raise ValueError(_EXPLAIN_NEEDS_KERAS)
    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError("no image files found in the given paths")
    task = "classification"
    if server is not None:
        from braintumor_tf.export.rest_client import predict_files

        if not model_name:
            raise ValueError("--server needs --model-name (the name in models.config)")
        outputs = predict_files(server, model_name, paths, batch_size=batch_size)
        if any(out.get("task") == "segmentation" for out in outputs):
            task = "segmentation"
            masks_dir = masks_dir if masks_dir is not None else default_masks_dir(json_path, csv_path)
        records = _server_records(paths, outputs, task, masks_dir)
    else:
        runtime = load_runtime(model_path, class_names=CLASS_NAMES, batch_size=batch_size)
        task = runtime.task
        if task == "segmentation":
            masks_dir = masks_dir if masks_dir is not None else default_masks_dir(json_path, csv_path)
            records = _segment_local(runtime, paths, masks_dir, explain_dir, batch_size)
        else:
            if explain_dir is not None and runtime.kind != "keras":
                raise ValueError(_EXPLAIN_NEEDS_KERAS)
            records = _predict_local(runtime, paths, explain_dir, batch_size)
    for record in records:
        if record["error"]:
            log(f"{record['path']}: ERROR {record['error']}")
        elif task == "segmentation":
            log(f"{record['path']}: tumour {record['tumour_area_pixels']} px "
                f"({record['tumour_fraction'] * 100:.2f} % of {record['width']}x{record['height']}), "
                f"mask {record['mask']}")
        else:
            probabilities = " ".join(f"{n}={p:.3f}" for n, p in record["probabilities"].items())
            log(f"{record['path']}: {record['class_name']} ({probabilities})")
    failed = sum(1 for r in records if r["error"])
    log(f"{len(records) - failed} predicted, {failed} unreadable")
    if task == "segmentation" and len(records) > failed:
        log(f"masks written to {masks_dir}")
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(records, indent=2) + "\n")
    if csv_path is not None:
        if task == "segmentation":
            _write_segment_csv(records, csv_path)
        else:
            _write_csv(records, csv_path)
    return records


_EXPLAIN_NEEDS_KERAS = ("--explain (Grad-CAM) needs a .keras model: it reads the layers and their "
                        "gradients, which SavedModel, .tflite and served models do not expose")


def _write_segment_csv(records: list[dict], csv_path) -> None:
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SEGMENT_CSV_COLUMNS)
        for r in records:
            row = dict(r, tumour_fraction=None if r["tumour_fraction"] is None
                       else f"{r['tumour_fraction']:.6f}")
            writer.writerow(["" if row[k] is None else row[k] for k in SEGMENT_CSV_COLUMNS])


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
