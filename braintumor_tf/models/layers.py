"""Serialisable preprocessing layers shared by the UNet encoder and the ResNet50 classifier.

Registered layers instead of ``Lambda`` so that ``.keras`` files and exports reload them; the
registered names (``braintumor_tf>GreyToRGB``...) do not depend on this module's path.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
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
