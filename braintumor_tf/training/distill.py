"""Distillation: a smaller classifier trained to give a larger one's answers.

The edge file has a size budget the release does not fit. A student fitted to the release's
probabilities (soft targets: they carry which classes the release hesitates between) agrees with
it far more often than one fitted to the labels, and one that starts from the release's own
weights for every layer the two share starts close to it. Agreement with the release on images
neither trained on is what the edge gate measures, so that is what chooses the epoch.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
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


def soft_targets(predict: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray,
                 batch_size: int = 64) -> np.ndarray:
    """The teacher's probabilities, in batches (``predict`` may be any runtime's predict)."""
    if len(pixels) == 0:
        raise ValueError("no images to compute the teacher's targets on")
    rows = [np.asarray(predict(pixels[start:start + batch_size]), np.float32)
            for start in range(0, len(pixels), batch_size)]
    targets = np.concatenate(rows)
    if targets.ndim != 2 or not np.allclose(targets.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("the teacher must return one probability row per image")
    return targets


class _Agreement(keras.callbacks.Callback):
    """Top-1 agreement with the teacher on held-out images after every epoch; the best epoch so
    far is saved as it comes and the history appended, so an interrupted run keeps both."""

    def __init__(self, student, pixels, teacher_top1, history_file: Path, batch_size: int,
                 best_file: Path):
        super().__init__()
        self.student = student   # the model trained may be a wrapper around it
        self.pixels, self.teacher_top1 = pixels, teacher_top1
        self.history_file, self.batch_size, self.best_file = history_file, batch_size, best_file
        self.best, self.best_epoch, self.best_weights = -1.0, -1, None
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        predicted = self.student.predict(self.pixels, batch_size=self.batch_size, verbose=0)
        agreement = float(np.mean(predicted.argmax(axis=1) == self.teacher_top1))
        row = {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", float("nan"))),
               "val_agreement": agreement,
               "seconds": round(time.perf_counter() - self.started, 1)}
        new = not self.history_file.exists()
        with self.history_file.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(f"epoch {epoch + 1}: agreement with the teacher on held-out images {agreement:.4f}",
              flush=True)
        if agreement > self.best:
            self.best, self.best_epoch = agreement, epoch + 1
            self.best_weights = self.student.get_weights()
            self.student.save(self.best_file)


class _FunctionMatching(keras.Model):
    """Trains ``student`` on the teacher's answers for exactly the (augmented, mixed) images the
    student sees, computed in the training step: the student is never asked to copy an answer
    given to a different view of the image."""

    def __init__(self, student: keras.Model, teacher: Callable):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)   # a tuple: Keras does not try to track a plain function
        self._divergence = keras.losses.KLDivergence()

    def call(self, images, training=False):
        return self.student(images, training=training)

    def train_step(self, images):
        targets = tf.stop_gradient(tf.cast(self._teacher[0](images), tf.float32))
        with tf.GradientTape() as tape:
            predicted = tf.cast(self.student(images, training=True), tf.float32)
            loss = self._divergence(targets, predicted)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return {"loss": loss}


def _consistent_views(image, seeds, mirror: bool):
    """A random view of one image: flip, zoom-crop (72-100 % of the side), contrast and
    brightness. Stateless, keyed by per-image seeds."""
    if mirror:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    size = tf.shape(image)[0]
    side = tf.cast(tf.cast(size, tf.float32) * tf.random.stateless_uniform(
        [], seeds[1], 0.72, 1.0), tf.int32)
    channels = tf.shape(image)[2]
    image = tf.image.stateless_random_crop(image, tf.stack([side, side, channels]), seed=seeds[2])
    image = tf.image.resize(image, tf.stack([size, size]), antialias=True)
    mean = tf.reduce_mean(image)
    contrast = tf.random.stateless_uniform([], seeds[3], 0.8, 1.2)
    shift = tf.random.stateless_uniform([], seeds[4], -12.0, 12.0)
    return tf.clip_by_value((image - mean) * contrast + mean + shift, 0.0, 255.0)


def _mix(images, seed, strength: float):
    """Mixup inside a batch (each image blended with the batch reversed), weight ~ Beta(a, a)."""
    count = tf.shape(images)[0]
    first = tf.random.stateless_gamma([count], seed, alpha=strength)
    second = tf.random.stateless_gamma([count], seed + 1, alpha=strength)
    weight = tf.reshape(first / (first + second), [-1, 1, 1, 1])
    return weight * images + (1.0 - weight) * tf.reverse(images, axis=[0])


def _consistent_dataset(train_pixels, batch_size, seed, mirror, mixup):
    seeds = tf.data.Dataset.random(seed=seed).batch(2).batch(5)
    images = (tf.data.Dataset.from_tensor_slices(train_pixels)
              .shuffle(len(train_pixels), seed=seed, reshuffle_each_iteration=True))
    dataset = (tf.data.Dataset.zip((images, seeds))
               .map(lambda image, keys: _consistent_views(image, keys, mirror),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size))
    if mixup > 0:
        batch_seeds = tf.data.Dataset.random(seed=seed + 1).batch(2)
        dataset = tf.data.Dataset.zip((dataset, batch_seeds)).map(
            lambda batch, key: _mix(batch, key, mixup), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def distill(student: keras.Model, train_pixels: np.ndarray, train_targets: np.ndarray | None,
            val_pixels: np.ndarray, val_targets: np.ndarray, out_dir, epochs: int = 8,
            batch_size: int = 32, learning_rate: float = 5e-4, mirror: bool = True,
            seed: int = 0, verbose: int = 2, teacher: Callable | None = None,
            mixup: float = 0.0) -> dict:
    """Fit ``student`` to the teacher's probabilities (KL divergence), keep the epoch that agrees
    best with the teacher on the validation images as ``out_dir/model.keras`` (written whenever
    an epoch beats the best so far).

    Two modes. With ``train_targets`` (fixed soft targets, one row per image) the student copies
    the teacher's answer for each training image. With ``teacher`` (a traceable function from
    images to probabilities, e.g. a SavedModel signature) the teacher answers every augmented
    and, with ``mixup`` > 0 (the Beta parameter), mixed batch as it is drawn: "consistent"
    function matching, which keeps supplying inputs the student has not memorised.
    ``mirror`` flips training images left-right; only valid when the teacher's answer does not
    change under the flip (a teacher that averages over the mirror, as the release does).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if (teacher is None) == (train_targets is None):
        raise ValueError("give either train_targets (fixed soft targets) or teacher "
                         "(answers computed on every augmented batch), not both or neither")
    if mixup < 0 or (mixup > 0 and teacher is None):
        raise ValueError(f"mixup must be >= 0 and needs a teacher to answer the mixed images, "
                         f"got {mixup}")
    if len(val_pixels) != len(val_targets) or (
            train_targets is not None and len(train_pixels) != len(train_targets)):
        raise ValueError("each image needs one target row")
    if val_targets.shape[1] != student.output_shape[-1]:
        raise ValueError(f"the teacher gives {val_targets.shape[1]} classes, the student "
                         f"{student.output_shape[-1]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history_file = out_dir / "distill_history.csv"
    history_file.unlink(missing_ok=True)

    def augment(pair, flip_seed):
        image, target = pair
        if mirror:   # stateless, one seed per image: the flips do not depend on thread timing
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image, target

    steps = epochs * int(np.ceil(len(train_pixels) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps,
                                                      alpha=0.01)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=1e-4)
    if teacher is None:
        examples = (tf.data.Dataset.from_tensor_slices((train_pixels, train_targets))
                    .shuffle(len(train_pixels), seed=seed, reshuffle_each_iteration=True))
        flip_seeds = tf.data.Dataset.random(seed=seed).batch(2)
        dataset = (tf.data.Dataset.zip((examples, flip_seeds))
                   .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
                   .batch(batch_size).prefetch(tf.data.AUTOTUNE))
        trained = student
        trained.compile(optimizer=optimizer, loss=keras.losses.KLDivergence())
    else:
        dataset = _consistent_dataset(train_pixels, batch_size, seed, mirror, mixup)
        trained = _FunctionMatching(student, teacher)
        trained.compile(optimizer=optimizer)
    tracker = _Agreement(student, val_pixels, val_targets.argmax(axis=1), history_file,
                         batch_size, out_dir / "model.keras")
    keras.utils.set_random_seed(seed)
    trained.fit(dataset, epochs=epochs, callbacks=[tracker], verbose=verbose)
    student.set_weights(tracker.best_weights)   # model.keras already holds them
    summary = {"best_epoch": tracker.best_epoch, "val_agreement": tracker.best,
               "epochs": epochs, "train_images": int(len(train_pixels)),
               "mode": "fixed targets" if teacher is None else "consistent", "mixup": mixup,
               "val_images": int(len(val_pixels)), "parameters": int(student.count_params()),
               "seconds": round(time.perf_counter() - tracker.started, 1)}
    (out_dir / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
