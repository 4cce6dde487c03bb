"""Fit a classifier's out-of-distribution guard and temperature on its run's own splits."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.export.validation_data import load_pixels
from braintumor_tf.log import log
from braintumor_tf.models.guard import (
    DEFAULT_VALIDATION_QUANTILE,
    fit_guard,
    fit_temperature,
    guard_path_for,
    scale_probabilities,
)
from braintumor_tf.models.layers import graph_intensity
from braintumor_tf.spec import read_spec, spec_for, write_keras_spec
from braintumor_tf.training.metrics import expected_calibration_error

# Training images for the class means and covariance: enough for a 256x256 covariance, a
# sample keeps memory (224 px float32: 0.2 MB each) and time bounded.
TRAIN_IMAGES = 3000
VAL_IMAGES = 3000


def embed_guard(keras_path: Path, model, guard_bytes: bytes, threshold: float,
                temperature: float, class_weights=None) -> None:
    """Store the guard inside the .keras file with its spec, so the file answers the same wherever
    it is copied (the .npz beside it stays for people who read it)."""
    spec = read_spec(keras_path)
    if spec is None:  # written before specs: describe it from the graph itself
        spec = spec_for("classification", CLASS_NAMES, model.input_shape[1], model.input_shape[3],
                        intensity=graph_intensity(model))
    write_keras_spec(keras_path, spec.replace(temperature=float(temperature),
                                              ood_threshold=float(threshold),
                                              class_weights=class_weights), guard=guard_bytes)


def out_of_fold_arrays(rows: Sequence[dict], class_weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (times the class weights, renormalised) and labels of out-of-fold rows."""
    probabilities = np.array([[float(row[name]) for name in CLASS_NAMES] for row in rows])
    if class_weights is not None:
        probabilities = probabilities * np.asarray(class_weights)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities, np.array([CLASS_NAMES.index(row["label"]) for row in rows])


def class_weight_vector(weights: Mapping[str, float] | None,
                        class_names: Sequence[str] = CLASS_NAMES) -> list[float] | None:
    """``{"notumor": 0.4}`` -> one weight per class (1 for those not named); None for none."""
    if not weights:
        return None
    unknown = sorted(set(weights) - set(class_names))
    if unknown:
        raise ValueError(f"class weight for unknown class(es) {unknown}; classes are "
                         f"{list(class_names)}")
    return [float(weights.get(name, 1.0)) for name in class_names]


def calibrate_classifier(keras_path: str | Path, train_rows: Sequence[tuple[str, int]],
                         val_rows: Sequence[tuple[str, int]],
                         validation_quantile: float = DEFAULT_VALIDATION_QUANTILE,
                         class_weights: Mapping[str, float] | None = None,
                         out_of_fold: Sequence[dict] | None = None) -> dict:
    """Write ``ood_guard.npz`` and ``ood_guard.json`` beside the model; returns the report.

    Training images give the class means and covariance, validation images the threshold and
    the temperature (the test split stays untouched). Every runtime that loads the model from
    this folder then returns calibrated probabilities and an OOD score. ``class_weights``
    (e.g. ``{"notumor": 0.4}``, chosen out of fold: docs/RESULTS.md) then multiply the
    calibrated probabilities, renormalised, in every runtime and export.

    ``out_of_fold``: a CV run's out-of-fold rows. A fold ensemble's validation images trained
    most of its members, so its temperature is fitted on these instead (each image answered by
    the fold model that never saw its patient): fitted on its own validation, the release CV's
    ensemble got 0.47, which made out-of-fold answers worse calibrated (ECE 0.046 -> 0.055).
    """
    from braintumor_tf.custom_objects import load_model

    keras_path = Path(keras_path)
    model = load_model(keras_path, compile=False)
    if isinstance(model.output_shape, dict) or len(model.output_shape) != 2:
        raise ValueError(f"{keras_path} is not a plain classifier; calibrate the trained model")
    size, channels = model.input_shape[1], model.input_shape[3]
    log(f"calibrating {keras_path.name}: features of up to {TRAIN_IMAGES} training and "
        f"{VAL_IMAGES} validation images")
    train_pixels, train_labels = load_pixels(train_rows, size, channels, TRAIN_IMAGES, seed=2)
    val_pixels, val_labels = load_pixels(val_rows, size, channels, VAL_IMAGES, seed=3)
    guard, report, val_probabilities = fit_guard(model, train_pixels, train_labels, val_pixels,
                                                 val_labels, validation_quantile)
    guard.class_weights = class_weight_vector(class_weights)
    guard.__post_init__()
    report["class_weights"] = guard.class_weights
    if guard.class_weights is not None:  # the weights come before the temperature (the layer)
        val_probabilities = val_probabilities * np.asarray(guard.class_weights)
        val_probabilities /= val_probabilities.sum(axis=1, keepdims=True)
        guard.temperature = fit_temperature(val_probabilities, val_labels)
    if out_of_fold:
        probabilities, labels = out_of_fold_arrays(out_of_fold, guard.class_weights)
        guard.temperature = fit_temperature(probabilities, labels)
        report.update(
            temperature=guard.temperature,
            temperature_from=f"out-of-fold predictions of {len(labels)} images",
            out_of_fold_ece_before=expected_calibration_error(labels, probabilities),
            out_of_fold_ece_after=expected_calibration_error(
                labels, scale_probabilities(probabilities, guard.temperature)))
    report["val_ece_before"] = expected_calibration_error(val_labels, val_probabilities)
    report["val_ece_after"] = expected_calibration_error(
        val_labels, scale_probabilities(val_probabilities, guard.temperature))
    report = {key: (float(value) if isinstance(value, np.floating) else value)
              for key, value in report.items()}
    path = guard.save(guard_path_for(keras_path))
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    embed_guard(keras_path, model, path.read_bytes(), guard.threshold, guard.temperature,
                guard.class_weights)
    log(f"guard: {path} — threshold {guard.threshold:.1f} flags "
        f"{report['val_flagged'] * 100:.1f} % of validation slices; temperature "
        f"{guard.temperature:.2f} (validation ECE {report['val_ece_before']:.3f} -> "
        f"{report['val_ece_after']:.3f})"
        + (f"; temperature from {report['temperature_from']}, ECE "
           f"{report['out_of_fold_ece_before']:.3f} -> {report['out_of_fold_ece_after']:.3f}"
           if out_of_fold else ""))
    return report
