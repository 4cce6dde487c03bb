"""Segmenter predictions: a mask PNG at each image's own size and the tumour area per file."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.decode import DecodeError
from braintumor_tf.inference.common import error_text, file_stem, unique_name
from braintumor_tf.overlays import mask_overlay
from braintumor_tf.serving.predictor import Predictor

SEGMENT_CSV_COLUMNS = ("path", "height", "width", "tumour_area_pixels", "tumour_fraction", "mask",
                       "warning", "error")


def segment_record(path, error=None, mask=None, mask_file=None) -> dict:
    if error is not None:
        return {"path": path, "height": None, "width": None, "tumour_area_pixels": None,
                "tumour_fraction": None, "mask": None, "error": error}
    area = int(np.count_nonzero(mask))
    return {"path": path, "height": int(mask.shape[0]), "width": int(mask.shape[1]),
            "tumour_area_pixels": area, "tumour_fraction": area / mask.size, "mask": str(mask_file),
            "error": None}


def iter_mask_records(runtime, paths, masks_dir, explain_dir=None, batch_size: int = 32):
    """Batch by batch, so a large folder of full-size images is never in memory at once. The
    probability map is resized back bilinearly before thresholding at the model's own threshold,
    as the SavedModel does."""
    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    if explain_dir is not None:
        Path(explain_dir).mkdir(parents=True, exist_ok=True)
    predictor = Predictor(runtime)
    used: set[str] = set()
    for start in range(0, len(paths), batch_size):
        records: dict[str, dict] = {}
        originals, good = [], []
        for path in paths[start:start + batch_size]:
            try:
                originals.append(predictor.read(path))
                good.append(path)
            except (DecodeError, OSError) as error:
                records[path] = segment_record(path, error=error_text(path, error))
        masks = predictor.segment(originals)
        for path, image, mask in zip(good, originals, masks, strict=True):
            name = unique_name(file_stem(path), used)
            records[path] = segment_record(path, mask=mask, mask_file=write_mask(mask, masks_dir, name))
            if explain_dir is not None:
                out = Path(explain_dir) / f"{name}_overlay.png"
                cv2.imwrite(str(out), cv2.cvtColor(mask_overlay(image, mask), cv2.COLOR_RGB2BGR))
                records[path]["explanation"] = str(out)
        yield [records[p] for p in paths[start:start + batch_size]]


def write_mask(mask: np.ndarray, masks_dir: Path, name: str) -> Path:
    mask_file = masks_dir / f"{name}_mask.png"
    if not cv2.imwrite(str(mask_file), mask.astype(np.uint8) * 255):
        raise OSError(f"could not write {mask_file}")
    return mask_file


def records_from_server(paths, outputs, masks_dir) -> list[dict]:
    """A served segmenter's masks are written as PNGs like local ones."""
    Path(masks_dir).mkdir(parents=True, exist_ok=True)
    records, used = [], set()
    for path, out in zip(paths, outputs, strict=True):
        if "error" in out:
            records.append(segment_record(path, error=out["error"]))
            continue
        mask_file = write_mask(out["mask"], Path(masks_dir), unique_name(file_stem(path), used))
        records.append(segment_record(path, mask=out["mask"], mask_file=mask_file))
    return records


NO_TUMOUR_CONFIDENCE = 0.9  # a classifier this sure of notumor makes a mask suspect


def cross_check_warning(class_record: dict, tumour_pixels: int,
                        confidence: float = NO_TUMOUR_CONFIDENCE) -> str | None:
    """What to tell a user when the classifier's view and a mask differ. Masks are called
    possible false positives only when the classifier is both confident and in distribution;
    any other disagreement is stated as one, since correct masks on slices the classifier gets
    wrong are common."""
    name = class_record["class_name"]
    probability = class_record["probabilities"][name]
    inside = class_record.get("in_distribution")
    if inside is False:
        return ("the classifier's guard says this is not an MRI slice like its training data; "
                "do not trust the mask")
    if name == "notumor" and tumour_pixels:
        if probability >= confidence and inside is True:
            return (f"the classifier calls this slice notumor ({probability:.2f}, in "
                    f"distribution): the {tumour_pixels} mask pixels may be false positives; "
                    "check them")
        return (f"the classifier (notumor, {probability:.2f}) and the mask ({tumour_pixels} "
                "tumour pixels) disagree")
    if name != "notumor" and not tumour_pixels:
        return (f"the classifier ({name}, {probability:.2f}) and the mask (no tumour pixels) "
                "disagree")
    return None


def cross_check(records: list[dict], class_records: list[dict],
                confidence: float = NO_TUMOUR_CONFIDENCE) -> list[dict]:
    """Put the classifier's view beside each mask, and a ``warning`` where they disagree or the
    classifier's guard says the image is not an MRI slice like its training data (the
    segmenter's own guard: it has none)."""
    for record, other in zip(records, class_records, strict=True):
        record["warning"] = None
        if record["error"] or other["error"]:
            continue
        record["classifier"] = {"class_name": other["class_name"],
                                "confidence": other["probabilities"][other["class_name"]],
                                "in_distribution": other.get("in_distribution")}
        record["warning"] = cross_check_warning(other, record["tumour_area_pixels"], confidence)
    return records


def describe(record: dict) -> str:
    line = (f"{record['path']}: tumour {record['tumour_area_pixels']} px "
            f"({record['tumour_fraction'] * 100:.2f} % of {record['width']}x{record['height']}), "
            f"mask {record['mask']}")
    return line + (f"  WARNING: {record['warning']}" if record.get("warning") else "")


def segment_csv_row(record: dict) -> list:
    row = dict(record, tumour_fraction=None if record["tumour_fraction"] is None
               else f"{record['tumour_fraction']:.6f}")
    return ["" if row.get(k) is None else row[k] for k in SEGMENT_CSV_COLUMNS]


def write_segment_csv(records: list[dict], csv_path) -> None:
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    with open_csv(csv_path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(SEGMENT_CSV_COLUMNS)
        for record in records:
            writer.writerow(segment_csv_row(record))
