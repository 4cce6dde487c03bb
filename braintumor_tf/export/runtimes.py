"""One predict() over every model format, so evaluation and benchmarks are written once."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.config import DEFAULT_SEGMENTATION_THRESHOLD, TASKS

RUNTIME_KINDS = ("keras", "savedmodel", "tflite")
_ACCEPTED = (
    "expected a .keras file, a SavedModel directory (with saved_model.pb), "
    "a TF Serving base directory (numeric version sub-directories) or a .tflite file"
)

# Segmenters: probability above which a pixel is tumour, unless the model says otherwise.
DEFAULT_THRESHOLD = DEFAULT_SEGMENTATION_THRESHOLD


def configured_threshold(keras_path: Path) -> float:
    """A segmenter's ``segmentation.threshold`` from the run's config.yaml beside its .keras file
    (training, evaluation, export and predict then agree); the default without one."""
    import yaml

    config_file = Path(keras_path).parent / "config.yaml"
    if config_file.is_file():
        tree = yaml.safe_load(config_file.read_text()) or {}
        value = (tree.get("segmentation") or {}).get("threshold")
        if isinstance(value, int | float) and 0.0 < float(value) < 1.0:
            return float(value)
    return DEFAULT_THRESHOLD


class Runtime:
    """A loaded model that maps raw pixels [N, S, S, C] in 0..255 to probabilities: [N, K] for a
    classifier, a tumour probability per pixel [N, S, S, 1] for a segmenter (``task``)."""

    kind = "base"

    def __init__(
        self,
        path: Path,
        image_size: int,
        channels: int,
        num_classes: int,
        class_names: Sequence[str] | None,
        batch_size: int = 64,
        task: str = "classification",
        threshold: float = DEFAULT_THRESHOLD,
    ):
        if task not in TASKS:
            raise ValueError(f"{path}: unknown model task {task!r}; expected one of {TASKS}")
        self.task = task
        if task == "segmentation":
            # One sigmoid channel: the classifier's class names do not apply, whoever passed them.
            class_names = ("tumour",)
        if class_names is None:
            # Formats without stored names get placeholders rather than a guess.
            class_names = tuple(f"class_{i}" for i in range(num_classes))
        if len(class_names) != num_classes:
            raise ValueError(
                f"{path}: model has {num_classes} outputs but {len(class_names)} class names "
                "were given"
            )
        self.path = path
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.class_names = tuple(str(n) for n in class_names)
        self.batch_size = int(batch_size)
        self.threshold = float(threshold)  # segmenters: where a probability becomes tumour

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, path='{self.path}', "
            f"image_size={self.image_size}, channels={self.channels})"
        )

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        expected = (self.image_size, self.image_size, self.channels)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(
                f"pixels must be float32 [N, {expected[0]}, {expected[1]}, {expected[2]}] in "
                f"0..255, got shape {pixels.shape}"
            )
        if len(pixels) == 0:
            if self.task == "segmentation":
                return np.zeros((0, self.image_size, self.image_size, 1), np.float32)
            return np.zeros((0, len(self.class_names)), np.float32)
        chunks = [
            self._predict_batch(pixels[i : i + self.batch_size])
            for i in range(0, len(pixels), self.batch_size)
        ]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def _predict_batch(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _KerasRuntime(Runtime):
    kind = "keras"

    def __init__(self, path: Path, class_names, batch_size: int, tta: str = "none"):

        from braintumor_tf.custom_objects import load_model
        from braintumor_tf.models.tta import with_test_time_augmentation

        self._model = with_test_time_augmentation(load_model(path, compile=False), tta)
        shape = tuple(self._model.input_shape)
        super().__init__(
            path, shape[1], shape[3], int(self._model.output_shape[-1]), class_names, batch_size,
            task=task_of_output_rank(len(self._model.output_shape)),
            threshold=configured_threshold(path),
        )

    @property
    def keras_model(self):
        """The loaded model, for what needs layers (Grad-CAM)."""
        return self._model

    def _predict_batch(self, pixels):
        return np.asarray(self._model(pixels, training=False))


class _SavedModelRuntime(Runtime):
    kind = "savedmodel"

    def __init__(self, path: Path, class_names, batch_size: int):
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))
        if "predict_pixels" not in self._loaded.signatures:
            raise ValueError(f"{path}: SavedModel has no 'predict_pixels' signature")
        self._signature = self._loaded.signatures["predict_pixels"]
        meta = _savedmodel_metadata(path, self._loaded)
        task = meta.get("task", "classification")
        self._output_key = "mask_probability" if task == "segmentation" else "probabilities"
        stored = meta["class_names"]
        if task == "classification" and class_names is not None \
                and tuple(class_names) != tuple(stored):
            raise ValueError(
                f"{path}: class names {tuple(class_names)} differ from the exported {tuple(stored)}"
            )
        super().__init__(
            path, meta["image_size"], meta["channels"], len(stored), stored, batch_size, task=task,
            threshold=meta.get("threshold", DEFAULT_THRESHOLD),
        )

    def _predict_batch(self, pixels):
        out = self._signature(pixels=self._tf.constant(pixels))
        return out[self._output_key].numpy()


def _savedmodel_metadata(path: Path, loaded) -> dict:
    """Variables on the module first; the JSON side file covers modules without them."""
    if all(hasattr(loaded, k) for k in ("class_names", "image_size", "channels")):
        return {
            "class_names": [n.decode() for n in loaded.class_names.numpy()],
            "image_size": int(loaded.image_size.numpy()),
            "channels": int(loaded.channels.numpy()),
            "task": loaded.task.numpy().decode() if hasattr(loaded, "task") else "classification",
            **({"threshold": float(loaded.threshold.numpy())} if hasattr(loaded, "threshold") else {}),
        }
    meta_file = path / "assets.extra" / "braintumor_tf.json"
    if meta_file.is_file():
        return json.loads(meta_file.read_text())
    raise ValueError(f"{path}: SavedModel carries no class_names/image_size/channels metadata")


class _TFLiteRuntime(Runtime):
    kind = "tflite"

    def __init__(self, path: Path, class_names, batch_size: int, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.num_threads = num_threads
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        shape = self._input["shape"]
        signature = self._input.get("shape_signature", shape)
        self._dynamic_batch = len(signature) > 0 and int(signature[0]) == -1
        self._batch = int(shape[0])
        sidecar = path.with_suffix(".json")
        stored = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        super().__init__(
            path, shape[1], shape[3], int(self._output["shape"][-1]), class_names, batch_size,
            task=task_of_output_rank(len(self._output["shape"])),
            threshold=stored.get("threshold", DEFAULT_THRESHOLD),
        )

    def _resize(self, n: int) -> None:
        if n != self._batch:
            shape = [n, self.image_size, self.image_size, self.channels]
            self._interpreter.resize_tensor_input(self._input["index"], shape)
            self._interpreter.allocate_tensors()
            self._batch = n

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        details = self._input
        if np.issubdtype(details["dtype"], np.integer):
            scale, zero_point = details["quantization"]
            info = np.iinfo(details["dtype"])
            pixels = np.clip(np.round(pixels / scale + zero_point), info.min, info.max)
        self._interpreter.set_tensor(details["index"], pixels.astype(details["dtype"]))
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output["index"])
        if np.issubdtype(self._output["dtype"], np.integer):
            scale, zero_point = self._output["quantization"]
            out = (out.astype(np.float32) - zero_point) * scale
            if self.task == "classification":
                # Dequantised softmax rows sum to 1 only within a few steps of 1/256; scored or
                # printed as probabilities they must sum to 1 exactly (argmax is unchanged).
                out = out / np.maximum(out.sum(axis=-1, keepdims=True), 1e-12)
        return out.astype(np.float32)

    def _predict_batch(self, pixels):
        if self._dynamic_batch:
            self._resize(len(pixels))
            return self._run(pixels)
        # A fixed-batch model (batch 1 in practice) is fed one image at a time.
        return np.concatenate([self._run(pixels[i : i + 1]) for i in range(len(pixels))])


def task_of_output_rank(rank: int) -> str:
    """[N, K] is a classifier, [N, S, S, 1] a segmenter."""
    return "segmentation" if rank == 4 else "classification"


def _resolve_serving_base(path: Path) -> Path | None:
    versions = [
        p for p in path.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    ]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def _how_to_make(path: Path) -> str:
    """What to run when a SavedModel that is never committed (the segmenter's) is missing."""
    if path.suffix in (".keras", ".tflite", ".json"):
        return ""
    base = path.parent if path.name.isdigit() else path
    return (f"; export it first, e.g. braintumor-tf export --run RUN_DIR --out {base} "
            "(docs/SERVING.md)")


def load_runtime(
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    num_threads: int | None = None,
    tta: str = "none",
) -> Runtime:
    """Pick the runtime from what is on disk, so callers can pass any exported artefact.

    ``num_threads`` sets LiteRT's thread count; TensorFlow's own threads are process-wide.
    ``tta`` wraps a .keras segmenter in test-time augmentation (``models.tta``); exported files
    already compute whatever they were exported with.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}{_how_to_make(path)}")
    if path.is_file() and path.suffix == ".keras":
        return _KerasRuntime(path, class_names, batch_size, tta)
    if tta != "none":
        raise ValueError(f"test-time augmentation ({tta!r}) is applied to .keras models; {path} is "
                         "an export and computes what it was exported with (export --tta)")
    if path.is_file() and path.suffix == ".tflite":
        return _TFLiteRuntime(path, class_names, batch_size, num_threads)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return _SavedModelRuntime(path, class_names, batch_size)
        version = _resolve_serving_base(path)
        if version is not None:
            return _SavedModelRuntime(version, class_names, batch_size)
    raise ValueError(f"unrecognised model {path}: {_ACCEPTED}")
