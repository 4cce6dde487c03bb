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

from braintumor_tf.data.decode import DecodeError
from braintumor_tf.inference.classification import class_record
from braintumor_tf.inference.common import error_text
from braintumor_tf.inference.explain import explaining_runtime, grad_cam_pictures
from braintumor_tf.overlays import mask_overlay
from braintumor_tf.serving.predictor import Predictor


def load(path: str | os.PathLike, batch_size: int = 32, num_threads: int | None = None) -> Model:
    """A ``.keras`` file, a SavedModel folder, a TF Serving base folder or a ``.tflite`` file.
    Class names come from the file's metadata where it has them (the package's four otherwise).
    ``num_threads``: LiteRT threads for a ``.tflite`` file (its default uses one)."""
    return Model.load(path, batch_size=batch_size, num_threads=num_threads)


class Model(Predictor):
    """A loaded classifier or segmenter (``task``); ``predict`` and ``explain`` take the same
    inputs: the package's one predictor, given paths and arrays."""

    def __repr__(self) -> str:
        return (f"braintumor_tf.Model(task={self.task!r}, kind={self.runtime.kind!r}, "
                f"path='{self.runtime.path}')")

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
        answer = self.classify if self.task == "classification" \
            else self.segment
        outputs = dict(zip(readable, answer([images[i] for i in readable]), strict=True))
        return images, [self._record(label, outputs.get(index), errors[index])
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
            pixels = self.pixels([images[i] for i in readable])
            drawn = grad_cam_pictures(explainer, pixels, [records[i] for i in readable],
                                      [images[i] for i in readable])
            for index, picture in zip(readable, drawn, strict=True):
                pictures[index] = picture
        return pictures

    def _read(self, items):
        images, errors = [], []
        for label, source in items:
            try:
                images.append(self.read(source))
                errors.append(None)
            except (DecodeError, OSError, ValueError) as error:
                images.append(None)
                errors.append(error_text(label, error))
        return images, errors

    def _record(self, label: str, output, error) -> dict:
        if self.task == "classification":
            record = class_record(
                label, self.class_names, None if output is None else output.probabilities,
                error=error, ood_score=None if output is None else output.ood_score,
                in_distribution=None if output is None else output.in_distribution)
            record["input"] = record.pop("path")
            return record
        if error is not None:
            return {"input": label, "mask": None, "tumour_area_pixels": None,
                    "tumour_fraction": None, "error": error}
        area = int(output.sum())
        return {"input": label, "mask": output, "tumour_area_pixels": area,
                "tumour_fraction": area / output.size, "error": None}


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


__all__ = ["Model", "load"]
