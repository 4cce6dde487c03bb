"""Knowing when not to answer: an out-of-distribution score and temperature scaling.

A softmax classifier gives every input a confident class, a bar chart included. The guard
looks at the network's features at its finer resolutions (each pooled to its per-channel mean
and standard deviation) and measures, per layer, the
Mahalanobis distance to the nearest class of training images (class means, one shared
covariance: Lee et al. 2018, with their feature ensemble across layers). Each layer's distance
is divided by its 99th percentile on validation MRI slices, and the score is the largest of
them: an image is flagged when any layer finds it unusual beyond the threshold (by default the
score that 2.5 % of validation slices exceed).

Temperature scaling (Guo et al. 2017) is fitted on the validation split too: it leaves every
argmax alone and makes the probabilities honest.

The fitted guard lives in ``ood_guard.npz`` beside the ``.keras`` model; ``with_guard`` turns
model + guard into one Keras model with ``probabilities`` and ``ood_score`` outputs, which is
what the SavedModel and TFLite exports compute.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

GUARD_FILE = "ood_guard.npz"
DEFAULT_VALIDATION_QUANTILE = 0.975  # share of validation slices the threshold lets through
LAYER_QUANTILE = 0.99  # each layer's distance is divided by this validation quantile
SHRINKAGE = 0.01  # ridge on the covariance, as a fraction of its mean variance


@dataclasses.dataclass
class Guard:
    """What the fit found, one entry per feature layer; ``threshold`` is on the score."""

    feature_layers: list[str]
    means: list[np.ndarray]  # [classes, features_l]
    precisions: list[np.ndarray]  # [features_l, features_l]
    scales: list[float]  # each layer's validation quantile of its squared distance
    threshold: float
    temperature: float
    validation_quantile: float = DEFAULT_VALIDATION_QUANTILE
    # Decision weights: probabilities are multiplied by these (a prior shift) before the
    # temperature, e.g. notumor 0.4: a slice is called tumour-free only when the model is surer.
    class_weights: list[float] | None = None

    def __post_init__(self):
        self.class_weights = checked_class_weights(self.class_weights, self.num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.means[0].shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        arrays = {f"means_{i}": m for i, m in enumerate(self.means)}
        arrays.update({f"precision_{i}": p for i, p in enumerate(self.precisions)})
        header = {"feature_layers": self.feature_layers, "scales": self.scales,
                  "threshold": self.threshold, "temperature": self.temperature,
                  "validation_quantile": self.validation_quantile,
                  "class_weights": self.class_weights}
        np.savez(temporary, header=json.dumps(header), **arrays)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Guard:
        try:
            with np.load(path, allow_pickle=False) as stored:
                header = json.loads(str(stored["header"]))
                count = len(header["feature_layers"])
                means = [stored[f"means_{i}"] for i in range(count)]
                precisions = [stored[f"precision_{i}"] for i in range(count)]
        except (KeyError, ValueError, OSError) as error:
            raise ValueError(f"{path}: not an OOD guard file ({error}); refit it with "
                             "braintumor-tf calibrate") from error
        return cls(header["feature_layers"], means, precisions, list(header["scales"]),
                   float(header["threshold"]), float(header["temperature"]),
                   float(header["validation_quantile"]), header.get("class_weights"))


def guard_path_for(keras_path: str | os.PathLike) -> Path:
    return Path(keras_path).with_name(GUARD_FILE)


def feature_layer_names(model: keras.Model) -> list[str]:
    """The last layer at each spatial resolution down to 1/16 of the input.

    Early and middle features describe what an image looks like (texture, edges, contrast); the
    last stages and the pooled head features are trained to tell the four classes apart and map
    much that is not MRI onto them. Measured on the 12-epoch default model with non-MRI probes
    of seed 0 (docs/RESULTS.md): the first three resolutions flagged 99 % of probes against
    93 % with every resolution and the head features, at the same validation false alarms.
    """
    if len(model.output_shape) != 2:
        raise ValueError(f"{model.name}: the guard is for classifiers (output [N, classes])")
    size = model.input_shape[1]
    last_at_size: dict[tuple, str] = {}
    for layer in model.layers:
        shape = getattr(layer.output, "shape", None)
        if isinstance(layer, keras.layers.InputLayer) or shape is None or len(shape) != 4:
            continue
        if shape[-1] in (1, 3) or (size and shape[1] and shape[1] * 16 < size):
            continue  # pixels, not features; or too coarse
        last_at_size[tuple(shape[1:3])] = layer.name
    if not last_at_size:
        raise ValueError(f"{model.name}: no convolutional features at 1/16 of the input or finer")
    return list(last_at_size.values())


@keras.saving.register_keras_serializable(package="braintumor_tf")
class PooledStatistics(layers.Layer):
    """[N, H, W, C] -> [N, 2C], per-channel mean and standard deviation; [N, D] passes as is."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, tensor):
        tensor = ops.cast(tensor, "float32")
        if len(tensor.shape) == 2:
            return tensor
        mean = ops.mean(tensor, axis=(1, 2))
        variance = ops.mean(ops.square(tensor), axis=(1, 2)) - ops.square(mean)
        return ops.concatenate([mean, ops.sqrt(ops.maximum(variance, 0.0) + 1e-6)], axis=-1)

    def compute_output_shape(self, input_shape):
        if len(input_shape) == 2:
            return input_shape
        return (input_shape[0], None if input_shape[-1] is None else 2 * input_shape[-1])


