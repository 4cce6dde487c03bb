"""Binary segmentation metrics from masks or probabilities, in numpy.

Pure numpy (no TensorFlow) so reports can be produced and tested anywhere; every value in a report
is a plain Python number or list, ready for JSON. Pixels count as foreground when their value is
``> threshold`` (0.5 by default) for predictions and ``> 0.5`` for truth, so truth masks may be
bool, 0/1 or 0/255.

Two ways of averaging, because they answer different questions:

* ``micro_iou``: intersection and union summed over the whole split, then divided once (the
  study's definition). Large tumours dominate it.
* ``mean_iou`` / ``mean_dice``: scored per image, then averaged; every image counts equally.

``hd95``: the 95th percentile of the distances (pixels) between the two outlines, taken both ways,
the larger of the two; it tells how far off the boundary is where Dice only says how much overlaps.
Undefined (not counted, reported as ``n_hd95_undefined``) when either mask is empty.

Empty masks (no foreground pixel), per image: if truth and prediction are both empty the image
scores 1.0 for IoU and Dice (perfect agreement); if exactly one is empty it scores 0.0. A split
whose union is empty everywhere has ``micro_iou`` 1.0 for the same reason.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from braintumor_tf.config import DEFAULT_SEGMENTATION_THRESHOLD

MISSED_DICE = 0.1  # images below this Dice are reported as (almost entirely) missed


def _as_batch(array, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"{what} must be [N, H, W] or [N, H, W, 1], got shape {array.shape}")
    return array


def _binarise(masks_true, probabilities_or_masks, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    truth = _as_batch(masks_true, "masks_true")
    predicted = _as_batch(probabilities_or_masks, "probabilities_or_masks")
    if truth.shape != predicted.shape:
        raise ValueError(f"masks_true {truth.shape} and predictions {predicted.shape} differ in shape")
    if predicted.dtype.kind == "f" and not np.all(np.isfinite(predicted)):
        raise ValueError("predictions contain NaN or inf")
    return truth > 0.5, predicted > threshold


def _per_image_scores(intersection, union, true_area, predicted_area):
    """IoU and Dice per image with the empty-mask convention of the module docstring."""
    both_empty = union == 0
    safe_union = np.where(both_empty, 1, union)
    safe_total = np.where(both_empty, 1, true_area + predicted_area)
    iou = np.where(both_empty, 1.0, intersection / safe_union)
    dice = np.where(both_empty, 1.0, 2.0 * intersection / safe_total)
    return iou.astype(np.float64), dice.astype(np.float64)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff_95(truth, predicted) -> float:
    """Symmetric 95th-percentile Hausdorff distance in pixels between two 2-D masks; NaN when
    either is empty."""
    truth, predicted = np.asarray(truth) > 0, np.asarray(predicted) > 0
    if not truth.any() or not predicted.any():
        return float("nan")
    truth_outline, predicted_outline = _outline(truth), _outline(predicted)
    to_predicted = ndimage.distance_transform_edt(~predicted_outline)[truth_outline]
    to_truth = ndimage.distance_transform_edt(~truth_outline)[predicted_outline]
    return float(max(np.percentile(to_predicted, 95), np.percentile(to_truth, 95)))


class SegmentationAccumulator:
    """Collects per-image counts batch by batch, so a split never has to be in memory at once."""

    def __init__(self, threshold: float = DEFAULT_SEGMENTATION_THRESHOLD):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self._counts: list[np.ndarray] = []  # per batch: [n, 4] intersection, union, true, predicted
        self._correct_pixels = 0
        self._total_pixels = 0
        self._hd95: list[float] = []

    def update(self, masks_true, probabilities_or_masks) -> None:
        truth, predicted = _binarise(masks_true, probabilities_or_masks, self.threshold)
        flat_truth = truth.reshape(truth.shape[0], -1)
        flat_predicted = predicted.reshape(predicted.shape[0], -1)
        counts = np.stack([
            np.count_nonzero(flat_truth & flat_predicted, axis=1),
            np.count_nonzero(flat_truth | flat_predicted, axis=1),
            np.count_nonzero(flat_truth, axis=1),
            np.count_nonzero(flat_predicted, axis=1),
        ], axis=1).astype(np.int64)
        self._counts.append(counts)
        self._hd95 += [hausdorff_95(t, p) for t, p in zip(truth, predicted, strict=True)]
        self._correct_pixels += int(np.count_nonzero(flat_truth == flat_predicted))
        self._total_pixels += int(flat_truth.size)

    @property
    def n(self) -> int:
        return int(sum(len(counts) for counts in self._counts))

    def per_image(self) -> dict[str, np.ndarray]:
        counts = np.concatenate(self._counts) if self._counts else np.zeros((0, 4), np.int64)
        intersection, union, true_area, predicted_area = counts.T
        iou, dice = _per_image_scores(intersection, union, true_area, predicted_area)
        return {"iou": iou, "dice": dice, "intersection": intersection, "union": union,
                "true_area": true_area, "predicted_area": predicted_area,
                "hd95": np.asarray(self._hd95, np.float64)}

    def report(self) -> dict:
        """JSON-ready summary; ``per_image_*`` lists keep input order for best/worst selection."""
        if self.n == 0:
            raise ValueError("no images were added")
        scores = self.per_image()
        union_total = int(scores["union"].sum())
        intersection_total = int(scores["intersection"].sum())
        area_total = int(scores["true_area"].sum() + scores["predicted_area"].sum())
        return {
            "n": self.n,
            "threshold": self.threshold,
            "micro_iou": intersection_total / union_total if union_total else 1.0,
            "micro_dice": 2.0 * intersection_total / area_total if area_total else 1.0,
            "mean_iou": float(scores["iou"].mean()),
            "mean_dice": float(scores["dice"].mean()),
            "median_dice": float(np.median(scores["dice"])),
            "fraction_dice_below_0_1": float(np.mean(scores["dice"] < MISSED_DICE)),
            "pixel_accuracy": self._correct_pixels / self._total_pixels,
            "n_empty_truth": int(np.count_nonzero(scores["true_area"] == 0)),
            "n_empty_prediction": int(np.count_nonzero(scores["predicted_area"] == 0)),
            **_hd95_summary(scores["hd95"]),
            "per_image_iou": scores["iou"].tolist(),
            "per_image_dice": scores["dice"].tolist(),
            "per_image_hd95": [None if np.isnan(v) else float(v) for v in scores["hd95"]],
        }


def _hd95_summary(values: np.ndarray) -> dict:
    defined = values[~np.isnan(values)]
    return {"mean_hd95": float(defined.mean()) if len(defined) else None,
            "median_hd95": float(np.median(defined)) if len(defined) else None,
            "n_hd95_undefined": int(len(values) - len(defined))}


def segmentation_report(masks_true, probabilities_or_masks,
                        threshold: float = DEFAULT_SEGMENTATION_THRESHOLD) -> dict:
    """All metrics of one split held in memory; see ``SegmentationAccumulator`` for streaming."""
    accumulator = SegmentationAccumulator(threshold)
    accumulator.update(masks_true, probabilities_or_masks)
    return accumulator.report()


def micro_iou(masks_true, probabilities_or_masks, threshold: float = DEFAULT_SEGMENTATION_THRESHOLD) -> float:
    return segmentation_report(masks_true, probabilities_or_masks, threshold)["micro_iou"]


def mean_iou(masks_true, probabilities_or_masks, threshold: float = DEFAULT_SEGMENTATION_THRESHOLD) -> float:
    return segmentation_report(masks_true, probabilities_or_masks, threshold)["mean_iou"]


def mean_dice(masks_true, probabilities_or_masks, threshold: float = DEFAULT_SEGMENTATION_THRESHOLD) -> float:
    return segmentation_report(masks_true, probabilities_or_masks, threshold)["mean_dice"]


def pixel_accuracy(masks_true, probabilities_or_masks,
                   threshold: float = DEFAULT_SEGMENTATION_THRESHOLD) -> float:
    """Fraction of pixels right; flattered by the background, so only a side number."""
    return segmentation_report(masks_true, probabilities_or_masks, threshold)["pixel_accuracy"]


def format_segmentation_report(report: dict) -> str:
    """Short text summary for logs and the console."""
    rows = [("images", str(report["n"]))]
    for key in ("micro_iou", "mean_iou", "mean_dice", "median_dice", "pixel_accuracy"):
        rows.append((key.replace("_", " "), f"{report[key]:.4f}"))
    rows.append((f"Dice < {MISSED_DICE}", f"{report['fraction_dice_below_0_1']:.1%} of images"))
    if report.get("mean_hd95") is not None:
        rows.append(("HD95 mean / median", f"{report['mean_hd95']:.1f} / {report['median_hd95']:.1f} px"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
