"""One typed, validated, read-only configuration object for every command.

A YAML file gives the values, ``--set a.b=c`` overrides them, the dataclasses
below check them once; after that nothing reads YAML, flags or the environment.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import typing
from pathlib import Path

import yaml

# Shipped inside the package (a wheel has them too); the top-level configs/ links here.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CLASSIFICATION_CONFIG = CONFIG_DIR / "classification.yaml"

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adopt")
SCHEDULES = ("warmup_cosine_floor", "constant")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
HEADS = ("flatten", "global_average")
INTENSITY_MODES = ("none", "percentile")
# resnet50: keras.applications.ResNet50 + pooling + dropout + softmax, used to pretrain the
# segmenter's encoder in-domain; only num_classes and dropout of the model section apply to it.
MODEL_NAMES = ("residual_cnn", "resnet50")
TASKS = ("classification", "segmentation")
SEGMENTATION_TARGETS = ("annotations", "masks")
SEGMENTATION_LOSSES = ("bce", "dice", "bce_dice")
# keras.applications backbones the UNet can use (models/unet.py BACKBONES).
SEGMENTATION_ENCODERS = ("resnet50", "mobilenetv2", "efficientnetb0")
# Probability above which a pixel is tumour: the one default every segmenter reader falls back to.
DEFAULT_SEGMENTATION_THRESHOLD = 0.5


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# Values echoed in error messages are cut to this many characters: a config value can be as big
# as the file, and a message holding all of it is no help.
MAX_SHOWN_VALUE = 200
# A config is a page of settings; a file much larger than this is a mistake or an attack.
MAX_CONFIG_BYTES = 1 << 20
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MAX_SHOWN_VALUE
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 20
_REPR.maxlevel = 4


def _r(value) -> str:
    """repr for an error message, bounded in length (and in the work to make it)."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[:MAX_SHOWN_VALUE - 3] + "..."


