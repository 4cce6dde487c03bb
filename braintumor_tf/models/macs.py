"""Multiply-accumulate counts: the cost measure configs are sized by (GMAC per image)."""

from __future__ import annotations

import keras
from keras import layers


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of the convolution and dense layers (the bulk of the cost)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.SeparableConv2D):
            _, height, width, out_channels = layer.output.shape
            in_channels = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            total += height * width * kh * kw * in_channels  # depthwise
            total += height * width * in_channels * out_channels  # pointwise
        elif isinstance(layer, layers.DepthwiseConv2D):
            _, height, width, out_channels = layer.output.shape
            kh, kw = layer.kernel_size
            total += height * width * kh * kw * out_channels
        elif isinstance(layer, layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            in_channels = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            total += height * width * kh * kw * in_channels * out_channels // layer.groups
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def count_macs_nested(model: keras.Model) -> int:
    """``count_macs`` including nested sub-models (the encoder is one)."""
    total = count_macs(model)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs_nested(layer)
    return total
