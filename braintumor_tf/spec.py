"""What a model file says about itself: one small, versioned record read by every way of using it.

A model used to depend on files that happened to sit beside it (``config.yaml`` for the
segmentation threshold, ``ood_guard.npz`` for the guard and temperature) and on guesses from its
output shape. The spec replaces both. ``write_keras_spec`` stores it (and the fitted guard) inside
the ``.keras`` zip, so a copied file behaves the same anywhere; the SavedModel export stores it in
``assets.extra/braintumor_tf.json`` and each LiteRT file in its sidecar JSON. ``read_spec`` is the
one loader for all three forms.

Kept free of TensorFlow and Keras: reading a spec must stay cheap (``models list``, REST clients).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from braintumor_tf.config import INTENSITY_MODES, TASKS

SPEC_VERSION = 2  # the newest record this package reads (and writes, with class_weights)
KERAS_SPEC_ENTRY = "braintumor_tf/spec.json"
KERAS_GUARD_ENTRY = "braintumor_tf/ood_guard.npz"
SAVEDMODEL_SPEC_FILE = Path("assets.extra") / "braintumor_tf.json"
AVERAGING_MODES = ("none", "mirror", "flips", "dihedral")  # models.tta.TTA_MODES (a test keeps them equal)
# How the Python side resizes (data.decode): area averaging when shrinking, bilinear when
# enlarging; the SavedModel graph uses antialiased bilinear, its closest TF kernel.
RESIZE_KERNELS = ("area_or_linear",)
DEEP_IMAGE_MAPPINGS = ("percentile_0.5_99.5",)


@dataclasses.dataclass(frozen=True)
class TaskFacts:
    """How a classifier file and a segmenter file differ for whoever runs one: read here, so that
    runtimes, exports and commands ask the task's facts instead of comparing task names."""

    output_key: str  # the serving signature's main output
    per_pixel: bool  # one answer per pixel (a mask), not one row of class probabilities
    thresholded: bool  # answers are cut at the spec's threshold
    guarded: bool  # may carry the out-of-distribution guard (and its temperature)
    fixed_class_names: tuple[str, ...] | None  # the names every such model has, if fixed


TASK_FACTS = {
    "classification": TaskFacts(output_key="probabilities", per_pixel=False, thresholded=False,
                                guarded=True, fixed_class_names=None),
    "segmentation": TaskFacts(output_key="mask_probability", per_pixel=True, thresholded=True,
                              guarded=False, fixed_class_names=("tumour",)),
}


