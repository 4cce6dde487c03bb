"""Knowing when not to answer: an out-of-distribution score and temperature scaling.

A softmax classifier gives every input a confident class, a bar chart included. The guard
measures how far an image's penultimate features lie from the training images of the nearest
class (Mahalanobis distance with one shared covariance, Lee et al. 2018) and flags inputs
beyond a threshold set on the validation split (by default 2.5 % of validation MRI slices are
flagged). Temperature scaling (Guo et al. 2017) is fitted on the validation split too: it
leaves every argmax alone and makes the probabilities honest.

The fitted guard lives in ``ood_guard.npz`` beside the ``.keras`` model; ``with_guard``
turns model + guard into one Keras model with ``probabilities`` and ``ood_score`` outputs,
which is what the SavedModel and TFLite exports compute.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

GUARD_FILE = "ood_guard.npz"
DEFAULT_VALIDATION_QUANTILE = 0.975  # share of validation slices the threshold lets through


@dataclasses.dataclass
class Guard:
    """What the fit found; ``threshold`` is on the squared Mahalanobis distance."""

    means: np.ndarray  # [classes, features]
    precision: np.ndarray  # [features, features]
    threshold: float
    temperature: float
    feature_layer: str
    validation_quantile: float = DEFAULT_VALIDATION_QUANTILE

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(temporary, means=self.means, precision=self.precision,
                 threshold=self.threshold, temperature=self.temperature,
                 feature_layer=self.feature_layer, validation_quantile=self.validation_quantile)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Guard:
        with np.load(path, allow_pickle=False) as stored:
            return cls(means=stored["means"], precision=stored["precision"],
                       threshold=float(stored["threshold"]),
                       temperature=float(stored["temperature"]),
                       feature_layer=str(stored["feature_layer"]),
                       validation_quantile=float(stored["validation_quantile"]))


def guard_path_for(keras_path: str | os.PathLike) -> Path:
    return Path(keras_path).with_name(GUARD_FILE)


def feature_layer_name(model: keras.Model) -> str:
    """The layer feeding the head's first Dense layer: the pooled convolutional features.

    (The dense layer after it is trained to separate the four classes and maps much of what is
    not MRI onto them; measured on phantoms, pooled features refused photographs that the dense
    features let through.)
    """
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    if not dense or len(model.output_shape) != 2:
        raise ValueError(f"{model.name}: the guard needs a classifier ending in a Dense layer")
    head = dense[0]
    for layer in model.layers:
        if layer.output is head.input:
            return layer.name
    raise ValueError(f"{model.name}: cannot find the layer feeding {head.name}")


def features_and_probabilities(model: keras.Model, feature_layer: str) -> keras.Model:
    return keras.Model(model.inputs, [model.get_layer(feature_layer).output, model.output],
                       name=f"{model.name}_features")


def _predict(model: keras.Model, pixels: np.ndarray, batch_size: int = 64):
    features, probabilities = [], []
    for start in range(0, len(pixels), batch_size):
        f, p = model(pixels[start:start + batch_size], training=False)
        features.append(np.asarray(f, np.float64))
        probabilities.append(np.asarray(p, np.float64))
    return np.concatenate(features), np.concatenate(probabilities)


def mahalanobis_scores(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared distance to the nearest class mean, [N]."""
    diff = features[:, None, :] - means[None]  # [N, C, D]
    return np.einsum("ncd,de,nce->nc", diff, precision, diff).min(axis=1)


