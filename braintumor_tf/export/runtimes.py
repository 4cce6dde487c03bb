"""One predict() over every model format, so evaluation and benchmarks are written once."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.config import DEFAULT_SEGMENTATION_THRESHOLD, TASKS
from braintumor_tf.export.released import resolve_model
from braintumor_tf.log import log
from braintumor_tf.machine import default_batch_size, usable_cores
from braintumor_tf.spec import ModelSpec, keras_guard_file, read_spec, task_facts

RUNTIME_KINDS = ("keras", "savedmodel", "tflite")
_ACCEPTED = (
    "expected a .keras file, a SavedModel directory (with saved_model.pb), "
    "a TF Serving base directory (numeric version sub-directories) or a .tflite file"
)



def checked_threshold(threshold, task: str) -> float:
    """A threshold given by the user (evaluate/export --threshold): segmenters only, in (0, 1)."""
    if not task_facts(task).thresholded:
        raise ValueError("threshold applies to segmenters only; this model is a classifier")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    return float(threshold)


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
    return DEFAULT_SEGMENTATION_THRESHOLD


def at_size(probability: np.ndarray, shape) -> np.ndarray:
    """A [S, S] probability map resized bilinearly to ``shape`` (H, W): how every surface
    (predict, the API, volumes, evaluation; the SavedModel in TF) gives masks back at the input's
    size before thresholding."""
    import cv2

    height, width = int(shape[0]), int(shape[1])
    if probability.shape == (height, width):
        return probability
    return cv2.resize(np.asarray(probability, np.float32), (width, height),
                      interpolation=cv2.INTER_LINEAR)


class Runtime:
    """A loaded model that maps raw pixels [N, S, S, C] in 0..255 to probabilities: [N, K] for a
    classifier, a tumour probability per pixel [N, S, S, 1] for a segmenter (``task``)."""

    kind = "base"

    def expect_task(self, task: str, message: str) -> None:
        """Refuses a model of another task, with the caller's words for what the user asked."""
        if self.task != task:
            raise ValueError(message)

    def __init__(
        self,
        path: Path,
        image_size: int,
        channels: int,
        num_classes: int,
        class_names: Sequence[str] | None,
        batch_size: int = 64,
        task: str = "classification",
        threshold: float = DEFAULT_SEGMENTATION_THRESHOLD,
    ):
        if task not in TASKS:
            raise ValueError(f"{path}: unknown model task {task!r}; expected one of {TASKS}")
        self.task = task
        if task_facts(task).fixed_class_names is not None:
            # One sigmoid channel: the classifier's class names do not apply, whoever passed them.
            class_names = task_facts(task).fixed_class_names
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
        # Classifiers with an out-of-distribution guard (models.guard): scores above this are
        # flagged. None: the model carries no guard.
        self.ood_threshold: float | None = None
        if not hasattr(self, "spec"):
            self.spec: ModelSpec | None = None  # what the model file says about itself
        if not hasattr(self, "averaging"):
            self.averaging = "none"  # the test-time views its answers average

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, path='{self.path}', "
            f"image_size={self.image_size}, channels={self.channels})"
        )

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.predict_with_scores(pixels)[0]

    def predict_with_scores(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, out-of-distribution scores or None when the model has no guard)."""
        pixels = np.asarray(pixels, dtype=np.float32)
        expected = (self.image_size, self.image_size, self.channels)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(
                f"pixels must be float32 [N, {expected[0]}, {expected[1]}, {expected[2]}] in "
                f"0..255, got shape {pixels.shape}"
            )
        no_scores = None if self.ood_threshold is None else np.zeros(0, np.float32)
        if len(pixels) == 0:
            if task_facts(self.task).per_pixel:
                return np.zeros((0, self.image_size, self.image_size, 1), np.float32), None
            return np.zeros((0, len(self.class_names)), np.float32), no_scores
        chunks = [
            self._predict_batch(pixels[i : i + self.batch_size])
            for i in range(0, len(pixels), self.batch_size)
        ]
        probabilities = np.concatenate([c[0] if isinstance(c, tuple) else c for c in chunks])
        scores = None
        if chunks and isinstance(chunks[0], tuple) and chunks[0][1] is not None:
            scores = np.concatenate([c[1] for c in chunks]).astype(np.float32, copy=False)
        return probabilities.astype(np.float32, copy=False), scores

    def mask_for(self, probability: np.ndarray, shape) -> np.ndarray:
        """A segmenter's 0/1 uint8 mask at ``shape`` (H, W): resized back, then thresholded at
        the model's own threshold."""
        return (at_size(probability, shape) > self.threshold).astype(np.uint8)

    def in_distribution(self, scores: np.ndarray | None) -> np.ndarray | None:
        """True where the guard lets an image through (None without a guard)."""
        if scores is None or self.ood_threshold is None:
            return None
        return np.asarray(scores) <= self.ood_threshold

    def _predict_batch(self, pixels: np.ndarray):
        """Probabilities, or (probabilities, OOD scores) for a guarded classifier."""
        raise NotImplementedError


