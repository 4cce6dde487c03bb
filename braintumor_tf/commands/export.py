"""Export a trained classifier or segmenter for TF Serving (versioned SavedModel) and the edge (TFLite).

Layout of ``out_base`` (what TF Serving's ``base_path`` points at)::

    out_base/<version>/            SavedModel, one integer directory per export, never overwritten
    out_base/<name>_<variant>.tflite (+ .json with dtypes, scale, zero point)
    out_base/tflite_parity.json|md
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data import splits as splits_lib
from braintumor_tf.data.decode import DecodeError, read_image
from braintumor_tf.data.discover import CLASS_NAMES, discover_images
from braintumor_tf.export.parity import segmentation_parity, tflite_parity
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.export.savedmodel import (
    export_classifier,
    export_segmenter,
    model_geometry,
    next_version_dir,
)
from braintumor_tf.export.tflite import TFLITE_VARIANTS, convert_to_tflite, float32_model
from braintumor_tf.models.tta import with_test_time_augmentation


def parse_variants(text: str | Sequence[str] | None) -> tuple[str, ...]:
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    variants = tuple(dict.fromkeys(v.strip() for v in items if v.strip()))
    unknown = [v for v in variants if v not in TFLITE_VARIANTS]
    if unknown:
        raise ValueError(f"unknown TFLite variant(s) {unknown}: choose from {','.join(TFLITE_VARIANTS)}")
    return variants


def resolve_keras_model(model_path=None, run_dir=None) -> Path:
    """TFLite conversion and Grad-CAM need the Keras graph, so exports start from a .keras file."""
    if (model_path is None) == (run_dir is None):
        raise ValueError("give exactly one of --model PATH.keras or --run RUN_DIR")
    if run_dir is not None:
        run_dir = Path(run_dir)
        for name in ("model.keras", "best.keras"):
            if (run_dir / name).is_file():
                return run_dir / name
        raise FileNotFoundError(f"no model.keras or best.keras in run directory {run_dir}")
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.suffix != ".keras":
        raise ValueError(f"export needs a .keras model (SavedModels and .tflite files are already "
                         f"exports), got {path}")
    return path


@contextlib.contextmanager
def _float32_reference(model, keras_path: Path):
    """The float32 model the files were converted from, as a runtime; named after the trained
    file in the reports."""
    with tempfile.TemporaryDirectory() as tmp:
        twin = Path(tmp) / keras_path.name
        model.save(twin)
        runtime = load_runtime(twin, class_names=CLASS_NAMES)
        runtime.path = keras_path
        yield runtime


def version_dir(out_base: Path, version: int | None) -> Path:
    if version is None:
        return next_version_dir(out_base)
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    target = out_base / str(version)
    if target.exists():
        raise FileExistsError(
            f"version {version} already exists in {out_base}; versions are never overwritten "
            f"(omit --version to use the next free one, {next_version_dir(out_base).name})")
    return target


def _manifest_rows(run_dir: Path, split: str) -> list[tuple[str, int]]:
    manifest = run_dir / "split_manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"no split_manifest.csv in run directory {run_dir}")
    return [(row["path"], int(row["label"])) for row in splits_lib.manifest_split(manifest, split)]


def _folder_rows(folder) -> list[tuple[str, int]]:
    return [(r.path, r.label) for r in discover_images([Path(folder)], require_label=False)]


def load_pixels(rows: Sequence[tuple[str, int]], image_size: int, channels: int, limit: int,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Decoded with read_image, as training decodes, so calibration sees training statistics."""
    rows = list(rows)
    if len(rows) > limit:
        chosen = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(chosen)]
    images, labels = [], []
    for path, label in rows:
        try:
            images.append(read_image(path, channels, image_size))
        except (DecodeError, OSError):
            continue
        labels.append(label)
    if not images:
        raise ValueError(f"none of the {len(rows)} selected images could be read")
    return np.stack(images).astype(np.float32), np.asarray(labels)


def _sample(items: list, limit: int, seed: int) -> list:
    if len(items) <= limit:
        return items
    chosen = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(chosen)]


