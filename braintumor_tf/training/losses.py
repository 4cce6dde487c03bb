"""Segmentation losses and the training-time Dice metric.

They live in one module so that a single import registers every custom object a segmentation
``.keras`` file refers to. Everything is computed in float32 whatever the dtype of ``y_pred``: under
mixed precision a bfloat16 sum over 65 536 pixels would lose the small differences the loss is
made of.

Masks are [N, H, W, 1] (or [N, H, W]) probabilities in [0, 1]; truth is 0/1.
"""

from __future__ import annotations

import keras
from keras import ops

from braintumor_tf.config import DEFAULT_SEGMENTATION_THRESHOLD, SEGMENTATION_LOSSES


def _float32(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def _per_image_sum(x):
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)


def _per_image_bce(y_true, y_pred):
    pixel_bce = keras.losses.binary_crossentropy(y_true[..., None], y_pred[..., None])
    return ops.mean(ops.reshape(pixel_bce, (ops.shape(pixel_bce)[0], -1)), axis=1)


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - soft Dice per image, shape [N]; ``smooth`` makes an empty truth with an empty guess score 0."""
    y_true, y_pred = _float32(y_true, y_pred)
    intersection = _per_image_sum(y_true * y_pred)
    total = _per_image_sum(y_true) + _per_image_sum(y_pred)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


# Keras' own BCE already converts y_pred and y_true to float32 (the loss dtype) before computing.
BinaryCrossentropy = keras.losses.BinaryCrossentropy


@keras.saving.register_keras_serializable(package="braintumor_tf")
class DiceLoss(keras.losses.Loss):
    """Soft Dice over each image, then averaged over the batch: every image counts equally,
    so small tumours are not drowned by large ones."""

    def __init__(self, smooth: float = 1.0, name: str = "dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return soft_dice_loss(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="braintumor_tf")
class BCEDiceLoss(keras.losses.Loss):
    """Weighted BCE + Dice: BCE gives smooth per-pixel gradients, Dice counters the imbalance of
    tumour versus background pixels."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 name: str = "bce_dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
            raise ValueError(f"bce_weight and dice_weight must be >= 0 and not both 0, "
                             f"got {bce_weight!r}, {dice_weight!r}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = _float32(y_true, y_pred)
        return (self.bce_weight * _per_image_bce(y_true, y_pred)
                + self.dice_weight * soft_dice_loss(y_true, y_pred, self.smooth))

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight,
                "dice_weight": self.dice_weight, "smooth": self.smooth}


def make_segmentation_loss(name: str) -> keras.losses.Loss:
    """The loss for a config's ``loss`` name."""
    if name == "bce":
        return BinaryCrossentropy(name="bce")
    if name == "dice":
        return DiceLoss()
    if name == "bce_dice":
        return BCEDiceLoss()
    raise ValueError(f"segmentation loss must be one of {SEGMENTATION_LOSSES}, got {name!r}")


@keras.saving.register_keras_serializable(package="braintumor_tf")
class DiceCoefficient(keras.metrics.Metric):
    """Mean per-image Dice at a threshold, for monitoring (``val_dice``) during training.

    Accumulates per-image scores, so the epoch value is the mean over all images seen (the same
    number as ``seg_metrics.mean_dice``), not a mean of batch means. Empty-mask convention as
    there: both empty -> 1, exactly one empty -> 0.
    """

    def __init__(self, threshold: float = DEFAULT_SEGMENTATION_THRESHOLD, name: str = "dice", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self.dice_sum = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                          name="dice_sum")
        self.weight_sum = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                            name="weight_sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = _float32(y_true, y_pred)
        truth = ops.cast(y_true > 0.5, "float32")
        predicted = ops.cast(y_pred > self.threshold, "float32")
        intersection = _per_image_sum(truth * predicted)
        total = _per_image_sum(truth) + _per_image_sum(predicted)
        dice = ops.where(total > 0, 2.0 * intersection / ops.maximum(total, 1.0), 1.0)
        if sample_weight is None:
            weights = ops.ones_like(dice)
        else:  # one weight per image; a per-pixel weight map is averaged per image
            sample_weight = ops.cast(sample_weight, "float32")
            weights = ops.mean(ops.reshape(sample_weight, (ops.shape(dice)[0], -1)), axis=1)
        self.dice_sum.assign_add(ops.sum(dice * weights))
        self.weight_sum.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.dice_sum, self.weight_sum)

    def reset_state(self):
        self.dice_sum.assign(0.0)
        self.weight_sum.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "threshold": self.threshold}