class _KerasRuntime(Runtime):
    kind = "keras"

    def __init__(self, path: Path, class_names, batch_size: int, tta: str | None = None):

        from braintumor_tf.custom_objects import load_model
        from braintumor_tf.models.guard import Guard, is_guarded, load_guard_beside, with_guard
        from braintumor_tf.models.tta import with_test_time_augmentation

        self._plain = load_model(path, compile=False)
        self.spec = read_spec(path)
        requested = tta
        if tta is None:  # the averaging the model's spec asks for
            tta = self.spec.averaging if self.spec is not None else "none"
        output_shape = self._plain.output_shape
        ood_threshold = None
        if is_guarded(self._plain):  # saved already guarded (models.guard.with_guard)
            if requested not in (None, "none"):
                raise ValueError(f"{path} is a guarded classifier saved with its views; "
                                 "test-time augmentation cannot be added to it")
            tta = "none"
            self._model = self._plain
            layer = self._plain.get_layer("distribution_guard")
            output_shape = (None, layer.num_classes)
            ood_threshold = layer.threshold
            task = "classification"
        else:
            if self.spec is not None:
                task = self.spec.task
                embedded = keras_guard_file(path)
                guard = Guard.load(embedded) if embedded is not None else None
            else:  # written before model specs: what the files beside it say
                task = task_of_output_rank(len(output_shape))
                guard = load_guard_beside(path) if task_facts(task).guarded else None
                _legacy_note(path)
            if guard is not None:  # wraps the views itself (scores from the image as given)
                self._model = with_guard(self._plain, guard, tta)
                ood_threshold = guard.threshold
            else:
                self._model = with_test_time_augmentation(self._plain, tta)
        shape = tuple(self._plain.input_shape)
        if self.spec is not None:
            class_names = _checked_names(path, class_names, self.spec)
            threshold = (DEFAULT_SEGMENTATION_THRESHOLD if self.spec.threshold is None
                         else self.spec.threshold)
        else:
            threshold = configured_threshold(path)
            class_names = class_names or _package_names(task, int(output_shape[-1]))
        super().__init__(
            path, shape[1], shape[3], int(output_shape[-1]), class_names, batch_size,
            task=task, threshold=threshold,
        )
        self.ood_threshold = ood_threshold
        self.averaging = tta

    @property
    def keras_model(self):
        """The trained model as saved, for what needs layers (Grad-CAM)."""
        return self._plain

    def _predict_batch(self, pixels):
        out = self._model(pixels, training=False)
        if isinstance(out, dict):
            return np.asarray(out["probabilities"]), np.asarray(out["ood_score"])
        return np.asarray(out)


_NOTED_LEGACY: set[str] = set()


def _legacy_note(path: Path) -> None:
    """Once per file: a model without a spec behaves by what sits beside it."""
    if str(path) not in _NOTED_LEGACY:
        _NOTED_LEGACY.add(str(path))
        log(f"{path} carries no model spec (written before braintumor_tf stored one): its task is "
            "read from its output shape and its guard/threshold from files beside it; "
            "braintumor-tf calibrate or a new training stores them inside")


def _package_names(task: str, outputs: int) -> tuple[str, ...] | None:
    """A classifier written before specs, with the package's 4 outputs: the package's classes."""
    from braintumor_tf.data.discover import CLASS_NAMES

    if task_facts(task).fixed_class_names is None and outputs == len(CLASS_NAMES):
        return tuple(CLASS_NAMES)
    return None


def _checked_names(path: Path, class_names, spec: ModelSpec) -> tuple[str, ...]:
    """The spec's class names; names a caller passes must agree with them."""
    if task_facts(spec.task).fixed_class_names is None and class_names is not None \
            and tuple(class_names) != spec.class_names:
        raise ValueError(f"{path}: class names {tuple(class_names)} differ from the model's own "
                         f"{spec.class_names}")
    return spec.class_names