def segmenter_validation(image_size: int, channels: int, limit: int, run_dir=None,
                         validation_data=None, masks=None, representative_data=None,
                         seed: int = 1) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Validation pixels and, when the data has them, truth masks at the model's size (nearest,
    as training sees them). Truth is optional: agreement with the Keras masks needs none."""
    from braintumor_tf.data.segmentation import find_segmentation_images, mask_at_size

    reader, with_truth = None, set()
    if run_dir is not None:
        from braintumor_tf.config import load_config
        from braintumor_tf.tasks.segmentation import segmentation_source

        paths = [path for path, _ in _manifest_rows(Path(run_dir), "val")]
        config_file = Path(run_dir) / "config.yaml"
        if config_file.is_file():
            source, targets = segmentation_source(load_config(config_file), Path(run_dir))
            by_abs = {os.path.abspath(p): p for p in source.images_with(targets)}
            # Manifest paths may be relative to where training ran; the reader wants the source's.
            paths = [by_abs.get(os.path.abspath(p), p) for p in paths]
            reader, with_truth = source.mask_reader(targets), set(by_abs.values())
    elif validation_data is not None:
        source = find_segmentation_images(validation_data, masks)
        targets = "masks" if source.has_masks else "annotations" if source.has_annotations else None
        if targets is None:
            paths = list(source.image_paths)
        else:
            paths = source.images_with(targets)
            reader, with_truth = source.mask_reader(targets), set(paths)
    elif representative_data is not None:
        paths = [path for path, _ in _folder_rows(representative_data)]
    else:
        return None
    images, truths = [], []
    for path in _sample(paths, limit, seed):
        try:
            images.append(read_image(path, channels, image_size))
        except (DecodeError, OSError):
            continue
        truths.append(mask_at_size(reader, path, image_size) if path in with_truth else None)
    if not images:
        raise ValueError(f"none of the {min(len(paths), limit)} selected validation images could be read")
    if any(t is None for t in truths):
        return np.stack(images).astype(np.float32), None
    return np.stack(images).astype(np.float32), np.stack(truths)


def export_model(
    out_base: str | os.PathLike,
    model_path=None,
    run_dir=None,
    version: int | None = None,
    tflite_variants: str | Sequence[str] | None = None,
    representative_data=None,
    validation_data=None,
    int8_io: str = "int8",
    calibration_images: int = 200,
    parity_images: int = 1000,
    masks=None,
    segmenter_calibration_images: int = 32,
    segmenter_parity_images: int = 100,
    tta: str = "none",
    log: Callable[[str], None] = print,
) -> dict:
    """SavedModel version, then TFLite variants, then the parity report.

    Data for calibration and parity is read before anything is written, so a missing or
    empty folder fails without leaving a version behind. A UNet is slow to calibrate and to
    run on CPU, so segmenters use fewer calibration and parity images. ``tta`` builds a
    segmenter's test-time augmentation into every exported file (``models.tta``).
    """

    from braintumor_tf.custom_objects import load_model

    out_base = Path(out_base)
    variants = parse_variants(tflite_variants)
    keras_path = resolve_keras_model(model_path, run_dir)
    target = version_dir(out_base, version)
    # Exported in float32 even when trained in mixed precision: TFLite has no bfloat16 ops,
    # bfloat16 is only fast on CPUs with native support, and parity is against the float model.
    model = float32_model(load_model(keras_path, compile=False))
    image_size, channels = model_geometry(model)
    segmenter = len(model.output_shape) == 4
    model = with_test_time_augmentation(model, tta)  # a clear error for classifiers

    calibration = validation = None
    if "int8" in variants:
        if run_dir is not None:
            rows = _manifest_rows(Path(run_dir), "train")
        elif representative_data is not None:
            rows = _folder_rows(representative_data)
        else:
            raise ValueError("--tflite int8 needs --representative-data DATA_FOLDER (training "
                             "images) or --run RUN_DIR")
        count = segmenter_calibration_images if segmenter else calibration_images
        calibration, _ = load_pixels(rows, image_size, channels, count)
    if variants and segmenter:
        validation = segmenter_validation(image_size, channels, segmenter_parity_images, run_dir,
                                          validation_data, masks, representative_data)
    if variants and not segmenter:
        if run_dir is not None:
            rows = _manifest_rows(Path(run_dir), "val")
        elif validation_data is not None or representative_data is not None:
            rows = _folder_rows(validation_data or representative_data)
        else:
            rows = []
        if rows:
            validation = load_pixels(rows, image_size, channels, parity_images, seed=1)

    if segmenter:
        saved = export_segmenter(model, target, tta=tta)
        names = {"task": "segmentation", "test_time_augmentation": tta}
    else:
        saved = export_classifier(model, target, CLASS_NAMES)
        names = {"class_names": list(CLASS_NAMES)}
    log(f"SavedModel version {saved.name} written to {saved}")
    summary: dict = {"model": str(keras_path), "savedmodel": str(saved), "version": int(saved.name),
                     "tflite": {}, "parity": None, **names}
    for variant in variants:
        path = convert_to_tflite(
            model, out_base / f"{out_base.name}_{variant}.tflite", variant,
            representative_images=calibration, int8_io=int8_io, overwrite=True,
            metadata={"source_version": int(saved.name), **names,
                      "image_size": image_size, "channels": channels})
        summary["tflite"][variant] = str(path)
        log(f"TFLite {variant}: {path} ({path.stat().st_size / 1024:.1f} KB)")
    if variants and segmenter and validation is not None:
        pixels, truth = validation
        with _float32_reference(model, keras_path) as reference:
            report = segmentation_parity(reference, summary["tflite"], pixels, truth,
                                         out_dir=out_base)
        summary["parity"] = {v: {"dice_vs_reference": e["dice_vs_reference"],
                                 "dice_delta_vs_truth": e["dice_delta_vs_truth"],
                                 "passed": e["passed"]} for v, e in report["variants"].items()}
        summary["parity_passed"] = report["passed"]
        log(f"parity on {len(pixels)} images ({'with' if truth is not None else 'without'} truth "
            "masks): " + ", ".join(f"{v} Dice vs Keras {e['dice_vs_reference']:.4f} "
                                   f"({'pass' if e['passed'] else 'FAIL'})"
                                   for v, e in report["variants"].items())
            + f"; written to {out_base / 'tflite_parity.md'}")
    elif variants and validation is None:
        log("no validation images (give --validation-data or --representative-data): "
            "parity report skipped")
    elif variants:
        pixels, labels = validation
        labels = labels if np.all(labels >= 0) else None
        with _float32_reference(model, keras_path) as reference:
            report = tflite_parity(reference, summary["tflite"], pixels, labels, out_dir=out_base)
        summary["parity"] = {v: {"agreement": e["agreement"], "passed": e["passed"]}
                             for v, e in report["variants"].items()}
        summary["parity_passed"] = report["passed"]
        log(f"parity on {len(pixels)} images: "
            + ", ".join(f"{v} {e['agreement'] * 100:.2f} % "
                        f"({'no gate' if e['passed'] is None else 'pass' if e['passed'] else 'FAIL'})"
                        for v, e in report["variants"].items())
            + f"; written to {out_base / 'tflite_parity.md'}")
    return summary