def task_facts(task: str) -> TaskFacts:
    _check(task in TASK_FACTS, f"task must be one of {TASKS}, got {_short(task)}")
    return TASK_FACTS[task]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The preprocessing contract: what happens to pixels before the network sees them.

    ``in_graph_intensity`` runs inside every exported form; the rest is done by whoever decodes
    the file (``data.decode`` in Python, the serving function inside the SavedModel).
    """

    in_graph_intensity: str = "none"
    deep_images: str = DEEP_IMAGE_MAPPINGS[0]  # 16-bit PNG/TIFF, DICOM: own 0.5-99.5 percentiles
    resize: str = RESIZE_KERNELS[0]
    max_pixels: int = 50_000_000  # data.image_header's limit when the model was written

    def __post_init__(self):
        _check(self.in_graph_intensity in INTENSITY_MODES,
               f"preprocessing.in_graph_intensity must be one of {INTENSITY_MODES}, "
               f"got {_short(self.in_graph_intensity)}")
        _check(self.deep_images in DEEP_IMAGE_MAPPINGS,
               f"preprocessing.deep_images must be one of {DEEP_IMAGE_MAPPINGS}, "
               f"got {_short(self.deep_images)}")
        _check(self.resize in RESIZE_KERNELS,
               f"preprocessing.resize must be one of {RESIZE_KERNELS}, got {_short(self.resize)}")
        _check(isinstance(self.max_pixels, int) and self.max_pixels > 0,
               f"preprocessing.max_pixels must be a positive whole number, "
               f"got {_short(self.max_pixels)}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything a model's user needs besides the weights. ``threshold`` is the segmenter's
    probability cut; ``averaging`` the test-time views the model's users should apply (exports
    already contain them); ``temperature``/``ood_threshold`` the fitted guard's (None without one);
    ``class_weights`` the guard's decision weights (probabilities x weights, renormalised; exports
    contain them). Version 2 added ``class_weights``; a record without them is still version 1.
    """

    task: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    preprocessing: Preprocessing = Preprocessing()
    threshold: float | None = None
    averaging: str = "none"
    temperature: float | None = None
    ood_threshold: float | None = None
    class_weights: tuple[float, ...] | None = None
    training_data: Mapping = dataclasses.field(default_factory=dict)
    package_version: str = "0+unknown"
    spec_version: int = 1  # the lowest version that holds the record: to_dict raises it

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        _check(self.task in TASKS, f"task must be one of {TASKS}, got {_short(self.task)}")
        _check(len(self.class_names) >= 1, "class_names must name at least one class")
        _check(len(set(self.class_names)) == len(self.class_names),
               f"class_names must be distinct, got {_short(self.class_names)}")
        facts = TASK_FACTS[self.task]
        if facts.fixed_class_names is not None:
            _check(self.class_names == facts.fixed_class_names,
                   f"a {self.task} model's classes are {facts.fixed_class_names}, "
                   f"got {_short(self.class_names)}")
        if facts.thresholded:
            _check(self.threshold is not None and 0.0 < float(self.threshold) < 1.0,
                   f"a segmenter's threshold must lie strictly between 0 and 1, "
                   f"got {_short(self.threshold)}")
        else:
            _check(len(self.class_names) >= 2,
                   f"a classifier needs at least 2 classes, got {_short(self.class_names)}")
            _check(self.threshold is None, "threshold applies to segmenters only")
        _check(isinstance(self.image_size, int) and self.image_size >= 8,
               f"image_size must be a whole number >= 8, got {_short(self.image_size)}")
        _check(self.channels in (1, 3), f"channels must be 1 or 3, got {_short(self.channels)}")
        _check(self.averaging in AVERAGING_MODES,
               f"averaging must be one of {AVERAGING_MODES}, got {_short(self.averaging)}")
        _check((self.temperature is None) == (self.ood_threshold is None),
               "temperature and ood_threshold come from one guard fit: give both or neither")
        _check(self.temperature is None or float(self.temperature) > 0.0,
               f"temperature must be positive, got {_short(self.temperature)}")
        _check(facts.guarded or self.temperature is None,
               "only classifiers carry an out-of-distribution guard")
        if self.class_weights is not None:
            weights = tuple(float(w) for w in self.class_weights)
            object.__setattr__(self, "class_weights", weights)
            _check(len(weights) == len(self.class_names)
                   and all(math.isfinite(w) and w > 0 for w in weights),
                   f"class_weights must be one positive number per class, "
                   f"got {_short(self.class_weights)}")
            _check(self.temperature is not None,
                   "class_weights ride with the guard's temperature: fit the guard first")
        _check(isinstance(self.preprocessing, Preprocessing),
               "preprocessing must be a Preprocessing record")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def replace(self, **changes) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["class_names"] = list(self.class_names)
        record["training_data"] = dict(self.training_data)
        if self.class_weights is None:
            del record["class_weights"]  # readers of version 1 know no such field
        else:
            record["class_weights"] = list(self.class_weights)
            record["spec_version"] = max(self.spec_version, 2)  # added in version 2
        return record

    @classmethod
    def from_dict(cls, record: Mapping, source: str = "model spec") -> ModelSpec:
        if not isinstance(record, Mapping):
            raise ValueError(f"{source}: a model spec is a JSON object, got {_short(record)}")
        version = record.get("spec_version")
        if not isinstance(version, int):
            raise ValueError(f"{source}: spec_version missing or not a whole number")
        if version > SPEC_VERSION:
            raise ValueError(f"{source}: spec version {version} was written by a newer "
                             f"braintumor_tf (this one reads up to {SPEC_VERSION}); upgrade it")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown spec field(s) {_short(unknown)}")
        values = dict(record)
        try:
            values["preprocessing"] = Preprocessing(**(values.get("preprocessing") or {}))
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"{source}: {error}") from error
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error


def package_version() -> str:
    from braintumor_tf import __version__

    return __version__


def current_max_pixels() -> int:
    from braintumor_tf.data.image_header import max_image_pixels

    return max_image_pixels()


# --- .keras: entries inside the zip ------------------------------------------------------------