class _SavedModelRuntime(Runtime):
    kind = "savedmodel"

    def __init__(self, path: Path, class_names, batch_size: int):
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))
        if "predict_pixels" not in self._loaded.signatures:
            raise ValueError(f"{path}: SavedModel has no 'predict_pixels' signature")
        self._signature = self._loaded.signatures["predict_pixels"]
        self.spec = read_spec(path)
        meta = (_savedmodel_metadata(path, self._loaded) if self.spec is None
                else {**self.spec.to_dict(), "ood_threshold": self.spec.ood_threshold})
        task = meta.get("task", "classification")
        self._output_key = task_facts(task).output_key
        stored = meta["class_names"]
        if task_facts(task).fixed_class_names is None and class_names is not None \
                and tuple(class_names) != tuple(stored):
            raise ValueError(
                f"{path}: class names {tuple(class_names)} differ from the exported {tuple(stored)}"
            )
        super().__init__(
            path, meta["image_size"], meta["channels"], len(stored), stored, batch_size, task=task,
            threshold=meta.get("threshold") or DEFAULT_SEGMENTATION_THRESHOLD,
        )
        self.averaging = meta.get("averaging", meta.get("test_time_augmentation", "none"))
        if "ood_score" in self._signature.structured_outputs:
            self.ood_threshold = float(meta["ood_threshold"])

    def _predict_batch(self, pixels):
        out = self._signature(pixels=self._tf.constant(pixels))
        if self.ood_threshold is not None:
            return out[self._output_key].numpy(), out["ood_score"].numpy()
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
            **({"ood_threshold": float(loaded.ood_threshold.numpy())}
               if hasattr(loaded, "ood_threshold") else {}),
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
        # A guarded classifier has two outputs, in an order the converter picks: the [N]
        # one is the OOD score.
        outputs = self._interpreter.get_output_details()
        self._output = next(o for o in outputs if len(o["shape"]) != 1)
        self._score_output = next((o for o in outputs if len(o["shape"]) == 1), None)
        shape = self._input["shape"]
        signature = self._input.get("shape_signature", shape)
        self._dynamic_batch = len(signature) > 0 and int(signature[0]) == -1
        self._batch = int(shape[0])
        sidecar = path.with_suffix(".json")
        stored = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        self.spec = read_spec(path)
        if self.spec is not None:
            stored = {**stored, **self.spec.to_dict(), "ood_threshold": self.spec.ood_threshold}
            class_names = _checked_names(path, class_names, self.spec)
            task = self.spec.task
        else:
            task = task_of_output_rank(len(self._output["shape"]))
            class_names = (class_names or stored.get("class_names")
                           or _package_names(task, int(self._output["shape"][-1])))
            _legacy_note(path)
        super().__init__(
            path, shape[1], shape[3], int(self._output["shape"][-1]), class_names, batch_size,
            task=task, threshold=stored.get("threshold") or DEFAULT_SEGMENTATION_THRESHOLD,
        )
        self.averaging = stored.get("averaging", stored.get("test_time_augmentation", "none"))
        # An int8 file's softmax is integer inside, even behind float input and output.
        self._integer_softmax = (np.issubdtype(self._output["dtype"], np.integer)
                                 or stored.get("variant") == "int8")
        if self._score_output is not None:
            if stored.get("ood_threshold") is None:
                raise ValueError(f"{path} has an out-of-distribution output but its sidecar "
                                 f"{sidecar.name} holds no ood_threshold")
            self.ood_threshold = float(stored["ood_threshold"])

    def _resize(self, n: int) -> None:
        if n != self._batch:
            shape = [n, self.image_size, self.image_size, self.channels]
            self._interpreter.resize_tensor_input(self._input["index"], shape)
            self._interpreter.allocate_tensors()
            self._batch = n

    def _dequantised(self, details) -> np.ndarray:
        out = self._interpreter.get_tensor(details["index"])
        if np.issubdtype(details["dtype"], np.integer):
            scale, zero_point = details["quantization"]
            out = (out.astype(np.float32) - zero_point) * scale
        return out.astype(np.float32)

    def _run(self, pixels: np.ndarray):
        details = self._input
        if np.issubdtype(details["dtype"], np.integer):
            scale, zero_point = details["quantization"]
            info = np.iinfo(details["dtype"])
            pixels = np.clip(np.round(pixels / scale + zero_point), info.min, info.max)
        self._interpreter.set_tensor(details["index"], pixels.astype(details["dtype"]))
        self._interpreter.invoke()
        out = self._dequantised(self._output)
        if self._integer_softmax and not task_facts(self.task).per_pixel:
            # Dequantised softmax rows sum to 1 only within a few steps of 1/256; scored or
            # printed as probabilities they must sum to 1 exactly (argmax is unchanged).
            out = out / np.maximum(out.sum(axis=-1, keepdims=True), 1e-12)
        if self._score_output is not None:
            return out, self._dequantised(self._score_output)
        return out

    def _predict_batch(self, pixels):
        if self._dynamic_batch:
            self._resize(len(pixels))
            return self._run(pixels)
        # A fixed-batch model (batch 1 in practice) is fed one image at a time.
        parts = [self._run(pixels[i : i + 1]) for i in range(len(pixels))]
        if self._score_output is not None:
            return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return np.concatenate(parts)


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


