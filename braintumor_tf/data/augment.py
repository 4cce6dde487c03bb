"""Label-preserving augmentation for classification, run on batches inside tf.data."""

from __future__ import annotations

import keras


def make_augmenter(augment_config, seed: int = 0) -> keras.Sequential | None:
    """Batch-wise Keras random layers in float32 (whatever the model policy); ``None`` if all off."""
    steps = []
    mode = {(True, True): "horizontal_and_vertical", (True, False): "horizontal",
            (False, True): "vertical"}.get((augment_config.horizontal_flip,
                                            augment_config.vertical_flip))
    if mode:
        steps.append(keras.layers.RandomFlip(mode, seed=seed, dtype="float32"))
    if augment_config.rotation:
        steps.append(keras.layers.RandomRotation(augment_config.rotation, fill_mode="constant",
                                                 seed=seed + 1, dtype="float32"))
    if augment_config.zoom:
        steps.append(keras.layers.RandomZoom(augment_config.zoom, fill_mode="constant",
                                             seed=seed + 2, dtype="float32"))
    if augment_config.translation:
        steps.append(keras.layers.RandomTranslation(
            augment_config.translation, augment_config.translation, fill_mode="constant",
            seed=seed + 3, dtype="float32"))
    if augment_config.contrast:
        steps.append(keras.layers.RandomContrast(augment_config.contrast, value_range=(0, 255),
                                                 seed=seed + 4, dtype="float32"))
    if augment_config.brightness:
        steps.append(keras.layers.RandomBrightness(augment_config.brightness,
                                                   value_range=(0, 255), seed=seed + 5, dtype="float32"))
    if not steps:
        return None
    return keras.Sequential(steps, name="augment")