def scale_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) = softmax(logits / T): the model's softmax output is enough."""
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.2, 10] with the lowest validation negative log-likelihood (grid, then refine)."""
    def nll(temperature):
        scaled = scale_probabilities(probabilities, temperature)
        return -np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], 1e-12, 1.0)))

    grid = np.exp(np.linspace(np.log(0.2), np.log(10.0), 81))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.05, 0.05, 41))
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def fit_guard(model: keras.Model, train_pixels: np.ndarray, train_labels: np.ndarray,
              val_pixels: np.ndarray, val_labels: np.ndarray,
              validation_quantile: float = DEFAULT_VALIDATION_QUANTILE
              ) -> tuple[Guard, dict, np.ndarray]:
    """Class means and covariance from training images, threshold and temperature from
    validation images (never the test split). Returns the guard, what it measured and the
    validation probabilities before scaling (for calibration plots)."""
    if not 0.5 <= validation_quantile < 1.0:
        raise ValueError(f"validation_quantile must be in [0.5, 1), got {validation_quantile!r}")
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    if len(train_pixels) != len(train_labels) or len(val_pixels) != len(val_labels):
        raise ValueError("pixels and labels differ in length")
    num_classes = int(model.output_shape[-1])
    missing = sorted(set(range(num_classes)) - set(train_labels.tolist()))
    if missing:
        raise ValueError(f"the guard needs training images of every class; none of {missing}")
    layer = feature_layer_name(model)
    extractor = features_and_probabilities(model, layer)
    train_features, _ = _predict(extractor, train_pixels)
    means = np.stack([train_features[train_labels == c].mean(axis=0) for c in range(num_classes)])
    centred = train_features - means[train_labels]
    covariance = centred.T @ centred / len(centred)
    # Shrinkage: ReLU features have dead units, so the raw covariance is singular.
    covariance += np.eye(len(covariance)) * (1e-3 * np.trace(covariance) / len(covariance) + 1e-8)
    precision = np.linalg.inv(covariance)
    val_features, val_probabilities = _predict(extractor, val_pixels)
    val_scores = mahalanobis_scores(val_features, means, precision)
    threshold = float(np.quantile(val_scores, validation_quantile))
    temperature = fit_temperature(val_probabilities, val_labels)
    guard = Guard(means.astype(np.float32), precision.astype(np.float32), threshold, temperature,
                  layer, validation_quantile)
    report = {
        "feature_layer": layer, "feature_dim": int(means.shape[1]),
        "train_images": int(len(train_labels)), "val_images": int(len(val_labels)),
        "threshold": threshold, "temperature": temperature,
        "val_flagged": float(np.mean(val_scores > threshold)),
    }
    return guard, report, val_probabilities


@keras.saving.register_keras_serializable(package="braintumor_tf")
class DistributionGuard(layers.Layer):
    """(features, probabilities) -> (temperature-scaled probabilities, OOD score).

    Means and precision are weights (saved with the model); temperature and threshold are
    config. Computes in float32 whatever the policy: distances in float16 overflow.
    """

    def __init__(self, num_classes: int, feature_dim: int, temperature: float = 1.0,
                 threshold: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(num_classes) < 2 or int(feature_dim) < 1:
            raise ValueError(f"num_classes must be >= 2 and feature_dim >= 1, got "
                             f"{num_classes!r}, {feature_dim!r}")
        if not temperature > 0 or not threshold > 0:
            raise ValueError(f"temperature and threshold must be > 0, got {temperature!r}, "
                             f"{threshold!r}")
        self.num_classes, self.feature_dim = int(num_classes), int(feature_dim)
        self.temperature, self.threshold = float(temperature), float(threshold)
        self.means = self.add_weight(shape=(self.num_classes, self.feature_dim),
                                     initializer="zeros", trainable=False, name="means")
        self.precision = self.add_weight(shape=(self.feature_dim, self.feature_dim),
                                         initializer="identity", trainable=False, name="precision")

    def call(self, inputs):
        features, probabilities = (ops.cast(t, "float32") for t in inputs)
        diff = features[:, None, :] - self.means[None]  # [N, C, D]
        projected = ops.einsum("ncd,de->nce", diff, self.precision)
        score = ops.min(ops.sum(projected * diff, axis=-1), axis=-1)
        logits = ops.log(ops.clip(probabilities, 1e-12, 1.0)) / self.temperature
        return ops.softmax(logits, axis=-1), score

    def compute_output_shape(self, input_shapes):
        features_shape, probabilities_shape = input_shapes
        return probabilities_shape, (features_shape[0],)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "feature_dim": self.feature_dim, "temperature": self.temperature,
                "threshold": self.threshold}


def with_guard(model: keras.Model, guard: Guard, tta: str = "none") -> keras.Model:
    """One model, two outputs: ``probabilities`` (temperature-scaled, averaged over the
    test-time views when ``tta`` asks for them) and ``ood_score`` (of the image as given)."""
    from braintumor_tf.models.tta import _VIEWS, TTA_MODES, SquareSymmetry

    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {TTA_MODES}")
    names = {layer.name for layer in model.layers}
    dim = model.get_layer(guard.feature_layer).output.shape[-1] if guard.feature_layer in names \
        else None
    if dim != guard.means.shape[1] or model.output_shape[-1] != guard.means.shape[0]:
        raise ValueError(f"the OOD guard was fitted for another model (layer "
                         f"{guard.feature_layer!r}, {guard.means.shape[1]} features, "
                         f"{guard.means.shape[0]} classes); refit it: braintumor-tf calibrate")
    extractor = features_and_probabilities(model, guard.feature_layer)
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    features, probabilities = extractor(inputs)
    if tta != "none":
        views = [probabilities]
        for index, (turns, mirror) in enumerate(_VIEWS[tta][1:], start=1):
            view = SquareSymmetry(turns, mirror, dtype="float32", name=f"view_{index}")(inputs)
            views.append(extractor(view)[1])
        probabilities = layers.Average(dtype="float32", name="tta_average")(views)
    layer = DistributionGuard(guard.means.shape[0], guard.means.shape[1], guard.temperature,
                              guard.threshold, name="distribution_guard")
    scaled, score = layer([features, probabilities])
    layer.set_weights([guard.means, guard.precision])
    scaled = layers.Identity(name="probabilities", dtype="float32")(scaled)
    score = layers.Identity(name="ood_score", dtype="float32")(score)
    return keras.Model(inputs, {"probabilities": scaled, "ood_score": score},
                       name=f"{model.name}_guarded")


def is_guarded(model) -> bool:
    """A model made by ``with_guard`` (dict outputs ``probabilities`` and ``ood_score``)."""
    return any(layer.name == "distribution_guard" for layer in getattr(model, "layers", []))


def load_guard_beside(keras_path: str | os.PathLike) -> Guard | None:
    """The guard fitted for this model (``ood_guard.npz`` in its run folder), or None.
    ``with_guard`` refuses one whose layer or sizes do not match the model."""
    path = guard_path_for(keras_path)
    return Guard.load(path) if path.is_file() else None
