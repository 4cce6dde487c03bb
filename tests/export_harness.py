"""One export round trip for every task (as keras-hub's saving/LiteRT test helpers do for every
model): ``.keras`` reload, SavedModel (``predict_pixels`` and ``serving_default`` on encoded files,
loaded the way a server loads it) and a float32 TFLite file, each compared with the Keras model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from braintumor_tf.custom_objects import load_model
from braintumor_tf.data.decode import read_image
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.export.tflite import convert_to_tflite
from braintumor_tf.tasks import get_task

OUTPUT_KEY = {"classification": "probabilities", "segmentation": "mask_probability"}


def _test_images(directory: Path, size: int) -> list[Path]:
    """Smooth grey PNGs, one at the model's size (its pixels need no resizing anywhere)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(3):
        noise = cv2.resize(rng.random((6, 6)).astype(np.float32), (size, size),
                           interpolation=cv2.INTER_CUBIC)
        path = directory / f"image{index}.png"
        cv2.imwrite(str(path), np.clip(noise * 255, 0, 255).astype(np.uint8))
        paths.append(path)
    return paths


def run_export_round_trip(task_name: str, model, tmp_path: Path, atol: float = 1e-4) -> dict:
    """Export ``model`` as ``task_name`` does and check every form against it; returns the
    largest difference seen per form (all already asserted below ``atol``)."""
    task = get_task(task_name)
    size, channels = int(model.input_shape[1]), int(model.input_shape[-1])
    paths = _test_images(tmp_path / "images", size)
    pixels = np.stack([read_image(path, channels, size) for path in paths])
    reference = model.predict(pixels, verbose=0).astype(np.float32)
    differences = {}

    model.save(tmp_path / "model.keras")
    reloaded = load_model(tmp_path / "model.keras").predict(pixels, verbose=0)
    differences["keras reload"] = float(np.abs(reloaded - reference).max())

    saved_dir, _ = task.export_savedmodel(model, tmp_path / "served" / "1", "none", 0.5)
    loaded = tf.saved_model.load(str(saved_dir))
    key = OUTPUT_KEY[task_name]
    from_pixels = loaded.signatures["predict_pixels"](pixels=tf.constant(pixels))[key].numpy()
    differences["savedmodel predict_pixels"] = float(np.abs(from_pixels - reference).max())
    encoded = tf.constant([path.read_bytes() for path in paths])
    from_files = loaded.signatures["serving_default"](images=encoded)[key].numpy()
    differences["savedmodel serving_default"] = float(np.abs(from_files - reference).max())
    runtime = load_runtime(saved_dir)
    assert runtime.task == task_name
    differences["savedmodel runtime"] = float(np.abs(runtime.predict(pixels) - reference).max())

    tflite_path = convert_to_tflite(model, tmp_path / "model_float32.tflite", "float32")
    tflite = load_runtime(tflite_path)
    assert tflite.task == task_name
    differences["tflite float32"] = float(np.abs(tflite.predict(pixels) - reference).max())

    for form, difference in differences.items():
        assert difference <= atol, f"{task_name}: {form} differs from Keras by {difference}"
    return differences