class _ConfigLoader(yaml.SafeLoader):
    """safe_load's loader, stricter: no aliases (``*name``: a few hundred bytes of nested
    aliases expand into billions of values, the "billion laughs"; a config has no need to
    repeat a value by reference) and no duplicate keys (YAML keeps the last one silently)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{_REPR.repr(event.anchor)[1:-1]}) are not allowed in a "
                "config: write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first_line.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if earlier is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_r(key)} (first on line {earlier}): keep one",
                        key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _yaml_config(text: str):
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Light, label-preserving augmentation; all zero turns it off."""

    horizontal_flip: bool = True
    vertical_flip: bool = False
    rotation: float = 0.05  # fraction of a full turn, either way
    zoom: float = 0.1
    translation: float = 0.05
    contrast: float = 0.2
    brightness: float = 0.1
    # Off by default (the default's results stay as measured); the release recipe turns them on.
    gamma: float = 0.0  # log-exponent range: x ** exp(U(-g, g)) on 0..1 intensities
    noise: float = 0.0  # Gaussian noise, sigma up to this fraction of the 0..255 range
    blur: float = 0.0  # blend of up to this much towards a sigma-1.5 blurred copy
    erasing: float = 0.0  # probability of one random box (2-20 % of the image) erased
    mixup: float = 0.0  # Beta(a, a) parameter; 0 = off
    cutmix: float = 0.0  # Beta(a, a) parameter; 0 = off (both on: each batch picks one)
    mix_probability: float = 0.5  # share of images that mixup/cutmix touch; the rest stay whole
    # Renderings: the same slice exported by another tool is turned by quarter turns, windowed
    # differently, resampled from another size and JPEG-compressed again.
    rotate90: bool = False  # a random quarter turn (with both flips: all 8 orientations)
    window: float = 0.0  # clip up to this fraction of the range at each end, then stretch back
    resample: float = 0.0  # probability of a shrink to 35-90 % and back (once per batch)
    jpeg: float = 0.0  # probability of a JPEG re-encoding at quality 30-95

    def __post_init__(self):
        for name in ("rotation", "zoom", "translation", "contrast", "brightness", "gamma",
                     "noise", "blur", "erasing", "resample"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, f"augment.{name} must be in [0, 1), got {_r(value)}")
        _check(0.0 <= self.window < 0.5, f"augment.window must be in [0, 0.5), got {_r(self.window)}")
        _check(0.0 <= self.jpeg <= 1.0, f"augment.jpeg must be in [0, 1], got {_r(self.jpeg)}")
        _check(0.0 < self.mix_probability <= 1.0,
               f"augment.mix_probability must be in (0, 1], got {_r(self.mix_probability)}")
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            _check(0.0 <= value <= 10.0,
                   f"augment.{name} must be a Beta parameter in [0, 10] (0 = off), got {_r(value)}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are split.

    ``root: null`` means the built-in phantom data set, generated on first use
    into the run directory, so the default command works on a fresh machine.
    """

    root: str | None = None
    image_size: int = 224
    channels: int = 1
    phantom_images_per_class: int = 175
    phantom_image_size: int = 160
    phantom_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 42
    group_aware: bool = True
    group_threshold: float = 0.85
    # Copies per duplicate group kept in the training split (null: all). Val/test keep all.
    train_max_per_group: int | None = None
    # Folders whose images, and every near-duplicate of them (data.group_threshold), are removed
    # from this run's data: pretraining an encoder without ever seeing the segmentation slices.
    exclude_duplicates_of: tuple[str, ...] = ()
    # Patient of each image, so the split keeps patients whole: a CSV with columns path and subject
    # (paths relative to the CSV's folder or absolute); "auto" uses a subjects.csv found in a data
    # root or one of its parents; "none" splits by near-duplicate groups only.
    subjects: str | None = "auto"
    # Labelled images listed in tables (path,class; paths relative to the table or a parent
    # folder of it) join the folder-per-class roots: a rendering whose labels are not folder names.
    labels: tuple[str, ...] = ()
    # Sources (top folders under a root, or a table's folder name) the model trains on; the others
    # are split and scored like the rest but never trained on. Empty: every source.
    train_sources: tuple[str, ...] = ()
    # >= 2: patient-level K-fold cross-validation (train --folds K), one run per fold; 0: one split.
    folds: int = 0
    # With folds: also write model.keras, the fold models averaged in one graph (the release).
    folds_ensemble: bool = True
    cache: bool = True
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def __post_init__(self):
        _check(16 <= self.image_size <= 1024,
               f"data.image_size must be in [16, 1024], got {_r(self.image_size)}")
        _check(self.channels in (1, 3), f"data.channels must be 1 or 3, got {_r(self.channels)}")
        _check(self.phantom_images_per_class >= 4,
               f"data.phantom_images_per_class must be >= 4, got {_r(self.phantom_images_per_class)}")
        _check(0.0 <= self.val_fraction < 1.0,
               f"data.val_fraction must be in [0, 1), got {_r(self.val_fraction)}")
        _check(0.0 <= self.test_fraction < 1.0,
               f"data.test_fraction must be in [0, 1), got {_r(self.test_fraction)}")
        _check(self.val_fraction + self.test_fraction < 1.0,
               "data.val_fraction + data.test_fraction must leave some training data")
        _check(self.train_max_per_group is None or self.train_max_per_group >= 1,
               f"data.train_max_per_group must be null or >= 1, got {_r(self.train_max_per_group)}")
        _check(self.subjects is None or (isinstance(self.subjects, str) and self.subjects.strip()),
               f"data.subjects must be 'auto', 'none' or the path of a CSV file, got {_r(self.subjects)}")
        _check(self.folds == 0 or 2 <= self.folds <= 20,
               f"data.folds must be 0 (no cross-validation) or in [2, 20], got {_r(self.folds)}")
        _check(0.0 < self.group_threshold <= 1.0,
               f"data.group_threshold must be in (0, 1], got {_r(self.group_threshold)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Residual CNN: a stem, then one residual block per entry of ``block_filters``
    (``name: resnet50`` builds the encoder-pretraining classifier instead)."""

    name: str = "residual_cnn"
    num_classes: int = 4
    stem_filters: int = 32  # 0: no stem, the first block sees the image
    stem_stride: int = 4
    # At least the stride, or the stem's kernel skips pixels (the study: 3x3 at stride 1).
    stem_kernel_size: int = 4
    block_filters: tuple[int, ...] = (32, 64, 128, 256, 256)
    block_kernel_sizes: tuple[int, ...] = (3, 3, 3, 3, 3)
    block_downsample: tuple[bool, ...] = (True, True, True, True, False)
    convs_per_block: int = 2
    separable: bool = False
    batch_norm: bool = True
    head: str = "global_average"
    dense_units: int = 256
    dropout: float = 0.3
    # Standardisation inside the model, so every rendering of a scan reaches the network alike:
    # none (raw 0..255 pixels) or percentile (each image's 0.5-99.5th percentiles to 0..255).
    intensity: str = "none"

    def __post_init__(self):
        _check(self.intensity in INTENSITY_MODES,
               f"model.intensity must be one of {INTENSITY_MODES}, got {_r(self.intensity)}")
        _check(self.name in MODEL_NAMES, f"model.name must be one of {MODEL_NAMES}, got {_r(self.name)}")
        _check(self.num_classes >= 2, f"model.num_classes must be >= 2, got {_r(self.num_classes)}")
        count = len(self.block_filters)
        _check(count >= 1, "model.block_filters needs at least one block")
        _check(len(self.block_kernel_sizes) == count and len(self.block_downsample) == count,
               "model.block_filters, block_kernel_sizes and block_downsample must have the same "
               f"length, got {count}, {len(self.block_kernel_sizes)}, {len(self.block_downsample)}")
        _check(all(k % 2 == 1 and k > 0 for k in self.block_kernel_sizes),
               f"model.block_kernel_sizes must be odd and positive, got {list(self.block_kernel_sizes)}")
        _check(self.convs_per_block in (1, 2),
               f"model.convs_per_block must be 1 or 2, got {_r(self.convs_per_block)}")
        _check(self.head in HEADS, f"model.head must be one of {HEADS}, got {_r(self.head)}")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {_r(self.dropout)}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    clipnorm: float | None = None

    def __post_init__(self):
        _check(self.name in OPTIMIZERS, f"optimizer.name must be one of {OPTIMIZERS}, got {_r(self.name)}")
        _check(self.learning_rate > 0, f"optimizer.learning_rate must be > 0, got {_r(self.learning_rate)}")
        _check(self.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {_r(self.weight_decay)}")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The study's schedule: warmup from start_factor*base, cosine to floor_factor*base, flat."""

    name: str = "warmup_cosine_floor"
    warmup_start_factor: float = 0.1
    warmup_fraction: float = 0.1
    decay_fraction: float = 0.9
    floor_factor: float = 0.01

    def __post_init__(self):
        _check(self.name in SCHEDULES, f"schedule.name must be one of {SCHEDULES}, got {_r(self.name)}")
        _check(0.0 <= self.warmup_fraction <= 1.0 and 0.0 <= self.decay_fraction <= 1.0
               and self.warmup_fraction + self.decay_fraction <= 1.0 + 1e-9,
               "schedule.warmup_fraction and decay_fraction must be in [0, 1] and sum to <= 1, got "
               f"{_r(self.warmup_fraction)} and {_r(self.decay_fraction)}")


@dataclasses.dataclass(frozen=True)
class JointAugmentConfig:
    """Segmentation augmentation (data.augment.JointAugmentParams): geometry moves image and mask
    together, intensity changes touch the image only; all off disables it."""

    horizontal_flip: bool = True
    vertical_flip: bool = False
    rotate90: bool = False
    rotation: float = 0.0  # fraction of a full turn, either way
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    gamma: float = 0.0  # exponent drawn from exp(U(-gamma, gamma))
    noise: float = 0.0  # largest Gaussian sigma as a fraction of 255

    def __post_init__(self):
        for name in ("rotation", "zoom", "translation", "contrast", "brightness", "gamma", "noise"):
            value = getattr(self, name)
            _check(isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value < 1.0,
                   f"segmentation.augment.{name} must be in [0, 1), got {_r(value)}")


@dataclasses.dataclass(frozen=True)
class SegmentationConfig:
    """Read only when ``task: segmentation``; ``model`` stays the classifier's section.

    ``targets``: ``annotations`` (the COCO shapes next to the images) or ``masks`` (mask files
    under ``mask_root`` matched by file stem). With ``data.root: null`` the phantoms bring their
    own masks. ``use_split_folders``: when the data root holds train/valid/test folders, keep
    them as the split; the default (false) pools them and splits group-aware like a single folder,
    because published folders often share near-duplicates (pkdarabi's share 13 groups).
    """

    targets: str = "annotations"
    mask_root: str | None = None
    encoder: str = "resnet50"  # resnet50 | mobilenetv2 | efficientnetb0 (keras.applications)
    encoder_weights: str = "imagenet"  # imagenet | none | path of the encoder's weights file
    decoder_filters: tuple[int, ...] = (256, 128, 64, 32, 16)
    freeze_encoder: bool = False
    encoder_bn_momentum: float | None = None  # None keeps Keras' 0.99; 0.9 suits a fresh encoder
    loss: str = "bce_dice"
    use_split_folders: bool = False
    threshold: float = DEFAULT_SEGMENTATION_THRESHOLD
    # Train on train_crop-sized squares of the data.image_size images (centred on tumour with
    # probability crop_tumour_fraction); validation, test and exports see whole images. null: whole.
    train_crop: int | None = None
    crop_tumour_fraction: float = 0.7
    # none, or percentile: each image's 0.5-99.5th percentiles to 0..255 inside the model (as
    # model.intensity for the classifier), so exports that map intensities differently agree.
    intensity: str = "none"
    augment: JointAugmentConfig = dataclasses.field(default_factory=JointAugmentConfig)

    def __post_init__(self):
        _check(self.intensity in INTENSITY_MODES,
               f"segmentation.intensity must be one of {INTENSITY_MODES}, got {_r(self.intensity)}")
        _check(self.targets in SEGMENTATION_TARGETS,
               f"segmentation.targets must be one of {SEGMENTATION_TARGETS}, got {_r(self.targets)}")
        _check(self.encoder in SEGMENTATION_ENCODERS,
               f"segmentation.encoder must be one of {SEGMENTATION_ENCODERS}, got {_r(self.encoder)}")
        _check(self.loss in SEGMENTATION_LOSSES,
               f"segmentation.loss must be one of {SEGMENTATION_LOSSES}, got {_r(self.loss)}")
        _check(isinstance(self.encoder_weights, str) and bool(self.encoder_weights),
               "segmentation.encoder_weights must be 'imagenet', 'none' or the path of a weights "
               f"file, got {_r(self.encoder_weights)}")
        _check(len(self.decoder_filters) == 5 and all(
            isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in self.decoder_filters),
            f"segmentation.decoder_filters must be 5 positive integers, got {list(self.decoder_filters)}")
        _check(0.0 <= self.crop_tumour_fraction <= 1.0,
               f"segmentation.crop_tumour_fraction must be in [0, 1], got {_r(self.crop_tumour_fraction)}")
        _check(0.0 < self.threshold < 1.0,
               f"segmentation.threshold must be in (0, 1), got {_r(self.threshold)}")
        _check(self.encoder_bn_momentum is None or 0.0 < self.encoder_bn_momentum < 1.0,
               "segmentation.encoder_bn_momentum must be in (0, 1) or null, "
               f"got {_r(self.encoder_bn_momentum)}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    epochs: int = 7
    precision: str = "auto"
    distribute: str = "auto"
    seed: int = 0
    label_smoothing: float = 0.1
    monitor: str = "val_accuracy"
    steps_per_epoch: int | None = None  # None: one pass over the training split
    verbose: int = 1
    # Skips graph tracing (~45 s for a ResNet50-UNet); only worth it for tiny test runs.
    run_eagerly: bool = False
    # Start from these weights (a .keras model or .weights.h5 of the same architecture) instead of
    # a fresh initialisation: fine-tuning a finished run, or an in-domain pretrained model.
    initial_weights: str | None = None
    # Op determinism plus data order and augmentation keyed by (seed, epoch, step): two runs, or a
    # run killed anywhere and resumed, end with identical weights. Slower input pipeline (no
    # parallel nondeterminism) and a different augmenter than Keras' random layers.
    deterministic: bool = False
    # Stages of one run, trained in order, each from the previous stage's best weights: a mapping
    # of dotted overrides (e.g. {name: fine, data.image_size: 256, train.epochs: 10}) applied to
    # this config. A resolution schedule is one command instead of chained runs.
    stages: tuple[dict, ...] = ()
    # Cross-validation: also score each held-out fold with these test-time averagings (mirror,
    # flips, dihedral), so the averaging is chosen out of fold (out_of_fold_tta-<mode>.csv).
    held_out_tta: tuple[str, ...] = ()
    # Distillation (classification): a classifier (.keras or SavedModel) whose probabilities on
    # each augmented batch replace the labels; accuracy then means agreement with it. The student
    # starts from its weights for every layer they share unless initial_weights says otherwise.
    teacher: str | None = None

    def __post_init__(self):
        unknown = sorted(set(self.held_out_tta) - {"mirror", "flips", "dihedral"})
        _check(not unknown, f"train.held_out_tta takes mirror, flips and dihedral, got {unknown}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {_r(self.batch_size)}")
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {_r(self.epochs)}")
        _check(self.precision in PRECISIONS,
               f"train.precision must be one of {PRECISIONS}, got {_r(self.precision)}")
        _check(self.distribute in STRATEGIES,
               f"train.distribute must be one of {STRATEGIES}, got {_r(self.distribute)}")
        _check(0.0 <= self.label_smoothing < 1.0,
               f"train.label_smoothing must be in [0, 1), got {_r(self.label_smoothing)}")
        for index, stage in enumerate(self.stages):
            _check(isinstance(stage, dict) and bool(stage),
                   f"train.stages[{index}] must be a mapping of dotted config keys to values "
                   f"(e.g. {{data.image_size: 256, train.epochs: 10}}), got {_r(stage)}")
            reserved = sorted(set(stage) & STAGE_RESERVED_KEYS)
            _check(not reserved, f"train.stages[{index}] may not set {', '.join(reserved)} "
                   "(the stages share the run's task, split and weights chain)")


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = "classification"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    segmentation: SegmentationConfig = dataclasses.field(default_factory=SegmentationConfig)

    def __post_init__(self):
        _check(self.task in TASKS, f"task must be one of {TASKS}, got {_r(self.task)}")
        if self.train.stages:
            self.stage_configs()
        if self.task == "segmentation":
            _check(self.train.teacher is None,
                   "train.teacher (distillation) is for classification; segmentation has none")
            self._check_segmentation()
        else:
            monitors = ("val_accuracy", "val_loss", "accuracy", "loss")
            _check(self.train.monitor in monitors, f"train.monitor must be a logged metric, one of "
                   f"{monitors} for classification, got {_r(self.train.monitor)}")

    def _check_segmentation(self) -> None:
        """Cross-section rules: the encoder downsamples 32x and the run is judged by Dice."""
        size = self.data.image_size
        _check(size >= 32 and size % 32 == 0,
               f"data.image_size must be a multiple of 32 for segmentation (the ResNet50 encoder "
               f"downsamples 32x), got {_r(size)}")
        monitors = ("val_dice", "val_iou", "val_loss", "dice", "iou", "loss")
        _check(self.train.monitor in monitors,
               f"train.monitor must be one of {monitors} for segmentation, got {_r(self.train.monitor)}")
        seg = self.segmentation
        _check(seg.train_crop is None or (seg.train_crop >= 32 and seg.train_crop % 32 == 0
                                          and seg.train_crop < size),
               f"segmentation.train_crop must be null or a multiple of 32 below data.image_size "
               f"({size}), got {_r(seg.train_crop)}")
        _check(not (seg.targets == "masks" and seg.mask_root is None and self.data.root is not None),
               "segmentation.targets is 'masks' but segmentation.mask_root is null; set "
               "segmentation.mask_root to the mask folder (or use targets: annotations)")

    def stage_configs(self) -> list[tuple[str, Config]]:
        """(name, config) per ``train.stages`` entry: this config with the stage's overrides and
        no stages of its own. Each is validated, so a bad key fails before anything trains."""
        stages = []
        for index, stage in enumerate(self.train.stages):
            overrides = {key: value for key, value in stage.items() if key != "name"}
            name = str(stage.get("name", f"stage{index + 1}"))
            _check(name.replace("_", "").replace("-", "").isalnum(),
                   f"train.stages[{index}].name must be letters, digits, '_' or '-', got {_r(name)}")
            try:
                stage_config = self.replace(**{"train.stages": [], **overrides})
            except ValueError as error:
                raise ValueError(f"train.stages[{index}] ({name}): {error}") from None
            stages.append((f"{index + 1}_{name}", stage_config))
        return stages

    def to_dict(self) -> dict:
        tree = _to_plain(dataclasses.asdict(self))
        # Classification configs (and their saved run configs) stay as they were.
        if self.task != "segmentation" and self.segmentation == SegmentationConfig():
            del tree["segmentation"]
        return tree

    def replace(self, **overrides) -> Config:
        """A copy with dotted-key overrides, validated again: ``replace(**{"train.epochs": 2})``."""
        tree = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(tree, key, value)
        return from_dict(tree)


# Keys a stage may not override: the task and data split are the run's, and the weights chain
# from stage to stage by itself.
STAGE_RESERVED_KEYS = frozenset({"task", "train.stages", "train.initial_weights", "data.root",
                                 "data.split_seed", "data.val_fraction", "data.test_fraction",
                                 "data.subjects", "data.labels", "data.folds",
                                 "data.train_sources", "data.folds_ensemble"})


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {_r(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        shown = ", ".join(_r(prefix + str(k))[1:-1] for k in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(f"unknown config key(s) {shown}{more}; "
                         f"valid keys under {prefix or 'the top level'}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _coerce(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce_value(hint, value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce_value(hint, value, key: str):
    """Coerce by the field's type, so ``--set optimizer.learning_rate=1e-3`` (text to YAML 1.1)
    works and ``train.epochs=2.5`` or ``=abc`` fails with one line naming the key and the type."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(arg for arg in args if arg is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} must be a list, got {_r(value)}")
        return tuple(_coerce_value(args[0], item, f"{key}[{index}]") for index, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {_r(value)}")
        return value
    if hint is int:
        number = _number(value, key, "an integer")
        if number != int(number):
            raise ValueError(f"{key} must be an integer, got {_r(value)}")
        return int(number)
    if hint is float:
        return _number(value, key, "a finite number")
    if hint is str:
        if isinstance(value, dict | list | tuple) or value is None:
            raise ValueError(f"{key} must be text, got {_r(value)}")
        return str(value)
    return value


def _number(value, key: str, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{key} must be {expected}, got {_r(value)}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{key} must be {expected}, got {_r(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{key} must be {expected}, got {_r(value)}")
    return number


def from_dict(tree: dict) -> Config:
    return _coerce(Config, tree, "")


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"config key {_r(part)} in override {_r(key)} is a value, not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    """``"a.b=c"`` -> ``("a.b", c)`` with ``c`` parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {_r(text)}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), _yaml_config(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ValueError(f"--set {key.strip()}: cannot read the value {_r(raw)}") from None


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config (default: the packaged classification.yaml; a bare name such as
    ``segmentation`` finds a packaged config) and apply ``key=value`` overrides."""
    path = Path(path) if path is not None else DEFAULT_CLASSIFICATION_CONFIG
    if not path.is_file():
        path = _packaged(path)
    if not path.is_file():
        where = " (the packaged default is missing: reinstall braintumor_tf)" \
            if path == DEFAULT_CLASSIFICATION_CONFIG else ""
        raise ValueError(f"config file not found: {path}{where}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: {size:,} bytes, more than a config's {MAX_CONFIG_BYTES:,}; "
                         "is it the right file?")
    try:
        tree = _yaml_config(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ValueError(f"{path}{where}: {problem}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections (data:, model:, "
                         f"train:, ...), not a {type(tree).__name__}")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    return from_dict(tree)


def _packaged(path: Path) -> Path:
    """``segmentation``, ``segmentation.yaml`` or ``configs/segmentation.yaml`` name a packaged
    config when no such file exists here (e.g. after a wheel install, run from anywhere)."""
    name = path.name if path.suffix else f"{path.name}.yaml"
    packaged = CONFIG_DIR / name
    return packaged if packaged.is_file() else path


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value seen twice out twice: load_config refuses aliases."""

    def ignore_aliases(self, data):
        return True


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.dump(config.to_dict(), Dumper=_NoAliasDumper, sort_keys=False))
