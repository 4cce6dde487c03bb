"""tf.data input pipelines: decode, resize, cache, shuffle, batch, augment, prefetch."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from braintumor_tf.data.augment import make_augmenter
from braintumor_tf.data.decode import make_tf_loader

AUTOTUNE = tf.data.AUTOTUNE


def image_dataset(paths: Sequence[str], image_size: int, channels: int,
                  batch_size: int) -> tf.data.Dataset:
    """Unlabelled, ordered batches of pixels for inference (evaluate, predict)."""
    loader = make_tf_loader(channels, image_size)
    dataset = tf.data.Dataset.from_tensor_slices(list(paths))
    dataset = dataset.map(loader, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def classification_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    image_size: int,
    channels: int,
    batch_size: int,
    num_classes: int,
    training: bool,
    augment_config=None,
    cache: bool = True,
    seed: int = 0,
) -> tf.data.Dataset:
    """(pixels, one-hot) batches; decoding happens once when ``cache`` is on.

    Files are checked before they get here; ``ignore_errors`` is the last guard so a
    file that breaks between the check and the epoch drops out instead of killing it.
    """
    if len(paths) != len(labels):
        raise ValueError(f"got {len(paths)} paths but {len(labels)} labels")
    if not len(paths):
        raise ValueError("no images to build a dataset from")
    loader = make_tf_loader(channels, image_size)
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), list(labels)))
    dataset = dataset.map(lambda path, label: (loader(path), tf.one_hot(label, num_classes)),
                          num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors()
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(min(len(paths), 4096), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=False)
    if training and augment_config is not None:
        augmenter = make_augmenter(augment_config, seed=seed)
        if augmenter is not None:
            dataset = dataset.map(lambda x, y: (augmenter(x, training=True), y),
                                  num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)
