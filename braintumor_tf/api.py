"""The Python API: ``braintumor_tf.load(path)`` gives one object for a trained model in any form.

Inputs are file paths or numpy arrays (grey [H, W] / [H, W, 1], or RGB [H, W, 3] / RGBA, pixel
values 0..255 as image libraries return them; [N, H, W, C] and [N, H, W] arrays are batches).
Each input gets one record, in order; an input that cannot be read gets a record with its
``error`` and no prediction, so one bad file never costs the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from braintumor_tf.data.decode import DecodeError, read_image, resize_image
from braintumor_tf.data.intensity import percentile_scaled
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.inference.classification import class_record
from braintumor_tf.inference.common import error_text
from braintumor_tf.inference.explain import explaining_runtime, grad_cam_pictures
from braintumor_tf.overlays import mask_overlay

_LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)


def load(path: str | os.PathLike, batch_size: int = 32, num_threads: int | None = None) -> Model:
    """A ``.keras`` file, a SavedModel folder, a TF Serving base folder or a ``.tflite`` file.
    Class names come from the file's metadata where it has them (the package's four otherwise).
    ``num_threads``: LiteRT threads for a ``.tflite`` file (its default uses one)."""
    return Model(load_runtime(path, batch_size=batch_size,
                              num_threads=num_threads))


class Model:
    """A loaded classifier or segmenter (``task``); ``predict`` and ``explain`` take the same
    inputs."""

    def __init__(self, runtime):
        self.runtime = runtime

    def __repr__(self) -> str:
        return (f"braintumor_tf.Model(task={self.task!r}, kind={self.runtime.kind!r}, "
                f"path='{self.runtime.path}')")

    @property
    def task(self) -> str:
        return self.runtime.task

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.runtime.class_names

    @property
    def image_size(self) -> int:
        return self.runtime.image_size

    def predict(self, inputs) -> list[dict]:
        """Classifier: ``class_name``, ``class_id``, ``probabilities`` (name -> probability),
        ``ood_score`` and ``in_distribution`` (False: not like the MRI slices the model was
        trained on; both None when the model has no guard, see ``braintumor-tf calibrate``).
        Segmenter: ``mask`` (uint8 0/1 at the input's own size), ``tumour_area_pixels``,
        ``tumour_fraction``. Every record has ``input`` and ``error`` (None when predicted)."""
        return self._predict_items(_as_items(inputs))[1]

    def _predict_items(self, items):
        """(images as read, records): each input is decoded once."""
        images, errors = self._read(items)
        readable = [index for index, image in enumerate(images) if image is not None]
        outputs = {}
        if readable:
            pixels = np.stack([resize_image(images[i], self.image_size) for i in readable])
            probabilities, scores = self.runtime.predict_with_scores(pixels)
            inside = self.runtime.in_distribution(scores)
            outputs = {index: (probabilities[row], None if scores is None else scores[row],
                               None if inside is None else inside[row])
                       for row, index in enumerate(readable)}
        return images, [self._record(label, images[index], outputs.get(index), errors[index])
                        for index, (label, _) in enumerate(items)]

    def explain(self, inputs) -> list[np.ndarray | None]:
        """Pictures to look at, RGB uint8 at each input's size: the classifier's Grad-CAM heatmap
        over the slice with a caption and colour scale (exports through the .keras file released
        beside them), the segmenter's mask tinted over the slice.
        ``None`` for an input that could not be read."""
        items = _as_items(inputs)
        if self.task == "segmentation":
            images, records = self._predict_items(items)
            return [None if record["error"] else mask_overlay(image, record["mask"])
                    for record, image in zip(records, images, strict=True)]
        explainer = explaining_runtime(self.runtime)
        images, records = self._predict_items(items)
        readable = [index for index, record in enumerate(records) if not record["error"]]
        pictures: list[np.ndarray | None] = [None] * len(items)
        if readable:
            pixels = np.stack([resize_image(images[i], self.image_size) for i in readable])
            drawn = grad_cam_pictures(explainer, pixels, [records[i] for i in readable],
                                      [images[i] for i in readable])
            for index, picture in zip(readable, drawn, strict=True):
                pictures[index] = picture
        return pictures

    def _read(self, items):
        images, errors = [], []
        for label, source in items:
            try:
                if isinstance(source, np.ndarray):
                    images.append(_array_image(source, self.runtime.channels))
                else:
                    images.append(read_image(source, self.runtime.channels))
                errors.append(None)
            except (DecodeError, OSError, ValueError) as error:
                images.append(None)
                errors.append(error_text(label, error))
        return images, errors

    def _record(self, label: str, image, output, error) -> dict:
        if self.task == "classification":
            probabilities, score, inside = output if output is not None else (None, None, None)
            record = class_record(label, self.class_names, probabilities, error=error,
                                  ood_score=score, in_distribution=inside)
            record["input"] = record.pop("path")
            return record
        if error is not None:
            return {"input": label, "mask": None, "tumour_area_pixels": None,
                    "tumour_fraction": None, "error": error}
        probability = output[0][..., 0]
        mask = self.runtime.mask_for(probability, image.shape[:2])
        area = int(mask.sum())
        return {"input": label, "mask": mask, "tumour_area_pixels": area,
                "tumour_fraction": area / mask.size, "error": None}


def _as_items(inputs) -> list[tuple[str, str | np.ndarray]]:
    """(label, source) pairs: a path's label is the path, an array's is ``array[i]``."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    elif isinstance(inputs, np.ndarray):
        # [N, H, W, C] and [N, H, W] (a last axis that is no channel count) are batches.
        batch = inputs.ndim == 4 or (inputs.ndim == 3 and inputs.shape[-1] not in (1, 3, 4))
        inputs = list(inputs) if batch else [inputs]
    elif not isinstance(inputs, Sequence):
        raise TypeError("inputs must be a path, a numpy array or a sequence of them, "
                        f"got {type(inputs).__name__}")
    items = []
    for index, item in enumerate(inputs):
        if isinstance(item, np.ndarray):
            items.append((f"array[{index}]", item))
        elif isinstance(item, str | os.PathLike):
            items.append((os.fspath(item), os.fspath(item)))
        else:
            raise TypeError(f"input {index}: expected a path or a numpy array, "
                            f"got {type(item).__name__}")
    return items


def _array_image(array: np.ndarray, channels: int) -> np.ndarray:
    """An image as given by PIL/imageio/numpy (RGB order) -> float32 [H, W, channels] 0..255."""
    image = np.asarray(array)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) == 0:
        raise ValueError(f"expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got shape {image.shape}")
    if image.dtype in (np.uint16, np.int16, np.uint32, np.int32):  # scanner values
        image = percentile_scaled(image)
    image = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 255.0)[:, :, :3]
    if image.shape[2] == 3 and channels == 1:
        return (image @ _LUMINANCE)[:, :, None]
    if image.shape[2] == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


__all__ = ["Model", "load"]
