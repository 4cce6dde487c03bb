"""The release recipe's extra augmentation: intensity changes, erasing, mixup and cutmix."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from braintumor_tf.config import AugmentConfig
from braintumor_tf.data.augment import make_batch_regulariser
from braintumor_tf.data.datasets import EpochPlan, classification_dataset

SIZE = 32
BATCH = 8


def _constant_batch():
    """Image i is flat grey 20 * (i + 1) with label i % 4: mixes are easy to read back."""
    values = 20.0 * (np.arange(BATCH) + 1)
    images = np.ones((BATCH, SIZE, SIZE, 1), np.float32) * values[:, None, None, None]
    labels = np.eye(4, dtype=np.float32)[np.arange(BATCH) % 4]
    return tf.constant(images), tf.constant(labels), values


def _off(**on):
    zero = dict(horizontal_flip=False, rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0,
                brightness=0.0)
    return AugmentConfig(**{**zero, **on})


def test_off_is_none_and_config_validates():
    assert make_batch_regulariser(_off()) is None
    assert make_batch_regulariser(AugmentConfig()) is None  # the default stays as measured
    for bad, message in [(dict(erasing=1.0), "erasing"), (dict(mixup=-1.0), "mixup"),
                         (dict(mix_probability=0.0), "mix_probability"), (dict(gamma=2.0), "gamma")]:
        with pytest.raises(ValueError, match=message):
            AugmentConfig(**bad)


def test_mixup_mixes_pixels_and_labels_in_the_same_ratio():
    images, labels, values = _constant_batch()
    regularise = make_batch_regulariser(_off(mixup=1.0, mix_probability=1.0), seed=3)
    mixed, soft = (t.numpy() for t in regularise(images, labels, [5, 9]))
    partner = values[::-1]
    lam = (mixed[:, 0, 0, 0] - partner) / (values - partner)
    np.testing.assert_allclose(mixed.std(axis=(1, 2, 3)), 0, atol=1e-3)  # still flat images
    np.testing.assert_allclose(soft.sum(axis=1), 1, atol=1e-5)
    own = soft[np.arange(BATCH), np.arange(BATCH) % 4]
    # Image i and its partner 7 - i share a class when i % 4 == (7 - i) % 4: never for 8 images.
    np.testing.assert_allclose(own, lam, atol=1e-4)
    assert lam.min() < 0.95 and np.all((lam >= 0) & (lam <= 1))


def test_cutmix_labels_follow_the_pasted_area():
    images, labels, values = _constant_batch()
    regularise = make_batch_regulariser(_off(cutmix=1.0, mix_probability=1.0), seed=1)
    for step in range(3):
        mixed, soft = (t.numpy() for t in regularise(images, labels, [step, 0]))
        kept = (mixed[..., 0] == values[:, None, None]).mean(axis=(1, 2))
        own = soft[np.arange(BATCH), np.arange(BATCH) % 4]
        np.testing.assert_allclose(own, kept, atol=1e-5)
        assert kept.min() < 1.0  # something was pasted


def test_mix_probability_leaves_the_rest_whole():
    images, labels, _ = _constant_batch()
    regularise = make_batch_regulariser(_off(cutmix=1.0, mix_probability=0.25), seed=0)
    whole = []
    for step in range(40):
        _, soft = regularise(images, labels, [step, 1])
        whole.extend(np.isclose(soft.numpy().max(axis=1), 1.0))
    assert 0.6 < np.mean(whole) < 0.9  # 0.75 expected (a few mixes also keep ~all)


def test_intensity_and_erasing_are_seeded_and_stay_in_range():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (BATCH, SIZE, SIZE, 1)), tf.float32)
    labels = tf.one_hot(np.arange(BATCH) % 4, 4)
    regularise = make_batch_regulariser(_off(gamma=0.4, noise=0.05, blur=0.9, erasing=0.9), seed=2)
    first, soft = regularise(images, labels, [1, 2])
    again, _ = regularise(images, labels, [1, 2])
    other, _ = regularise(images, labels, [1, 3])
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert not np.allclose(first.numpy(), other.numpy())
    assert 0.0 <= first.numpy().min() and first.numpy().max() <= 255.0
    np.testing.assert_array_equal(soft.numpy(), labels.numpy())  # labels untouched
    # Blur smooths: neighbouring pixels differ less than in the white-noise input.
    blurred = make_batch_regulariser(_off(blur=0.99), seed=0)(images, labels, [0, 0])[0].numpy()
    assert np.abs(np.diff(blurred, axis=2)).mean() < np.abs(np.diff(images.numpy(), axis=2)).mean()


@pytest.mark.parametrize("deterministic", [False, True])
def test_training_dataset_carries_soft_labels(tmp_path, deterministic):
    paths, classes = [], []
    for index in range(16):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((SIZE, SIZE), 10 * index, np.uint8)).save(path)
        paths.append(str(path))
        classes.append(index % 4)
    config = AugmentConfig(mixup=1.0, cutmix=1.0, mix_probability=1.0, gamma=0.2)
    plan = EpochPlan(epochs=2, steps_per_epoch=2) if deterministic else None

    def one_pass():
        dataset = classification_dataset(paths, classes, SIZE, 1, 8, 4, training=True,
                                         augment_config=config, seed=4, plan=plan)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(2)]

    batches = one_pass()
    soft = np.concatenate([y for _, y in batches])
    np.testing.assert_allclose(soft.sum(axis=1), 1, atol=1e-5)
    assert (soft.max(axis=1) < 0.999).mean() > 0.5
    if deterministic:  # the (seed, epoch, step) keying covers the new draws too
        for (x1, y1), (x2, y2) in zip(batches, one_pass(), strict=True):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
