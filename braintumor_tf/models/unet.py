"""UNet with a ``keras.applications`` encoder (ResNet50 by default) for binary tumour masks.

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

Lighter encoders (``encoder="mobilenetv2"`` or ``"efficientnetb0"``) take the same skips at 1/2 ..
1/16 and a bottleneck at 1/32: on a CPU they train about twice as fast per image as ResNet50 and
run at 224-256 px within an edge budget, where ResNet50 fits only 128-160 px. Each gets the input
scaling its published weights expect (MobileNetV2: [-1, 1]; EfficientNet rescales inside itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Sequence

import keras
from keras import layers

from braintumor_tf.models.layers import (
    CaffePreprocessing,
    GreyToRGB,
    PercentileStretch,
    set_batch_norm_momentum,
)

SKIP_LAYERS = ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out")
BOTTLENECK_LAYER = "conv5_block3_out"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """Where a ``keras.applications`` model is tapped: four skips (1/2 .. 1/16) and a bottleneck
    (1/32); ``scaling``: what the pixels become before it when its weights are not ImageNet's
    caffe-style ones (``unit``: [0, 1]; ``symmetric``: [-1, 1]; ``raw``: 0..255 kept, the model
    rescales itself)."""

    application: str
    skips: tuple[str, ...]
    bottleneck: str
    scaling: str


# The bottlenecks of the light encoders are their last 320-wide projections, not the 1280-wide
# 1x1 expansion after it: that layer exists for a classifier head and would make the first
# decoder stage the most expensive layer of the network.
BACKBONES = {
    "resnet50": Backbone("ResNet50", SKIP_LAYERS, BOTTLENECK_LAYER, "unit"),
    "mobilenetv2": Backbone("MobileNetV2", ("block_1_expand_relu", "block_3_expand_relu",
                                            "block_6_expand_relu", "block_13_expand_relu"),
                            "block_16_project_BN", "symmetric"),
    "efficientnetb0": Backbone("EfficientNetB0", ("block2a_expand_activation",
                                                  "block3a_expand_activation",
                                                  "block4a_expand_activation",
                                                  "block6a_expand_activation"),
                               "block7a_project_bn", "raw"),
}
ENCODERS = tuple(BACKBONES)
# Per socket operation, not for the whole 94 MB download: only stops a silent network from hanging.
_DOWNLOAD_SOCKET_TIMEOUT_S = 60


def _validate(image_size, channels, encoder_weights, decoder_filters, encoder_bn_momentum=None,
              encoder="resnet50"):
    if encoder not in BACKBONES:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
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


def _application(image_size, weights, encoder="resnet50"):
    """Standalone backbone without top (``image_size`` None: any size); a file path goes through
    Keras' own ``weights=`` loading."""
    input_shape = (image_size, image_size, 3)
    application = BACKBONES[encoder].application
    constructor = getattr(keras.applications, application)
    if weights == "none":
        return constructor(include_top=False, weights=None, input_shape=input_shape)
    if weights != "imagenet":
        return constructor(include_top=False, weights=os.fspath(weights), input_shape=input_shape)
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            return constructor(include_top=False, weights="imagenet", input_shape=input_shape)
    except Exception as error:  # keras.utils.get_file raises a bare Exception on URL failures
        raise RuntimeError(
            f"ImageNet weights for the {application} encoder could not be downloaded "
            f"({error}). Use encoder_weights: none to train from scratch, or set encoder_weights to "
            "the path of a local weights file: a .weights.h5 saved from "
            f"keras.applications.{application}(include_top=False), or Keras' own notop .h5 file "
            "copied onto this machine."
        ) from error


