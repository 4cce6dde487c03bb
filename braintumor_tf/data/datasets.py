"""tf.data input pipelines: decode, resize, cache, shuffle, batch, augment, prefetch."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from braintumor_tf.data.augment import (
    make_augmenter,
    make_batch_regulariser,
    make_joint_augmenter,
    make_tumour_crop,
)
from braintumor_tf.data.decode import make_tf_loader, read_image
from braintumor_tf.data.masks import read_mask, resize_mask

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class EpochPlan:
    """What a deterministic (``train.deterministic``) training set needs to know about the fit.

    ``start_epoch`` is read when the iterator starts, after BackupAndRestore has restored a
    resumed run (training.callbacks.StartEpochSync sets it), so the set can begin at that epoch.
    """

    epochs: int
    steps_per_epoch: int
    repeat: bool = False  # True when train.steps_per_epoch is set: an epoch is not one pass
    start_epoch: tf.Variable = dataclasses.field(
        default_factory=lambda: tf.Variable(0, dtype=tf.int64, trainable=False))


def epoch_keyed_batches(examples: tf.data.Dataset, plan: EpochPlan, batch_size: int,
                        buffer_size: int, seed: int, augment_batch=None) -> tf.data.Dataset:
    """Training batches whose order and augmentation depend only on (seed, epoch, step).

    The usual reshuffle-each-iteration and stateful random layers carry state that no checkpoint
    holds, so a resumed run sees other batches than an uninterrupted one. Here epoch ``e`` is
    shuffled with a seed made from (seed, e) and batch ``s`` of it is augmented with the stateless
    seed (e, s) (``augment_batch(batch, seed)``); epochs before ``plan.start_epoch`` are skipped.
    ``examples`` should be cached: every epoch re-reads it.
    """
    steps = plan.steps_per_epoch
    start = plan.start_epoch

    def one_epoch(epoch: int) -> tf.data.Dataset:
        # Python ints: tf.data's shuffle takes no tensor seed once a global seed is set.
        batches = examples.shuffle(buffer_size, seed=seed * 1_000_003 + epoch,
                                   reshuffle_each_iteration=False)
        batches = (batches.repeat() if plan.repeat else batches).batch(batch_size).take(steps)
        if augment_batch is not None:
            seeds = tf.data.Dataset.range(steps).map(
                lambda step: tf.stack([tf.constant(epoch, tf.int64), step]),
                num_parallel_calls=AUTOTUNE)
            batches = tf.data.Dataset.zip((batches, seeds)).map(
                augment_batch, num_parallel_calls=AUTOTUNE, deterministic=True)
        # Empty when the run resumes later: decided when the iterator gets here, not now.
        return tf.data.Dataset.range(1).filter(lambda _: epoch >= start).flat_map(
            lambda _: batches)

    parts = [one_epoch(epoch) for epoch in range(plan.epochs)]
    while len(parts) > 1:  # balanced, so a long schedule does not nest hundreds deep
        parts = [parts[i].concatenate(parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0].prefetch(AUTOTUNE)


def path_bytes(paths: Sequence[str]) -> list[bytes]:
    """File names as the file system's bytes: a tf.string cannot hold a name that is not valid
    UTF-8 (os.fsdecode turns them back in the loaders)."""
    return [os.fsencode(os.fspath(path)) for path in paths]


def image_dataset(paths: Sequence[str], image_size: int, channels: int,
                  batch_size: int, read=None) -> tf.data.Dataset:
    """Unlabelled, ordered batches of pixels for inference. ``read``: path -> float32 [size, size,
    channels], e.g. the predictor's ``model_input``, so evaluation reads a file as every
    prediction surface does; default the training decode."""
    loader = make_tf_loader(channels, image_size, read)
    dataset = tf.data.Dataset.from_tensor_slices(path_bytes(paths))
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
    plan: EpochPlan | None = None,
) -> tf.data.Dataset:
    """(pixels, one-hot) batches; decoding happens once when ``cache`` is on.

    Files are checked before they get here; ``ignore_errors`` is the last guard so a
    file that breaks between the check and the epoch drops out instead of killing it.
    With a ``plan`` (training only) the batches are epoch-keyed (``epoch_keyed_batches``) and
    augmented by the stateless augmenter instead of Keras' random layers.
    """
    if len(paths) != len(labels):
        raise ValueError(f"got {len(paths)} paths but {len(labels)} labels")
    if not len(paths):
        raise ValueError("no images to build a dataset from")
    loader = make_tf_loader(channels, image_size)
    dataset = tf.data.Dataset.from_tensor_slices((path_bytes(paths), list(labels)))
    dataset = dataset.map(lambda path, label: (loader(path), tf.one_hot(label, num_classes)),
                          num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors()
    if cache:
        dataset = dataset.cache()
    regularise = (make_batch_regulariser(augment_config, seed=seed)
                  if training and augment_config is not None else None)
    if training and plan is not None:
        # Gamma and noise come from the regulariser, so the joint augmenter leaves them out.
        geometric = (None if augment_config is None else
                     {name: getattr(augment_config, name) for name in
                      ("horizontal_flip", "vertical_flip", "rotation", "zoom", "translation",
                       "contrast", "brightness") if hasattr(augment_config, name)})
        augment = make_joint_augmenter(geometric, seed=seed) if geometric is not None else None
        augment_batch = None

        if augment is not None or regularise is not None:
            def augment_batch(batch, batch_seed):
                images, labels = batch
                if augment is not None:
                    images = augment(images, None, batch_seed)[0]
                if regularise is not None:
                    images, labels = regularise(images, labels, batch_seed)
                return images, labels
        return epoch_keyed_batches(dataset, plan, batch_size, min(len(paths), 4096), seed,
                                   augment_batch)
    if training:
        dataset = dataset.shuffle(min(len(paths), 4096), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=False)
    if training and augment_config is not None:
        augmenter = make_augmenter(augment_config, seed=seed)
        if augmenter is not None:
            dataset = dataset.map(lambda x, y: (augmenter(x, training=True), y),
                                  num_parallel_calls=AUTOTUNE)
    if regularise is not None:
        # One stateless seed per batch from a seeded stream: the draws do not depend on how
        # the parallel map interleaves.
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, batch_seed: regularise(batch[0], batch[1], batch_seed),
            num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


MaskSource = Sequence[str | os.PathLike] | Callable[[str], np.ndarray]


def _pair_loader(masks: MaskSource, channels: int, image_size: int):
    """numpy loader for (image path, mask path or "") -> (float32 image, uint8 [S, S, 1] mask).

    The mask is kept uint8 until after the cache: a quarter of the memory of float32.
    """
    mask_fn = masks if callable(masks) else None

    def load(image_path, mask_path):
        image_path = os.fsdecode(image_path) if isinstance(image_path, bytes) else str(image_path)
        image = read_image(image_path, channels, image_size)
        if mask_fn is not None:
            mask = resize_mask(np.asarray(mask_fn(image_path), np.uint8), image_size)
        else:
            mask_path = os.fsdecode(mask_path) if isinstance(mask_path, bytes) else str(mask_path)
            mask = read_mask(mask_path, image_size)
        return image, (mask > 0).astype(np.uint8)[:, :, None]

    return load


def segmentation_dataset(
    image_paths: Sequence[str],
    masks: MaskSource,
    image_size: int,
    channels: int,
    batch_size: int,
    training: bool,
    augment=None,
    cache: bool = True,
    seed: int = 0,
    plan: EpochPlan | None = None,
    crop: int | None = None,
    crop_tumour_fraction: float = 0.7,
) -> tf.data.Dataset:
    """(image float32 [B, S, S, C] 0..255, mask float32 [B, S, S, 1] 0/1) batches.

    ``crop`` (training only): after augmentation every image and mask is cut to a ``crop``-sized
    square (augment.make_tumour_crop), so batches are [B, crop, crop, C].

    ``masks`` is either one mask file per image (masks.pair_images_with_masks) or a callable
    image path -> uint8 [H, W] mask (coco_masks.coco_mask_fn). Images are decoded exactly as for
    classification; masks are resized with nearest so they stay 0/1. ``augment`` (training
    only) is a JointAugmentParams or config-like object; augmentation runs on whole batches with
    one stateless seed per batch from ``seed``, so runs repeat exactly; with a ``plan`` the
    seeds and the order are also keyed by epoch, so a resumed run repeats too.
    """
    image_paths = [os.fspath(p) for p in image_paths]
    if not image_paths:
        raise ValueError("no images to build a dataset from")
    if callable(masks):
        mask_paths = [""] * len(image_paths)
    else:
        mask_paths = [os.fspath(p) for p in masks]
        if len(mask_paths) != len(image_paths):
            raise ValueError(f"got {len(image_paths)} images but {len(mask_paths)} masks")
    load_np = _pair_loader(masks, channels, image_size)

    def load(image_path, mask_path):
        image, mask = tf.numpy_function(load_np, [image_path, mask_path], [tf.float32, tf.uint8],
                                        stateful=False)
        image.set_shape([image_size, image_size, channels])
        mask.set_shape([image_size, image_size, 1])
        return image, mask

    dataset = tf.data.Dataset.from_tensor_slices((path_bytes(image_paths), path_bytes(mask_paths)))
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors()  # same last guard as classification_dataset
    if cache:
        dataset = dataset.cache()
    augment_pair = make_joint_augmenter(augment, seed=seed) if training and augment is not None else None
    cropper = make_tumour_crop(crop, crop_tumour_fraction, seed) if training and crop else None

    def augment_and_crop(images, masks, batch_seed):
        if augment_pair is not None:
            images, masks = augment_pair(images, masks, batch_seed)
        if cropper is not None:
            images, masks = cropper(images, masks, batch_seed)
        return images, masks

    transform = augment_and_crop if (augment_pair is not None or cropper is not None) else None
    if training and plan is not None:
        dataset = dataset.map(lambda image, mask: (image, tf.cast(mask, tf.float32)),
                              num_parallel_calls=AUTOTUNE)
        augment_batch = None
        if transform is not None:
            def augment_batch(batch, batch_seed):
                return transform(batch[0], batch[1], batch_seed)
        return epoch_keyed_batches(dataset, plan, batch_size, min(len(image_paths), 4096), seed,
                                   augment_batch)
    if training:
        dataset = dataset.shuffle(min(len(image_paths), 4096), seed=seed,
                                  reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=False)
    dataset = dataset.map(lambda image, mask: (image, tf.cast(mask, tf.float32)),
                          num_parallel_calls=AUTOTUNE)
    if transform is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds))
        dataset = dataset.map(lambda pair, batch_seed: transform(pair[0], pair[1], batch_seed),
                              num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)
