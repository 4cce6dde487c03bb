"""Score a saved segmenter (any format) against COCO annotations and/or expert masks.

Scored where users look: the probability map is resized back to each image's own size and then
thresholded, as ``predict`` and the SavedModel return masks (``vs_masks``, ``vs_annotations``).
The model-size scores (truth resized down with nearest, as training sees it) are kept under
``at_model_size``. Each truth gets its own block because the public annotations (boxes) and the
expert outlines disagree a lot.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.datasets import image_dataset
from braintumor_tf.data.decode import check_images, read_image
from braintumor_tf.data.manifest import manifest_split
from braintumor_tf.data.masks import resize_mask
from braintumor_tf.data.segmentation import SegmentationSource, find_segmentation_images, mask_at_size
from braintumor_tf.export.runtimes import at_size
from braintumor_tf.log import logger
from braintumor_tf.plots import plot_segmentation_cases
from braintumor_tf.training.seg_metrics import (
    SegmentationAccumulator,
    format_segmentation_report,
)

SUMMARY_KEYS = ("n", "micro_iou", "mean_iou", "mean_dice", "median_dice", "fraction_dice_below_0_1",
                "pixel_accuracy", "n_empty_truth", "n_empty_prediction", "mean_hd95", "median_hd95",
                "n_hd95_undefined")
# Where a report keeps the scores at the model's input size (vs_* are at each image's own size).
MODEL_SIZE_KEY = "at_model_size"
OVERLAY_CASES = 6
# Tumour size as a fraction of the slice's pixels (truth at its own size). Half the expert
# outlines of pkdarabi cover under 1.3 %: the small bin is where a mean hides its failures.
SIZE_BINS = (("small", 0.0, 0.01), ("medium", 0.01, 0.03), ("large", 0.03, 1.01))


def by_tumour_size(dice: Sequence[float], fractions: Sequence[float]) -> dict:
    """Dice per tumour-size bin (slices with an empty truth are left out: no size to bin)."""
    dice, fractions = np.asarray(dice, float), np.asarray(fractions, float)
    if dice.shape != fractions.shape:
        raise ValueError(f"{len(dice)} Dice values for {len(fractions)} tumour sizes")
    breakdown = {}
    for name, low, high in SIZE_BINS:
        chosen = dice[(fractions > 0) & (fractions >= low) & (fractions < high)]
        breakdown[name] = {
            "tumour_fraction": [low, min(high, 1.0)], "n": int(chosen.size),
            "mean_dice": float(chosen.mean()) if chosen.size else None,
            "median_dice": float(np.median(chosen)) if chosen.size else None,
            "fraction_dice_below_0_1": float(np.mean(chosen < 0.1)) if chosen.size else None}
    return breakdown


def format_size_breakdown(breakdown: dict) -> str:
    rows = []
    for name, row in breakdown.items():
        low, high = row["tumour_fraction"]
        span = f"{low:.0%}-{high:.0%} of the slice"
        if not row["n"]:
            rows.append(f"  {name:<7}({span}): no slices")
            continue
        rows.append(f"  {name:<7}({span}): {row['n']} slices, mean Dice {row['mean_dice']:.3f}, "
                    f"median {row['median_dice']:.3f}, "
                    f"{row['fraction_dice_below_0_1']:.1%} below 0.1")
    return "by tumour size:\n" + "\n".join(rows)


def _truths(source: SegmentationSource) -> dict[str, tuple]:
    """report key -> (mask reader, images that have this truth)."""
    truths = {}
    if source.has_annotations:
        truths["vs_annotations"] = (source.mask_reader("annotations"), None)
    if source.has_masks:
        truths["vs_masks"] = (source.mask_reader("masks"), set(source.mask_paths))
    if not truths:
        raise ValueError("no truth to score against: the data has no COCO annotations "
                         "(_annotations.coco.json) and no mask folder was given (--masks DIR)")
    return truths


def evaluate_segmentation_images(runtime, image_paths: Sequence[str], source: SegmentationSource,
                                 out_dir=None, json_path=None, threshold: float | None = None,
                                 batch_size: int = 32, verbose: bool = True, shift=None) -> dict:
    """One pass over the images; every truth is accumulated alongside, overlays re-predict only the
    few cases shown, so nothing of split size is held in memory. ``shift`` (evaluation/shifts.py):
    every image re-rendered first, and its truth moved with it when the shift is geometric."""
    runtime.expect_task("segmentation", f"{runtime.path} is a {runtime.task} model, not a segmenter")
    truths = _truths(source)
    threshold = runtime.threshold if threshold is None else float(threshold)
    image_paths = [os.fspath(p) for p in image_paths]
    if not image_paths:
        raise ValueError("no images to evaluate")
    size = runtime.image_size
    # Scored twice in one pass: at each image's own size (the probability map resized back, then
    # thresholded, as users get masks) and at the model's input size (the truth resized down).
    native = {key: SegmentationAccumulator(threshold) for key in truths}
    model_size = {key: SegmentationAccumulator(threshold) for key in truths}
    scored: dict[str, list[int]] = {key: [] for key in truths}  # image indices per truth
    fractions: dict[str, list[float]] = {key: [] for key in truths}  # tumour share of the slice
    index = 0
    move = (lambda mask: mask) if shift is None or shift.geometry is None else shift.geometry
    for batch in _pixel_batches(runtime, image_paths, size, batch_size, shift):
        probabilities = np.asarray(runtime.predict(batch))[..., 0]
        paths = image_paths[index:index + len(probabilities)]
        for key, (reader, has_truth) in truths.items():
            for k, path in enumerate(paths):
                if has_truth is not None and path not in has_truth:
                    continue
                truth = move(np.asarray(reader(path), np.uint8))
                model_size[key].update(resize_mask(truth, size)[np.newaxis], probabilities[k:k + 1])
                native[key].update(truth[np.newaxis], at_size(probabilities[k], truth.shape)[np.newaxis])
                scored[key].append(index + k)
                fractions[key].append(float(np.mean(truth > 0)))
        index += len(probabilities)

    report: dict = {"n": len(image_paths), "model": str(runtime.path), "model_kind": runtime.kind,
                    "image_size": size, "threshold": threshold, "resolution": "native",
                    MODEL_SIZE_KEY: {}}
    per_image = {}
    for key in truths:
        if native[key].n == 0:
            continue
        full = native[key].report()
        report[key] = {k: full[k] for k in SUMMARY_KEYS}
        report[key]["by_tumour_size"] = by_tumour_size(full["per_image_dice"], fractions[key])
        report[MODEL_SIZE_KEY][key] = {k: model_size[key].report()[k] for k in SUMMARY_KEYS}
        per_image[key] = (scored[key], full["per_image_iou"], full["per_image_dice"],
                          fractions[key], full["per_image_hd95"])
        if verbose:
            print(f"{key.replace('_', ' ')} (at each image's own size):\n"
                  f"{format_segmentation_report(full)}\n"
                  f"{format_size_breakdown(report[key]['by_tumour_size'])}", flush=True)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        _write_per_image(out_dir / "predictions.csv", image_paths, per_image)
        for key, (indices, _, dice, _, _) in per_image.items():
            report.setdefault("overlays", {})[key] = _write_overlays(
                runtime, image_paths, indices, dice, truths[key][0], out_dir, key.replace("vs_", ""),
                threshold)
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def _pixel_batches(runtime, image_paths, size: int, batch_size: int, shift=None):
    """Model-size pixel batches, read by the one predictor (as ``predict`` reads them); with
    ``shift``, each file re-rendered first (at its own size) and decoded again, as that export
    would reach a user."""
    from braintumor_tf.serving.predictor import Predictor

    channels = runtime.channels
    if shift is None:
        read = Predictor(runtime).model_input
        for batch in image_dataset(image_paths, size, channels, batch_size, read):
            yield batch.numpy()
        return
    from concurrent.futures import ThreadPoolExecutor

    from braintumor_tf.evaluation.shifts import shifted_pixels

    def load(path):
        return shifted_pixels(read_image(path, channels), shift, channels, size, name=path)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(image_paths), batch_size):
            yield np.stack(list(pool.map(load, image_paths[start:start + batch_size])))


def segmentation_shift_report(runtime, image_paths, source: SegmentationSource, names="all",
                              threshold: float | None = None, batch_size: int = 32) -> dict:
    """Mean Dice, slices below 0.1 and HD95 at each slice's own size, unshifted and under each
    shift (geometric shifts move the truth too), and each shift's change from unshifted."""
    from braintumor_tf.evaluation.shifts import select_shifts

    def scores(shift):
        report = evaluate_segmentation_images(runtime, image_paths, source, threshold=threshold,
                                              batch_size=batch_size, verbose=False, shift=shift)
        truth = "vs_masks" if "vs_masks" in report else "vs_annotations"
        return {key: report[truth][key] for key in ("n", "mean_dice", "median_dice",
                                                     "fraction_dice_below_0_1", "mean_hd95")}

    result = {"truth": "expert masks" if source.has_masks else "annotations",
              "unshifted": scores(None), "shifts": {}}
    for shift in select_shifts(names):
        entry = {"kind": shift.kind, **scores(shift)}
        entry["dice_change"] = entry["mean_dice"] - result["unshifted"]["mean_dice"]
        result["shifts"][shift.name] = entry
        logger.info(f"shift {shift.name}: mean Dice {entry['mean_dice']:.4f} "
                    f"({entry['dice_change']:+.4f})")
    return result