def build_encoder(image_size: int | None, weights="none", freeze: bool = False,
                  bn_momentum: float | None = None, encoder: str = "resnet50") -> keras.Model:
    """The backbone as a multi-output model: the four skip features, then the bottleneck.

    ``bn_momentum``: Keras' ResNet50 uses 0.99, made for millions of ImageNet steps; an encoder
    trained from scratch for a few thousand steps changes faster than such running statistics
    follow, and validation (which uses them) swings from epoch to epoch.
    """
    backbone = BACKBONES[encoder]
    application = _application(image_size, weights, encoder)
    if bn_momentum is not None:
        set_batch_norm_momentum(application, bn_momentum)
    outputs = [application.get_layer(name).output for name in (*backbone.skips, backbone.bottleneck)]
    model = keras.Model(application.inputs, outputs, name="encoder")
    model.trainable = not freeze
    return model


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


def build_resnet50_unet(image_size: int = 256, channels: int = 1, encoder_weights="imagenet",
                        decoder_filters: Sequence[int] = (256, 128, 64, 32, 16),
                        freeze_encoder: bool = False, encoder_bn_momentum: float | None = None,
                        name: str = "resnet50_unet") -> keras.Model:
    """``build_unet`` with the ResNet50 encoder (the study's model)."""
    return build_unet(image_size, channels, "resnet50", encoder_weights, decoder_filters,
                      freeze_encoder, encoder_bn_momentum, name=name)


def build_unet(
    image_size: int = 256,
    channels: int = 1,
    encoder: str = "resnet50",
    encoder_weights="imagenet",
    decoder_filters: Sequence[int] = (256, 128, 64, 32, 16),
    freeze_encoder: bool = False,
    encoder_bn_momentum: float | None = None,
    any_size: bool = False,
    name: str | None = None,
    intensity: str = "none",
) -> keras.Model:
    """UNet: encoder features at 1/2 .. 1/32 scale, five x2 decoder stages, sigmoid mask [N, S, S, 1].

    ``encoder``: one of ``ENCODERS``. ``encoder_weights``: ``"imagenet"`` (downloaded by Keras),
    ``"none"`` (random init) or the path of a weights file for the backbone without its top
    (``.weights.h5``, or Keras' legacy ``..._notop.h5``). ``encoder_bn_momentum``: see
    ``build_encoder`` (None keeps Keras' own, 0.99 or 0.999). ``any_size``: height and width
    left open (any multiple of 32), for training on crops; ``image_size`` is then only checked.
    """
    _validate(image_size, channels, encoder_weights, decoder_filters, encoder_bn_momentum, encoder)
    pretrained = str(encoder_weights) != "none"
    scaling = BACKBONES[encoder].scaling
    caffe = pretrained and encoder == "resnet50"
    side = None if any_size else image_size
    inputs = keras.Input((side, side, channels), name="pixels", dtype="float32")
    # Preprocessing in float32: bfloat16 cannot hold 255 - 123.68 to better than ~0.5.
    if intensity not in ("none", "percentile"):
        raise ValueError(f"intensity must be 'none' or 'percentile', got {intensity!r}")
    x = PercentileStretch(name="percentile_stretch")(inputs) if intensity == "percentile" else inputs
    if not caffe and scaling == "unit":
        x = layers.Rescaling(1.0 / 255.0, name="rescale", dtype="float32")(x)
    elif scaling == "symmetric":
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale", dtype="float32")(x)
    if channels == 1:
        x = GreyToRGB(name="grey_to_rgb", dtype="float32")(x)
    if caffe:
        x = CaffePreprocessing(name="imagenet_preprocessing", dtype="float32")(x)
    backbone = build_encoder(side, encoder_weights, freeze_encoder, encoder_bn_momentum, encoder)
    *skips, x = backbone(x)
    for index, filters in enumerate(decoder_filters):
        # Stages 1-4 join the skips from deep to shallow; stage 5 returns to full size without one.
        skip = skips[len(skips) - 1 - index] if index < len(skips) else None
        x = _decoder_stage(x, skip, int(filters), name=f"decoder{index + 1}")
    logits = layers.Conv2D(1, 1, name="logits")(x)
    # Sigmoid in float32 keeps probabilities and the loss exact under mixed precision.
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(logits)
    return keras.Model(inputs, outputs, name=name or f"{encoder}_unet")