def resolve_batch_size(batch_size: int | None) -> int:
    """A given batch size, or one read off the machine (logged, so runs say what they used)."""
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size!r}")
        return int(batch_size)
    chosen = default_batch_size()
    log(f"batch size {chosen} (from {usable_cores()} usable core(s) and free memory; "
        "--batch-size to choose)")
    return chosen


def load_runtime(
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    num_threads: int | None = None,
    tta: str | None = None,
) -> Runtime:
    """Pick the runtime from what is on disk, so callers can pass any exported artefact.

    ``num_threads`` sets LiteRT's thread count; TensorFlow's own threads are process-wide.
    ``tta`` wraps a .keras model in test-time augmentation (``models.tta``); None: the averaging
    its spec asks for. Exported files already compute whatever they were exported with.
    """
    path = resolve_model(path)  # a released model's name ("classifier") or a path
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}{_how_to_make(path)}")
    if path.is_file() and path.suffix == ".keras":
        return _KerasRuntime(path, class_names, batch_size, tta)
    if tta not in (None, "none"):
        raise ValueError(f"test-time augmentation ({tta!r}) is applied to .keras models; {path} is "
                         "an export and computes what it was exported with (export --tta)")
    if path.is_file() and path.suffix == ".tflite":
        # LiteRT's own default is one thread on some builds: give it every usable core.
        threads = usable_cores() if num_threads is None else num_threads
        return _TFLiteRuntime(path, class_names, batch_size, threads)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return _SavedModelRuntime(path, class_names, batch_size)
        version = _resolve_serving_base(path)
        if version is not None:
            return _SavedModelRuntime(version, class_names, batch_size)
        raise ValueError(f"{path} holds no exported model version{_what_is_here(path)}. A model "
                         f"is {_ACCEPTED.removeprefix('expected ')}")
    raise ValueError(f"unrecognised model {path}: {_ACCEPTED}")


def _what_is_here(folder: Path) -> str:
    """A release folder without its SavedModel (never committed for the segmenter): name the
    files that do load, and the command that makes the SavedModel."""
    loadable = sorted(p.name for p in folder.iterdir() if p.suffix in (".keras", ".tflite"))
    hint = "".join(f"; --model {folder / name} loads as it is" for name in loadable[:1])
    keras_files = [name for name in loadable if name.endswith(".keras")]
    source = f"--model {folder / keras_files[0]}" if keras_files else "--run RUN_DIR"
    # A release too big to commit its Keras model: the run has to be trained first.
    train_first = ("; RUN_DIR is the training run, made by the command in "
                   f"{folder / 'MODEL_CARD.md'} (Training)"
                   if not keras_files and (folder / "MODEL_CARD.md").is_file() else "")
    return (f"{hint}; or export the SavedModel first: braintumor-tf export {source} --out {folder}"
            f"{_released_options(folder)}{train_first} (docs/SERVING.md)")


def _released_options(folder: Path) -> str:
    """The --tta and --threshold the released files were exported with (their sidecars say), so
    that the SavedModel made from the committed .keras computes what they compute."""
    for sidecar in sorted(folder.glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
            tta = meta.get("test_time_augmentation", "none")
            threshold = meta.get("threshold")
        except (ValueError, AttributeError):
            continue
        if "file" not in meta:  # a parity report, not a released file's sidecar
            continue
        options = f" --tta {tta}" if tta and tta != "none" else ""
        if isinstance(threshold, int | float) and float(threshold) != DEFAULT_SEGMENTATION_THRESHOLD:
            options += f" --threshold {float(threshold):g}"
        return options
    return ""
