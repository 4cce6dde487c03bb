"""Grad-CAM for any model form: the served SavedModel or LiteRT file is explained through the
``.keras`` file released beside it, when its spec says it is the same model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.overlays import explained_picture
from braintumor_tf.spec import read_spec

EXPLAIN_NEEDS_KERAS = ("--explain (Grad-CAM) needs the layers and gradients of a .keras model; "
                       "SavedModels and .tflite files are explained through a .keras file "
                       "released beside them with the same spec")


def explaining_runtime(runtime):
    """``runtime`` itself for a .keras model; else the .keras beside the export whose spec
    matches it (task, classes, geometry), loaded with the averaging its spec names."""
    if runtime.kind == "keras":
        return runtime
    path = Path(runtime.path)
    folder = path.parent  # a SavedModel version's serving base, or a .tflite file's folder
    for candidate in sorted(folder.glob("*.keras")):
        spec = read_spec(candidate)
        if spec is not None and (spec.task, spec.class_names, spec.image_size, spec.channels) \
                == (runtime.task, tuple(runtime.class_names), runtime.image_size,
                    runtime.channels):
            return load_runtime(candidate, batch_size=runtime.batch_size)
    raise ValueError(f"{EXPLAIN_NEEDS_KERAS}; none found in {folder} for {path.name}")


def caption(record: dict) -> str:
    name = record["class_name"]
    text = f"Grad-CAM: {name} {record['probabilities'][name] * 100:.0f} %"
    if record.get("in_distribution") is False:
        text += " - not like the training slices"
    return text


def grad_cam_pictures(explainer, pixels: np.ndarray, records: list[dict],
                      originals: list[np.ndarray]) -> list[np.ndarray]:
    """One captioned picture per image at its own size, explaining the class the model
    answered (``records``); each record gets ``explanation_agrees``: whether the explaining
    .keras model, with its own averaging, gives that class too."""
    from braintumor_tf.models.gradcam import GradCAM

    class_ids = np.array([record["class_id"] for record in records])
    heatmaps, _ = GradCAM(explainer.keras_model).heatmaps(pixels, class_ids)
    answered = explainer.predict(pixels).argmax(axis=-1)
    pictures = []
    for record, heatmap, original, own in zip(records, heatmaps, originals, answered, strict=True):
        record["explanation_agrees"] = bool(own == record["class_id"])
        pictures.append(explained_picture(original, heatmap, caption(record)))
    return pictures
