"""Residual CNN classifier: the study's 6-block network and smaller CPU-sized variants.

Built with the functional API so that Grad-CAM, export and MAC counting can walk
the graph. Input is raw pixels in [0, 255]; scaling happens inside the model so
that every deployed form sees the same preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from braintumor_tf.models.layers import PercentileStretch


def _validate(image_size, channels, num_classes, block_filters, block_kernel_sizes,
              block_downsample, convs_per_block, head, dropout):
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if not (len(block_filters) == len(block_kernel_sizes) == len(block_downsample) >= 1):
        raise ValueError(
            "block_filters, block_kernel_sizes and block_downsample must be non-empty and of equal "
            f"length, got {list(block_filters)}, {list(block_kernel_sizes)}, {list(block_downsample)}")
    if convs_per_block not in (1, 2):
        raise ValueError(f"convs_per_block must be 1 or 2, got {convs_per_block!r}")
    if head not in ("flatten", "global_average"):
        raise ValueError(f"head must be 'flatten' or 'global_average', got {head!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    downsamples = sum(bool(d) for d in block_downsample)
    if image_size // (2 ** downsamples) < 1:
        raise ValueError(f"image_size {image_size} is too small for {downsamples} downsamplings")


def _conv(x, filters, kernel_size, separable, name, strides=1):
    if separable and kernel_size > 1 and x.shape[-1] > 1:
        return layers.SeparableConv2D(filters, kernel_size, strides=strides, padding="same",
                                      use_bias=False, name=name)(x)
    return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                         name=name)(x)


def _norm(x, batch_norm, name):
    # Momentum 0.9: moving statistics settle within ~50 steps, which short CPU runs need.
    return layers.BatchNormalization(momentum=0.9, name=name)(x) if batch_norm else x


def residual_block(x, filters, kernel_size, convs_per_block, separable, batch_norm, name):
    """Conv(s) plus a shortcut; a 1x1 projection only where the width changes."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
        shortcut = _norm(shortcut, batch_norm, f"{name}_project_bn")
    y = x
    for index in range(convs_per_block):
        y = _conv(y, filters, kernel_size, separable, f"{name}_conv{index + 1}")
        y = _norm(y, batch_norm, f"{name}_bn{index + 1}")
        if index < convs_per_block - 1:
            y = layers.Activation("relu", name=f"{name}_relu{index + 1}")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_residual_cnn(
    image_size: int = 128,
    channels: int = 1,
    num_classes: int = 4,
    stem_filters: int = 0,
    stem_stride: int = 1,
    block_filters: Sequence[int] = (32, 64, 128, 192, 256),
    block_kernel_sizes: Sequence[int] = (3, 3, 3, 3, 3),
    block_downsample: Sequence[bool] = (True, True, True, True, True),
    convs_per_block: int = 2,
    separable: bool = False,
    batch_norm: bool = True,
    head: str = "global_average",
    dense_units: int = 256,
    dropout: float = 0.3,
    name: str = "residual_cnn",
    stem_kernel_size: int = 3,
    intensity: str = "none",
) -> keras.Model:
    """A residual CNN; downsampling is a 2x2 stride-2 convolution after a block, as in the study."""
    _validate(image_size, channels, num_classes, block_filters, block_kernel_sizes,
              block_downsample, convs_per_block, head, dropout)
    if stem_filters and stem_kernel_size < stem_stride:
        raise ValueError(f"stem_kernel_size {stem_kernel_size} is smaller than stem_stride "
                         f"{stem_stride}: the stem would skip pixels")
    if intensity not in ("none", "percentile"):
        raise ValueError(f"intensity must be 'none' or 'percentile', got {intensity!r}")
    inputs = keras.Input((image_size, image_size, channels), name="pixels", dtype="float32")
    x = PercentileStretch(name="percentile_stretch")(inputs) if intensity == "percentile" else inputs
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    if stem_filters:
        x = layers.Conv2D(stem_filters, stem_kernel_size, strides=stem_stride, padding="same",
                          use_bias=False, name="stem_conv")(x)
        x = _norm(x, batch_norm, "stem_bn")
        x = layers.Activation("relu", name="stem_relu")(x)
    for index, (filters, kernel_size, downsample) in enumerate(
            zip(block_filters, block_kernel_sizes, block_downsample, strict=True)):
        x = residual_block(x, filters, kernel_size, convs_per_block, separable, batch_norm,
                           name=f"block{index + 1}")
        if downsample:
            x = layers.Conv2D(filters, 2, strides=2, use_bias=False, name=f"down{index + 1}")(x)
            x = _norm(x, batch_norm, f"down{index + 1}_bn")
            x = layers.Activation("relu", name=f"down{index + 1}_relu")(x)
    if head == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    # Softmax in float32 keeps probabilities and the loss exact under mixed precision.
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=name)


def build_classifier(model_config, image_size: int, channels: int) -> keras.Model:
    """Build from a ``ModelConfig`` (the data config owns the input size)."""
    if model_config.name == "resnet50":
        from braintumor_tf.models.resnet50_classifier import build_resnet50_classifier

        return build_resnet50_classifier(image_size, channels, model_config.num_classes,
                                         model_config.dropout)
    return build_residual_cnn(
        image_size=image_size,
        channels=channels,
        num_classes=model_config.num_classes,
        stem_filters=model_config.stem_filters,
        stem_stride=model_config.stem_stride,
        stem_kernel_size=model_config.stem_kernel_size,
        block_filters=model_config.block_filters,
        block_kernel_sizes=model_config.block_kernel_sizes,
        block_downsample=model_config.block_downsample,
        convs_per_block=model_config.convs_per_block,
        separable=model_config.separable,
        batch_norm=model_config.batch_norm,
        head=model_config.head,
        dense_units=model_config.dense_units,
        dropout=model_config.dropout,
        intensity=model_config.intensity,
    )
