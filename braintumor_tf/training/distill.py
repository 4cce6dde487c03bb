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

    def __init__(self, pixels, teacher_top1, history_file: Path, batch_size: int, best_file: Path):
        super().__init__()
        self.pixels, self.teacher_top1 = pixels, teacher_top1
        self.history_file, self.batch_size, self.best_file = history_file, batch_size, best_file
        self.best, self.best_epoch, self.best_weights = -1.0, -1, None
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        predicted = self.model.predict(self.pixels, batch_size=self.batch_size, verbose=0)
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
            self.best_weights = self.model.get_weights()
            self.model.save(self.best_file)


def distill(student: keras.Model, train_pixels: np.ndarray, train_targets: np.ndarray,
            val_pixels: np.ndarray, val_targets: np.ndarray, out_dir, epochs: int = 8,
            batch_size: int = 32, learning_rate: float = 5e-4, mirror: bool = True,
            seed: int = 0, verbose: int = 2) -> dict:
    """Fit ``student`` to the teacher's probabilities (KL divergence), keep the epoch that agrees
    best with the teacher on the validation images as ``out_dir/model.keras`` (written whenever
    an epoch beats the best so far).

    ``mirror`` flips training images left-right; only valid when the teacher's answer does not
    change under the flip (a teacher that averages over the mirror, as the release does).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if len(train_pixels) != len(train_targets) or len(val_pixels) != len(val_targets):
        raise ValueError("each image needs one target row")
    if train_targets.shape[1] != student.output_shape[-1]:
        raise ValueError(f"the teacher gives {train_targets.shape[1]} classes, the student "
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

    examples = (tf.data.Dataset.from_tensor_slices((train_pixels, train_targets))
                .shuffle(len(train_pixels), seed=seed, reshuffle_each_iteration=True))
    flip_seeds = tf.data.Dataset.random(seed=seed).batch(2)
    dataset = (tf.data.Dataset.zip((examples, flip_seeds))
               .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    steps = epochs * int(np.ceil(len(train_pixels) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps,
                                                      alpha=0.01)
    student.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                    loss=keras.losses.KLDivergence())
    tracker = _Agreement(val_pixels, val_targets.argmax(axis=1), history_file, batch_size,
                         out_dir / "model.keras")
    keras.utils.set_random_seed(seed)
    student.fit(dataset, epochs=epochs, callbacks=[tracker], verbose=verbose)
    student.set_weights(tracker.best_weights)   # model.keras already holds them
    summary = {"best_epoch": tracker.best_epoch, "val_agreement": tracker.best,
               "epochs": epochs, "train_images": int(len(train_pixels)),
               "val_images": int(len(val_pixels)), "parameters": int(student.count_params()),
               "seconds": round(time.perf_counter() - tracker.started, 1)}
    (out_dir / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
