"""Distillation: a smaller classifier trained to give a larger one's answers, through the one
training driver (``train.teacher``).

The edge file has a size budget the release does not fit. A student fitted to the release's
probabilities (soft targets: they carry which classes the release hesitates between) agrees with
it far more often than one fitted to the labels, and one that starts from the release's own
weights for every layer the two share starts close to it. The teacher answers every augmented
batch as it is drawn, so the student is never asked to copy an answer given to another view of
the image; validation accuracy then is top-1 agreement with the teacher, which chooses the epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf


def leaf_layers(model: keras.Model) -> list:
    """Layers of ``model`` with nested models opened (a test-time-augmentation wrapper holds the
    trained network as one layer)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(leaf_layers(layer))
        else:
            found.append(layer)
    return found


def transfer_weights(teacher: keras.Model, student: keras.Model) -> list[str]:
    """Copy the weights of every student layer whose teacher namesake has the same weight shapes;
    return the names copied. Layers the student lacks or reshapes keep their initialisation."""
    by_name = {layer.name: layer for layer in leaf_layers(teacher)}
    copied = []
    for layer in leaf_layers(student):
        source = by_name.get(layer.name)
        if source is None or not layer.weights:
            continue
        if [tuple(w.shape) for w in source.weights] != [tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(source.get_weights())
        copied.append(layer.name)
    return copied


def with_teacher_answers(dataset: tf.data.Dataset, teacher: Callable, teacher_size: int,
                         image_size: int) -> tf.data.Dataset:
    """(images, labels) batches -> (images, the teacher's probabilities for those images): the
    labels are replaced, so any classification loss and accuracy now measure the teacher. Images
    are resized (bilinear, antialiased) for a teacher of another input size."""

    def answer(images, labels):
        seen = images if teacher_size == image_size else tf.image.resize(
            images, (teacher_size, teacher_size), antialias=True)
        return images, tf.cast(teacher(seen), tf.float32)

    return dataset.map(answer, num_parallel_calls=tf.data.AUTOTUNE)


def keras_teacher(model: keras.Model) -> Callable:
    return lambda images: model(images, training=False)


def savedmodel_teacher(path) -> Callable:
    """The ``predict_pixels`` signature of an exported classifier (its averaging and temperature
    included)."""
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["predict_pixels"]

    def answer(images):
        return signature(pixels=images)["probabilities"]

    answer.keep_alive = loaded  # the signature needs its variables
    return answer
