"""Serialisable preprocessing layers shared by the UNet encoder and the ResNet50 classifier.

Registered layers instead of ``Lambda`` so that ``.keras`` files and exports reload them; the
registered names (``braintumor_tf>GreyToRGB``...) do not depend on this module's path.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="braintumor_tf")
class GreyToRGB(layers.Layer):
    """Repeats one channel three times so grey MRI fits encoders trained on colour images."""

    def call(self, inputs):
        return ops.concatenate([inputs, inputs, inputs], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3 * input_shape[-1])


@keras.saving.register_keras_serializable(package="braintumor_tf")
class CaffePreprocessing(layers.Layer):
    """ResNet50's ImageNet preprocessing (RGB -> BGR, minus channel means) as a serialisable layer."""

    def __init__(self, means: Sequence[float] = IMAGENET_BGR_MEANS, **kwargs):
        super().__init__(**kwargs)
        if len(means) != 3:
            raise ValueError(f"means must have 3 values (B, G, R), got {list(means)!r}")
        self.means = tuple(float(value) for value in means)

    def call(self, inputs):
        if inputs.shape[-1] not in (3, None):  # None: traced with an unknown channel count
            raise ValueError(f"CaffePreprocessing expects 3 channels, got shape {inputs.shape}")
        means = ops.convert_to_tensor(self.means, dtype=inputs.dtype)
        return ops.flip(inputs, axis=-1) - means

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "means": list(self.means)}


def set_batch_norm_momentum(model: keras.Model, momentum: float) -> None:
    """Before the first trace: the momentum is read when the training step is built."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(momentum)


@keras.saving.register_keras_serializable(package="braintumor_tf")
class PercentileStretch(layers.Layer):
    """Each image's own ``low``-``high`` percentile range mapped to 0..255, inside the model.

    Exports of one scan differ in how they map scanner values to 8 bits (another window, a
    contrast tweak, a 16-bit copy); stretching every image by its own percentiles gives them all
    the same input, in training, Python inference, the SavedModel and LiteRT alike. Percentiles
    are numpy's "nearest" ones (data/intensity.py stretches 16-bit files the same way, so a
    16-bit copy stretched twice is the 8-bit image stretched once), found with top_k, which
    LiteRT runs natively. A flat image becomes 0.
    """

    def __init__(self, low: float = 0.5, high: float = 99.5, **kwargs):
        kwargs.setdefault("dtype", "float32")  # percentiles of 0..255 values need float32
        super().__init__(**kwargs)
        if not 0.0 <= float(low) < float(high) <= 100.0:
            raise ValueError(f"PercentileStretch needs 0 <= low < high <= 100, got low={low!r}, "
                             f"high={high!r}")
        self.low, self.high = float(low), float(high)

    def _ranks(self, count: int) -> tuple[int, int]:
        """(k-th smallest, k-th largest) that numpy's 'nearest' percentiles pick of ``count``."""
        low_index = int(np.round(self.low / 100.0 * (count - 1)))
        high_index = int(np.round(self.high / 100.0 * (count - 1)))
        return low_index + 1, count - high_index

    def call(self, inputs):
        shape = inputs.shape
        if all(size is not None for size in shape[1:]):
            count = int(np.prod(shape[1:]))
            k_low, k_high = self._ranks(count)
        else:  # open height and width (a segmenter trained on crops): ranks as tensors
            dims = ops.shape(inputs)
            count = dims[1] * dims[2] * dims[3]
            last = ops.cast(count - 1, "float32")
            k_low = ops.cast(ops.round(self.low / 100.0 * last), "int32") + 1
            k_high = count - ops.cast(ops.round(self.high / 100.0 * last), "int32")
        values = ops.reshape(ops.cast(inputs, "float32"), (ops.shape(inputs)[0], count))
        top = ops.top_k(values, k_high, sorted=True)[0][:, -1]
        bottom = -ops.top_k(-values, k_low, sorted=True)[0][:, -1]
        span = top - bottom
        scale = ops.where(span > 0, 255.0 / ops.maximum(span, 1e-6), 0.0)
        scale = ops.reshape(scale, (-1, *([1] * (len(shape) - 1))))
        bottom = ops.reshape(bottom, (-1, *([1] * (len(shape) - 1))))
        return ops.clip((ops.cast(inputs, "float32") - bottom) * scale, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high}


def graph_intensity(model) -> str:
    """The intensity standardisation inside a model's graph (config ``*.intensity``), found by
    walking its layers and nested models: what a spec says of a file written before specs."""
    pending = [model]
    while pending:
        layer = pending.pop()
        if isinstance(layer, PercentileStretch):
            return "percentile"
        pending.extend(getattr(layer, "layers", []))
    return "none"