def features_and_probabilities(model: keras.Model, feature_layers) -> keras.Model:
    """One pass: the pooled features of each layer, then the probabilities."""
    outputs = [PooledStatistics(name=f"pooled_{name}")(model.get_layer(name).output)
               for name in feature_layers]
    return keras.Model(model.inputs[0], [*outputs, model.output], name=f"{model.name}_features")


def _predict(model: keras.Model, pixels: np.ndarray, batch_size: int = 64):
    parts = None
    for start in range(0, len(pixels), batch_size):
        out = model(pixels[start:start + batch_size], training=False)
        parts = [[] for _ in out] if parts is None else parts
        for index, tensor in enumerate(out):
            parts[index].append(np.asarray(tensor, np.float64))
    arrays = [np.concatenate(p) for p in parts]
    return arrays[:-1], arrays[-1]


def mahalanobis_scores(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared distance to the nearest class mean, [N]."""
    diff = features[:, None, :] - means[None]  # [N, C, D]
    return np.einsum("ncd,de,nce->nc", diff, precision, diff).min(axis=1)


def guard_scores(features: list[np.ndarray], guard: Guard) -> np.ndarray:
    per_layer = [mahalanobis_scores(f, m, p) / s for f, m, p, s in
                 zip(features, guard.means, guard.precisions, guard.scales, strict=True)]
    return np.max(per_layer, axis=0)


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
    """Class means and covariances from training images; per-layer scales, threshold and
    temperature from validation images (never the test split). Returns the guard, what it
    measured and the validation probabilities before scaling (for calibration plots)."""
    if not 0.5 <= validation_quantile < 1.0:
        raise ValueError(f"validation_quantile must be in [0.5, 1), got {validation_quantile!r}")
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    if len(train_pixels) != len(train_labels) or len(val_pixels) != len(val_labels):
        raise ValueError("pixels and labels differ in length")
    num_classes = int(model.output_shape[-1])
    missing = sorted(set(range(num_classes)) - set(train_labels.tolist()))
    if missing:
        raise ValueError(f"the guard needs training images of every class; none of {missing}")
    names = feature_layer_names(model)
    extractor = features_and_probabilities(model, names)
    train_features, _ = _predict(extractor, train_pixels)
    val_features, val_probabilities = _predict(extractor, val_pixels)
    means, precisions, scales = [], [], []
    for train, val in zip(train_features, val_features, strict=True):
        class_means = np.stack([train[train_labels == c].mean(axis=0) for c in range(num_classes)])
        centred = train - class_means[train_labels]
        covariance = centred.T @ centred / len(centred)
        # Ridge: ReLU features have dead units, so the raw covariance is singular.
        covariance += np.eye(len(covariance)) * (SHRINKAGE * np.trace(covariance)
                                                 / len(covariance) + 1e-8)
        precision = np.linalg.inv(covariance)
        scales.append(float(np.quantile(mahalanobis_scores(val, class_means, precision),
                                         LAYER_QUANTILE)))
        means.append(class_means.astype(np.float32))
        precisions.append(precision.astype(np.float32))
    guard = Guard(names, means, precisions, scales, 1.0, 1.0, validation_quantile)
    val_scores = guard_scores(val_features, guard)
    guard.threshold = float(np.quantile(val_scores, validation_quantile))
    guard.temperature = fit_temperature(val_probabilities, val_labels)
    report = {
        "feature_layers": names, "feature_dims": [int(m.shape[1]) for m in means],
        "train_images": int(len(train_labels)), "val_images": int(len(val_labels)),
        "threshold": guard.threshold, "temperature": guard.temperature,
        "val_flagged": float(np.mean(val_scores > guard.threshold)),
    }
    return guard, report, val_probabilities


@keras.saving.register_keras_serializable(package="braintumor_tf")
class DistributionGuard(layers.Layer):
    """([pooled features per layer..., probabilities]) -> (scaled probabilities, OOD score).

    Means and precisions are weights (saved with the model); dimensions, scales, temperature
    and threshold are config. Computes in float32 whatever the policy: distances overflow
    float16.
    """

    def __init__(self, num_classes: int, feature_dims, scales, temperature: float = 1.0,
                 threshold: float = 1.0, class_weights=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        feature_dims, scales = [int(d) for d in feature_dims], [float(s) for s in scales]
        if int(num_classes) < 2 or not feature_dims or min(feature_dims) < 1:
            raise ValueError(f"num_classes must be >= 2 and feature_dims positive, got "
                             f"{num_classes!r}, {feature_dims!r}")
        if len(scales) != len(feature_dims) or min(scales) <= 0:
            raise ValueError(f"one positive scale per feature layer needed, got {scales!r}")
        if not temperature > 0 or not threshold > 0:
            raise ValueError(f"temperature and threshold must be > 0, got {temperature!r}, "
                             f"{threshold!r}")
        self.num_classes, self.feature_dims, self.scales = int(num_classes), feature_dims, scales
        self.temperature, self.threshold = float(temperature), float(threshold)
        self.class_weights = checked_class_weights(class_weights, self.num_classes)
        self.class_means, self.precisions = [], []
        for index, dim in enumerate(feature_dims):
            self.class_means.append(self.add_weight(
                shape=(self.num_classes, dim), initializer="zeros", trainable=False,
                name=f"means_{index}"))
            self.precisions.append(self.add_weight(
                shape=(dim, dim), initializer="identity", trainable=False,
                name=f"precision_{index}"))

    def call(self, inputs):
        *features, probabilities = inputs
        per_layer = []
        for feature, means, precision, scale in zip(features, self.class_means, self.precisions,
                                                    self.scales, strict=True):
            diff = ops.cast(feature, "float32")[:, None, :] - means[None]  # [N, C, D]
            projected = ops.einsum("ncd,de->nce", diff, precision)
            per_layer.append(ops.min(ops.sum(projected * diff, axis=-1), axis=-1) / scale)
        score = ops.max(ops.stack(per_layer, axis=-1), axis=-1)
        logits = ops.log(ops.clip(ops.cast(probabilities, "float32"), 1e-12, 1.0))
        if self.class_weights is not None:  # before the temperature: decisions do not depend on it
            logits = logits + ops.log(ops.convert_to_tensor(self.class_weights, "float32"))
        return ops.softmax(logits / self.temperature, axis=-1), score

    def compute_output_shape(self, input_shapes):
        probabilities_shape = input_shapes[-1]
        return probabilities_shape, (probabilities_shape[0],)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "feature_dims": self.feature_dims, "scales": self.scales,
                "temperature": self.temperature, "threshold": self.threshold,
                "class_weights": self.class_weights}


def checked_class_weights(class_weights, num_classes: int) -> list[float] | None:
    """None (no reweighting) or one positive, finite weight per class."""
    if class_weights is None:
        return None
    weights = [float(w) for w in class_weights]
    if len(weights) != int(num_classes) or not all(np.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"class_weights must be {num_classes} positive numbers, got "
                         f"{list(class_weights)!r}")
    return weights


def is_guarded(model) -> bool:
    """A model made by ``with_guard`` (dict outputs ``probabilities`` and ``ood_score``)."""
    return any(layer.name == "distribution_guard" for layer in getattr(model, "layers", []))


def with_guard(model: keras.Model, guard: Guard, tta: str = "none") -> keras.Model:
    """One model, two outputs: ``probabilities`` (temperature-scaled, averaged over the
    test-time views when ``tta`` asks for them) and ``ood_score`` (of the image as given)."""
    from braintumor_tf.models.tta import _VIEWS, TTA_MODES, SquareSymmetry

    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {TTA_MODES}")
    names = {layer.name for layer in model.layers}
    missing = [name for name in guard.feature_layers if name not in names]
    if missing or int(model.output_shape[-1]) != guard.num_classes:
        raise ValueError(f"the OOD guard was fitted for another model (layers {missing} missing "
                         f"or {guard.num_classes} classes); refit it: braintumor-tf calibrate")
    extractor = features_and_probabilities(model, guard.feature_layers)
    dims = [int(t.shape[-1]) for t in extractor.outputs[:-1]]
    if dims != [int(m.shape[1]) for m in guard.means]:
        raise ValueError(f"the OOD guard was fitted for another model (feature sizes "
                         f"{[int(m.shape[1]) for m in guard.means]}, this model {dims}); "
                         "refit it: braintumor-tf calibrate")
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    *features, probabilities = extractor(inputs)
    if tta != "none":
        views = [probabilities]
        for index, (turns, mirror) in enumerate(_VIEWS[tta][1:], start=1):
            view = SquareSymmetry(turns, mirror, dtype="float32", name=f"view_{index}")(inputs)
            views.append(extractor(view)[-1])
        probabilities = layers.Average(dtype="float32", name="tta_average")(views)
    layer = DistributionGuard(guard.num_classes, dims, guard.scales, guard.temperature,
                              guard.threshold, guard.class_weights, name="distribution_guard")
    scaled, score = layer([*features, probabilities])
    layer.set_weights([w for pair in zip(guard.means, guard.precisions, strict=True)
                       for w in pair])
    scaled = layers.Identity(name="probabilities", dtype="float32")(scaled)
    score = layers.Identity(name="ood_score", dtype="float32")(score)
    return keras.Model(inputs, {"probabilities": scaled, "ood_score": score},
                       name=f"{model.name}_guarded")


def load_guard_beside(keras_path: str | os.PathLike) -> Guard | None:
    """The guard fitted for this model (``ood_guard.npz`` in its run folder), or None.
    ``with_guard`` refuses one whose layers or sizes do not match the model."""
    path = guard_path_for(keras_path)
    return Guard.load(path) if path.is_file() else None


def load_guard_of(keras_path: str | os.PathLike) -> Guard | None:
    """The model's own guard: embedded in the .keras file (spec.KERAS_GUARD_ENTRY), else the
    ``ood_guard.npz`` beside a file written before guards were embedded; None without one."""
    from braintumor_tf.spec import keras_guard_file, read_spec

    embedded = keras_guard_file(keras_path)
    if embedded is not None:
        return Guard.load(embedded)
    if read_spec(keras_path) is not None:  # a spec and no embedded guard: the model has none
        return None
    return load_guard_beside(keras_path)
