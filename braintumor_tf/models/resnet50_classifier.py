"""ResNet50 tumour-type classifier, built to pretrain the segmenter's encoder in-domain.

ImageNet weights cannot be downloaded everywhere (not on the machine this project is developed
on); an encoder that has first learnt to tell glioma, meningioma, pituitary and healthy slices
apart starts the UNet from tumour-relevant features instead of noise. The front end is the one
the UNet uses with a weights file (grey repeated to RGB, ResNet50's caffe preprocessing), and
the backbone is a stock ``ResNet50(include_top=False)`` named ``resnet50``, so
``save_encoder_weights`` writes a file that ``segmentation.encoder_weights`` loads unchanged.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from braintumor_tf.models.layers import CaffePreprocessing, GreyToRGB, set_batch_norm_momentum

BACKBONE_NAME = "resnet50"


def build_resnet50_classifier(image_size: int = 128, channels: int = 1, num_classes: int = 4,
                              dropout: float = 0.3, bn_momentum: float | None = 0.9,
                              name: str = "resnet50_classifier") -> keras.Model:
    """Raw pixels [N, S, S, C] in 0..255 -> class probabilities [N, num_classes] in float32.

    ``bn_momentum``: 0.9 by default, as for the UNet's encoder trained from scratch (Keras'
    0.99 lags a fast-changing network over a few thousand steps).
    """
    if not isinstance(image_size, int) or image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    inputs = keras.Input((image_size, image_size, channels), name="pixels", dtype="float32")
    x = inputs
    if channels == 1:
        x = GreyToRGB(name="grey_to_rgb", dtype="float32")(x)
    x = CaffePreprocessing(name="imagenet_preprocessing", dtype="float32")(x)
    backbone = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(image_size, image_size, 3))
    backbone.name = BACKBONE_NAME
    if bn_momentum is not None:
        set_batch_norm_momentum(backbone, bn_momentum)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=name)


def save_encoder_weights(model: keras.Model, path: str | os.PathLike) -> str:
    """The backbone's weights as a ``.weights.h5`` for ``ResNet50(include_top=False)``."""
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"encoder weights file name must end in .weights.h5, got {path!r}")
    try:
        backbone = model.get_layer(BACKBONE_NAME)
    except ValueError:
        raise ValueError(f"model {model.name!r} has no {BACKBONE_NAME!r} backbone; encoder weights "
                         "come from a model.name: resnet50 classifier") from None
    backbone.save_weights(path)
    return path
