"""UNet with a ResNet50 encoder for binary tumour masks.

The encoder is the stock ``keras.applications.ResNet50`` so that its published weights (or a file
of our own in-domain pretraining) load through the same code path Keras users already rely on. It
is kept as one nested sub-model named ``encoder``: freezing and unfreezing it for fine-tuning is a
single attribute, and a weights file saved from a standalone ``ResNet50(include_top=False)`` maps
onto it layer for layer.

Input is raw pixels in [0, 255], float32 [N, S, S, C] with C = 1 or 3, like the classifier.
Preprocessing lives in the graph (registered layers, not ``Lambda``, so ``.keras`` files and
exports reload it):

* ImageNet or file weights: grey is repeated to three channels, then ResNet50's "caffe"
  preprocessing (RGB -> BGR, minus the ImageNet channel means, no scaling) because those weights
  were trained on exactly that input. Encoder weights from our own pretraining must have been
  trained with the same preprocessing.
* ``encoder_weights="none"``: pixels are scaled to [0, 1] (grey still repeated to three channels,
  so every encoder has the stock ResNet50 shapes and its weights files are interchangeable).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence

import keras
from keras import layers

from braintumor_tf.models.layers import CaffePreprocessing, GreyToRGB, set_batch_norm_momentum

SKIP_LAYERS = ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out")
BOTTLENECK_LAYER = "conv5_block3_out"
# Per socket operation, not for the whole 94 MB download: only stops a silent network from hanging.
_DOWNLOAD_SOCKET_TIMEOUT_S = 60


def _validate(image_size, channels, encoder_weights, decoder_filters, encoder_bn_momentum=None):
    if encoder_bn_momentum is not None and not 0.0 < encoder_bn_momentum < 1.0:
        raise ValueError(f"encoder_bn_momentum must be in (0, 1) or None (Keras' 0.99), "
                         f"got {encoder_bn_momentum!r}")
    if not isinstance(image_size, int) or image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32 (the encoder downsamples 32x), "
                         f"got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if len(decoder_filters) != 5 or any(int(f) < 1 for f in decoder_filters):
        raise ValueError(f"decoder_filters must be 5 positive widths (one per upsampling stage), "
                         f"got {list(decoder_filters)!r}")
    if not isinstance(encoder_weights, str | os.PathLike):
        raise ValueError(f"encoder_weights must be 'imagenet', 'none' or a path, got {encoder_weights!r}")
    if str(encoder_weights) not in ("imagenet", "none") and not os.path.isfile(encoder_weights):
        raise ValueError(f"encoder_weights must be 'imagenet', 'none' or the path of an existing weights "
                         f"file, got {str(encoder_weights)!r} (no such file)")


@contextlib.contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _resnet50(image_size, weights):
    """Standalone ResNet50 without top; a file path goes through Keras' own ``weights=`` loading."""
    input_shape = (image_size, image_size, 3)
    if weights == "none":
        return keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    if weights != "imagenet":
        return keras.applications.ResNet50(include_top=False, weights=os.fspath(weights),
                                           input_shape=input_shape)
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            return keras.applications.ResNet50(include_top=False, weights="imagenet",
                                               input_shape=input_shape)
    except Exception as error:  # keras.utils.get_file raises a bare Exception on URL failures
        raise RuntimeError(
            "ImageNet weights for the ResNet50 encoder could not be downloaded "
            f"({error}). Use encoder_weights: none to train from scratch, or set encoder_weights to "
            "the path of a local weights file: a .weights.h5 saved from "
            "keras.applications.ResNet50(include_top=False), or Keras' "
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 copied onto this machine."
        ) from error


def build_encoder(image_size: int, weights="none", freeze: bool = False,
                  bn_momentum: float | None = None) -> keras.Model:
    """ResNet50 as a multi-output model: the four skip features, then the bottleneck.

    ``bn_momentum``: Keras' ResNet50 uses 0.99, made for millions of ImageNet steps; an encoder
    trained from scratch for a few thousand steps changes faster than such running statistics
    follow, and validation (which uses them) swings from epoch to epoch.
    """
    resnet = _resnet50(image_size, weights)
    if bn_momentum is not None:
        set_batch_norm_momentum(resnet, bn_momentum)
    outputs = [resnet.get_layer(name).output for name in (*SKIP_LAYERS, BOTTLENECK_LAYER)]
    encoder = keras.Model(resnet.inputs, outputs, name="encoder")
    encoder.trainable = not freeze
    return encoder


def _conv_bn_relu(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _decoder_stage(x, skip, filters, name):
    x = layers.UpSampling2D(2, name=f"{name}_upsample")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = _conv_bn_relu(x, filters, f"{name}_a")
    return _conv_bn_relu(x, filters, f"{name}_b")


def build_resnet50_unet(
    image_size: int = 256,
    channels: int = 1,
    encoder_weights="imagenet",
    decoder_filters: Sequence[int] = (256, 128, 64, 32, 16),
    freeze_encoder: bool = False,
    encoder_bn_momentum: float | None = None,
    name: str = "resnet50_unet",
) -> keras.Model:
    """UNet: ResNet50 features at 1/2 .. 1/32 scale, five x2 decoder stages, sigmoid mask [N, S, S, 1].

    ``encoder_weights``: ``"imagenet"`` (downloaded by Keras), ``"none"`` (random init) or the path
    of a weights file for ``ResNet50(include_top=False)`` (``.weights.h5``, or Keras' legacy
    ``..._notop.h5``). ``encoder_bn_momentum``: see ``build_encoder`` (None keeps Keras' 0.99).
    """
    _validate(image_size, channels, encoder_weights, decoder_filters, encoder_bn_momentum)
    pretrained = str(encoder_weights) != "none"
    inputs = keras.Input((image_size, image_size, channels), name="pixels", dtype="float32")
    # Preprocessing in float32: bfloat16 cannot hold 255 - 123.68 to better than ~0.5.
    x = inputs
    if not pretrained:
        x = layers.Rescaling(1.0 / 255.0, name="rescale", dtype="float32")(x)
    if channels == 1:
        x = GreyToRGB(name="grey_to_rgb", dtype="float32")(x)
    if pretrained:
        x = CaffePreprocessing(name="imagenet_preprocessing", dtype="float32")(x)
    encoder = build_encoder(image_size, encoder_weights, freeze_encoder, encoder_bn_momentum)
    *skips, x = encoder(x)
    for index, filters in enumerate(decoder_filters):
        # Stages 1-4 join the skips from deep to shallow; stage 5 returns to full size without one.
        skip = skips[len(skips) - 1 - index] if index < len(skips) else None
        x = _decoder_stage(x, skip, int(filters), name=f"decoder{index + 1}")
    logits = layers.Conv2D(1, 1, name="logits")(x)
    # Sigmoid in float32 keeps probabilities and the loss exact under mixed precision.
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(logits)
    return keras.Model(inputs, outputs, name=name)