def _rewrite_zip(path: Path, entries: dict[str, bytes | None]) -> None:
    """Copy the archive with ``entries`` set (None: removed), then replace it atomically."""
    temporary = path.with_name(f".{path.name}.spec-{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(path) as source, \
                zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                if item.filename not in entries:
                    target.writestr(item, source.read(item.filename))
            for name, data in entries.items():
                if data is not None:
                    target.writestr(name, data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_keras_spec(path: str | os.PathLike, spec: ModelSpec,
                     guard: bytes | None | bool = False) -> Path:
    """Store ``spec`` inside a ``.keras`` file; ``guard``: the guard's ``.npz`` bytes to embed,
    None to remove an embedded one, False (default) to keep whatever is there."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras archive")
    entries: dict[str, bytes | None] = {
        KERAS_SPEC_ENTRY: (json.dumps(spec.to_dict(), indent=2) + "\n").encode()}
    if guard is not False:
        entries[KERAS_GUARD_ENTRY] = guard
    _rewrite_zip(path, entries)
    return path


def _zip_entry(path: Path, name: str) -> bytes | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(name) if name in archive.namelist() else None
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not a readable .keras archive ({error})") from error


def keras_guard_bytes(path: str | os.PathLike) -> bytes | None:
    """The out-of-distribution guard embedded in a ``.keras`` file (an ``.npz``), or None."""
    return _zip_entry(Path(path), KERAS_GUARD_ENTRY)


def keras_guard_file(path: str | os.PathLike):
    """The embedded guard as a file object ``models.guard.Guard.load`` reads, or None."""
    data = keras_guard_bytes(path)
    return None if data is None else io.BytesIO(data)


# --- one loader for every form -----------------------------------------------------------------

def read_spec(path: str | os.PathLike) -> ModelSpec | None:
    """The spec of a ``.keras`` file, a SavedModel version directory or a ``.tflite`` file;
    None for files written before specs existed (callers then fall back, and say so)."""
    path = Path(path)
    if path.is_dir():
        file = path / SAVEDMODEL_SPEC_FILE
        record = _json_file(file).get("spec") if file.is_file() else None
        return None if record is None else ModelSpec.from_dict(record, str(file))
    if path.suffix == ".tflite":
        sidecar = path.with_suffix(".json")
        record = _json_file(sidecar).get("spec") if sidecar.is_file() else None
        return None if record is None else ModelSpec.from_dict(record, str(sidecar))
    data = _zip_entry(path, KERAS_SPEC_ENTRY)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError as error:
        raise ValueError(f"{path}: its {KERAS_SPEC_ENTRY} is not JSON ({error})") from error
    return ModelSpec.from_dict(record, f"{path} ({KERAS_SPEC_ENTRY})")


def _json_file(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not JSON ({error}); re-export the model") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object; re-export the model")
    return record


def spec_for(task: str, class_names: Sequence[str], image_size: int, channels: int, *,
             intensity: str = "none", threshold: float | None = None, averaging: str = "none",
             training_data: Mapping | None = None) -> ModelSpec:
    """A new model's spec, with this machine's pixel limit and this package's version."""
    return ModelSpec(
        task=task, class_names=tuple(class_names), image_size=int(image_size),
        channels=int(channels),
        preprocessing=Preprocessing(in_graph_intensity=intensity, max_pixels=current_max_pixels()),
        threshold=None if threshold is None else float(threshold), averaging=averaging,
        training_data=dict(training_data or {}), package_version=package_version())


def spec_from_export_metadata(meta: Mapping, intensity: str = "none") -> ModelSpec:
    """The spec of an export written before specs, from the metadata it did record (SavedModel
    ``assets.extra`` or a LiteRT sidecar): what ``scripts/store_model_specs.py`` stores back."""
    task = meta.get("task", "classification")
    return ModelSpec(
        task=task, class_names=tuple(task_facts(task).fixed_class_names
                                     or meta.get("class_names") or ()),
        image_size=int(meta["image_size"]), channels=int(meta["channels"]),
        preprocessing=Preprocessing(in_graph_intensity=intensity,
                                    max_pixels=int(meta.get("max_image_pixels", 50_000_000))),
        threshold=float(meta.get("threshold", 0.5)) if task_facts(task).thresholded else None,
        averaging=meta.get("test_time_augmentation", "none"),
        temperature=meta.get("temperature"), ood_threshold=meta.get("ood_threshold"),
        package_version=str(meta.get("package_version", "before specs")))
