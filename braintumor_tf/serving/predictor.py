"""The one path from an image to an answer: read -> standardise -> resize -> run -> post-process.

Every local surface (``braintumor_tf.load``, ``predict``, NIfTI volumes, the demo) calls this,
so a slice gets the same answer whichever way it came in. The model's spec (read by
``load_runtime``) decides the task, the class names, the input size and channels, the averaging,
the threshold and the guard; nothing here is passed in beside the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from braintumor_tf.data.decode import read_image, resize_image
from braintumor_tf.data.intensity import percentile_scaled
from braintumor_tf.export.runtimes import load_runtime

_LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)
_SCANNER_DTYPES = (np.uint16, np.int16, np.uint32, np.int32)


@dataclass(frozen=True)
class ClassAnswer:
    probabilities: np.ndarray  # [classes], after the model's temperature and averaging
    ood_score: float | None  # None: the model carries no guard
    in_distribution: bool | None


class Predictor:
    """A loaded model of any form and the preprocessing its spec states."""

    def __init__(self, runtime):
        self.runtime = runtime

    @classmethod
    def load(cls, path, batch_size: int = 32, num_threads: int | None = None) -> Predictor:
        return cls(load_runtime(path, batch_size=batch_size, num_threads=num_threads))

    @property
    def task(self) -> str:
        return self.runtime.task

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.runtime.class_names

    @property
    def image_size(self) -> int:
        return self.runtime.image_size

    @property
    def channels(self) -> int:
        return self.runtime.channels

    def read(self, source: str | os.PathLike | np.ndarray) -> np.ndarray:
        """float32 [H, W, channels] 0..255 at the input's own size, from a file (any format the
        package decodes, 16-bit and DICOM stretched) or an array (RGB order, as image libraries
        give; integer scanner values stretched the same way). Raises DecodeError, OSError or
        ValueError for what cannot be read."""
        if isinstance(source, np.ndarray):
            return array_image(source, self.channels)
        return read_image(source, self.channels)

    def pixels(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The model's input: each image resized with the training kernel, channels matched."""
        resized = np.stack([resize_image(image, self.image_size) for image in images])
        if resized.shape[-1] == 1 and self.channels == 3:
            resized = np.repeat(resized, 3, axis=-1)
        return resized

    def model_input(self, source: str | os.PathLike | np.ndarray) -> np.ndarray:
        """One image as the model takes it, [size, size, channels]: what ``classify`` and
        ``segment`` feed it (evaluation batches these)."""
        return self.pixels([self.read(source)])[0]

    def classify(self, images: Sequence[np.ndarray]) -> list[ClassAnswer]:
        if not len(images):
            return []
        probabilities, scores = self.runtime.predict_with_scores(self.pixels(images))
        inside = self.runtime.in_distribution(scores)
        return [ClassAnswer(row, None if scores is None else float(scores[index]),
                            None if inside is None else bool(inside[index]))
                for index, row in enumerate(np.asarray(probabilities))]

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 0/1 masks at each image's own size: the probability map resized back, then
        thresholded at the model's threshold (as the SavedModel does)."""
        if not len(images):
            return []
        probabilities = self.runtime.predict(self.pixels(images))[..., 0]
        return [self.runtime.mask_for(probability, image.shape[:2])
                for image, probability in zip(images, probabilities, strict=True)]


def array_image(array: np.ndarray, channels: int) -> np.ndarray:
    """An image as given by PIL/imageio/numpy (RGB order) -> float32 [H, W, channels] 0..255."""
    image = np.asarray(array)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) == 0:
        raise ValueError(f"expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got shape {image.shape}")
    if image.dtype in _SCANNER_DTYPES:
        image = percentile_scaled(image)
    image = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 255.0)[:, :, :3]
    if image.shape[2] == 3 and channels == 1:
        return (image @ _LUMINANCE)[:, :, None]
    if image.shape[2] == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)