def format_segmentation_shifts(report: dict) -> str:
    lines = [f"Rendering shifts (segmenter, vs {report['truth']}, each slice at its own size)", "",
             "| shift | mean Dice | change | median | below 0.1 | HD95 mean |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, entry in [("none", report["unshifted"]), *report["shifts"].items()]:
        hd95 = "n/a" if entry["mean_hd95"] is None else f"{entry['mean_hd95']:.1f}"
        median = entry.get("median_dice")
        median = "n/a" if median is None or median != median else f"{median:.3f}"  # NaN: pooled
        lines.append(f"| {name} | {entry['mean_dice']:.3f} | {entry.get('dice_change', 0.0):+.3f} | "
                     f"{median} | {entry['fraction_dice_below_0_1'] * 100:.1f} % | {hd95} |")
    return "\n".join(lines) + "\n"


def _write_per_image(path: Path, image_paths, per_image) -> None:
    columns = {i: {} for i in range(len(image_paths))}
    for key, (indices, iou, dice, fraction, hd95) in per_image.items():
        for i, image_iou, image_dice, share, distance in zip(indices, iou, dice, fraction, hd95,
                                                             strict=True):
            columns[i][f"iou_{key}"] = f"{image_iou:.6f}"
            columns[i][f"dice_{key}"] = f"{image_dice:.6f}"
            columns[i][f"tumour_fraction_{key}"] = f"{share:.6f}"
            columns[i][f"hd95_{key}"] = "" if distance is None else f"{distance:.3f}"
    names = [f"{metric}_{key}" for key in per_image
             for metric in ("iou", "dice", "tumour_fraction", "hd95")]
    with open_csv(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", *names])
        for i, image_path in enumerate(image_paths):
            writer.writerow([image_path, *(columns[i].get(name, "") for name in names)])


def _write_overlays(runtime, image_paths, indices, dice, reader, out_dir: Path, name: str,
                    threshold: float) -> list[str]:
    """Best and worst cases by Dice (ties broken by order), each as image / truth / prediction."""
    order = np.argsort(np.asarray(dice), kind="stable")
    count = min(OVERLAY_CASES, len(order))
    written = []
    for label, chosen in (("worst", order[:count]), ("best", order[::-1][:count])):
        paths = [image_paths[indices[k]] for k in chosen]
        pixels = np.stack([read_image(p, runtime.channels, runtime.image_size) for p in paths])
        probabilities = np.asarray(runtime.predict(pixels))[..., 0]
        cases = [(pixels[j], mask_at_size(reader, p, runtime.image_size), probabilities[j],
                  f"{filesystem.basename(p)[:18]} Dice {dice[k]:.2f}")
                 for j, (p, k) in enumerate(zip(paths, chosen, strict=True))]
        target = out_dir / f"overlays_{name}_{label}.png"
        plot_segmentation_cases(cases, target, threshold)
        written.append(str(target))
    return written


def _merge(sources: Sequence[SegmentationSource]) -> SegmentationSource:
    merged = SegmentationSource([], [])
    for source in sources:
        merged.image_paths += source.image_paths
        merged.folder_splits += source.folder_splits
        merged.coco_splits += source.coco_splits
        merged.mask_paths.update(source.mask_paths)
        merged.without_mask += source.without_mask
        merged.mask_root = merged.mask_root or source.mask_root
    if any(s.has_annotations for s in sources) and not all(s.has_annotations for s in sources):
        raise ValueError("some --data folders have COCO annotations and some do not; evaluate them "
                         "separately")
    return merged


def evaluate_segmenter(runtime, data_paths: Sequence[str | os.PathLike], masks=None, json_path=None,
                       out_dir=None, batch_size: int = 32, threshold: float | None = None,
                       split: str | None = None, shifts: str | None = None) -> dict:
    """Every decodable image under ``data_paths`` (COCO split folders, or plain image folders when
    ``masks`` is given), or the ``split`` rows of a run's ``split_manifest.csv`` (their folders
    supply the annotations); unreadable files are reported and skipped."""
    source, good, bad = segmentation_images(data_paths, masks, split)
    report = evaluate_segmentation_images(runtime, good, source, out_dir=out_dir, json_path=None,
                                          threshold=threshold, batch_size=batch_size)
    report["skipped_files"] = bad
    report["images_without_mask"] = len(source.without_mask) if masks is not None else None
    if shifts is not None:
        report["shifts"] = segmentation_shift_report(runtime, good, source, shifts, threshold,
                                                     batch_size)
        print(format_segmentation_shifts(report["shifts"]), flush=True)
        if out_dir is not None:
            (Path(out_dir) / "shifts.md").write_text(format_segmentation_shifts(report["shifts"]))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def segmentation_images(data_paths: Sequence[str | os.PathLike], masks=None,
                        split: str | None = None) -> tuple[SegmentationSource, list[str], list[dict]]:
    """The source (annotations, masks), the decodable images to score, and the unreadable ones."""
    # Folders, manifests, their rows and ``masks`` may be scheme:// (gs://, ...): kept as str,
    # as a Path would drop a slash of the scheme, and compared as written (no links to resolve).
    manifests = [p if filesystem.is_remote(p) else Path(p) for p in data_paths
                 if str(p).endswith(".csv")]
    if manifests and len(manifests) != len(data_paths):
        raise ValueError("give either split manifests or data folders for a segmenter, not both")
    sources, wanted = [], None
    if manifests:
        chosen = [row["path"] for manifest in manifests for row in manifest_split(manifest, split)]
        wanted = {_real(path) for path in chosen}
        for folder in sorted({filesystem.dirname(path) if filesystem.is_remote(path)
                              else str(Path(path).parent) for path in chosen}):
            sources.append(find_segmentation_images(folder, masks))
    else:
        sources = [find_segmentation_images(path, masks) for path in data_paths]
    source = _merge(sources)
    candidates = source.image_paths
    if wanted is not None:
        candidates = [p for p in candidates if _real(p) in wanted]
    if not source.has_annotations:
        candidates = [p for p in candidates if p in source.mask_paths]
    good, bad = check_images(candidates)
    if bad:
        logger.warning(f"skipped {len(bad)} unreadable files: "
                       + "; ".join(f"{b['path']} ({b['reason']})" for b in bad[:5])
                       + (" ..." if len(bad) > 5 else ""))
    return source, good, bad


def _real(path) -> str:
    """What a manifest row and a listed image are matched on: the resolved local file, or a
    remote URL as written."""
    return path if filesystem.is_remote(path) else os.path.realpath(path)
