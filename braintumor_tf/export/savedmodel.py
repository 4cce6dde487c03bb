"""Self-contained SavedModel export for the classifier and the segmenter.

The signatures carry decoding, channel conversion and resizing, so a client
(TF Serving, another language, a notebook) needs only TensorFlow and the
exported directory, never this package.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from braintumor_tf import faults, writes
from braintumor_tf.config import DEFAULT_SEGMENTATION_THRESHOLD
from braintumor_tf.data.image_header import max_image_pixels
from braintumor_tf.data.intensity import HIGH_BIT_PERCENTILES
from braintumor_tf.models.guard import is_guarded

METADATA_FILE = "braintumor_tf.json"
METADATA_DIR = "assets.extra"
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL "L" and OpenCV grey use

# First bytes of the formats decode_image understands; checked up front so a
# bad upload gets a message about what was expected instead of a decoder error.
_MAGIC_PREFIXES = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8")


def _declared_pixels(data: tf.Tensor) -> tf.Tensor:
    """Width x height from a JPEG, PNG, BMP or GIF header (int64), before decoding: the graph's
    guard against pixel bombs, as data.image_header is the Python loaders'."""
    padded = tf.strings.join([data, tf.constant(b"\x00" * 32)])

    def number(offset: int, length: int, big_endian: bool) -> tf.Tensor:
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, offset, length), tf.uint8),
                      tf.int64)
        powers = [256 ** k for k in (range(length - 1, -1, -1) if big_endian else range(length))]
        return tf.reduce_sum(raw * tf.constant(powers, tf.int64))

    def signed_magnitude(value: tf.Tensor) -> tf.Tensor:  # BMP heights are negative top-down
        return tf.where(value >= 2 ** 31, 2 ** 32 - value, value)

    def prefix(magic: bytes) -> tf.Tensor:
        return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    return tf.case([
        (prefix(b"\x89PNG"), lambda: number(16, 4, True) * number(20, 4, True)),
        (prefix(b"\xff\xd8\xff"), jpeg),
        (prefix(b"BM"), lambda: signed_magnitude(number(18, 4, False))
         * signed_magnitude(number(22, 4, False))),
        (prefix(b"GIF8"), lambda: number(6, 2, False) * number(8, 2, False)),
    ], default=lambda: tf.constant(0, tf.int64), exclusive=False)


def model_geometry(model) -> tuple[int, int]:
    """Image size and channel count from the model's input, which must be square."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] not in (1, 3):
        raise ValueError(
            f"classifier input must be [N, S, S, C] with fixed S and C in (1, 3), got {shape}"
        )
    return int(shape[1]), int(shape[3])


def to_channels(images: tf.Tensor, channels: int) -> tf.Tensor:
    """Grey is tiled to RGB; RGB is reduced with luminance weights (as the data loaders do)."""
    have = tf.shape(images)[-1]
    if channels == 3:
        return tf.cond(
            tf.equal(have, 1), lambda: tf.tile(images, [1, 1, 1, 3]), lambda: images
        )
    weights = tf.constant(LUMINANCE_WEIGHTS, tf.float32)
    return tf.cond(
        tf.equal(have, 3),
        lambda: tf.reduce_sum(images * weights, axis=-1, keepdims=True),
        lambda: images,
    )


def resize_to(images: tf.Tensor, size: int) -> tf.Tensor:
    """Antialiased bilinear shrinking is close to OpenCV INTER_AREA; exact size is left alone."""
    shape = tf.shape(images)
    same = tf.logical_and(tf.equal(shape[-3], size), tf.equal(shape[-2], size))
    return tf.cond(
        same,
        lambda: images,
        lambda: tf.image.resize(images, [size, size], method="bilinear", antialias=True),
    )


def checked_pixels(pixels: tf.Tensor, channels: int, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Validate a pixel batch with messages a client can act on, then convert and resize it.

    Returns the model-ready batch and the input's [N, H, W, C] shape.
    """
    rank_ok = tf.debugging.Assert(
        tf.equal(tf.rank(pixels), 4),
        ["pixels: expected rank 4 [N, H, W, C] float32 in 0..255, got rank", tf.rank(pixels)],
    )
    # tf.ensure_shape would fail before the assertion runs, with a vaguer message; a
    # reshape to a length-4 shape gives the static rank 4 that the model needs.
    with tf.control_dependencies([rank_ok]):
        shape = tf.concat([tf.shape(pixels), [1, 1, 1, 1]], axis=0)[:4]
    pixels = tf.reshape(pixels, shape)
    pixels.set_shape([None, None, None, None])
    checks = [
        tf.debugging.Assert(
            tf.logical_or(tf.equal(shape[3], 1), tf.equal(shape[3], 3)),
            ["pixels: expected 1 or 3 channels, got", shape[3]],
        ),
        tf.debugging.Assert(
            tf.logical_and(shape[1] > 0, shape[2] > 0),
            ["pixels: expected non-empty height and width, got", shape[1:3]],
        ),
    ]
    with tf.control_dependencies(checks):
        return resize_to(to_channels(tf.identity(pixels), channels), size), shape


def _is_16_bit_png(data: tf.Tensor) -> tf.Tensor:
    """PNG signature and a bit depth of 16 in IHDR (byte 24)."""
    return tf.logical_and(tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n"),
                          tf.equal(tf.strings.substr(data, 24, 1), b"\x10"))


def _percentile_scaled(image: tf.Tensor) -> tf.Tensor:
    """data.intensity.percentile_scaled in the graph (nearest-rank percentiles)."""
    values = tf.sort(tf.reshape(image, [-1]))
    last = tf.cast(tf.size(values) - 1, tf.float32)
    low_q, high_q = (q / 100.0 for q in HIGH_BIT_PERCENTILES)
    low = values[tf.cast(tf.round(low_q * last), tf.int32)]
    high = values[tf.cast(tf.round(high_q * last), tf.int32)]
    scaled = tf.clip_by_value((image - low) * (255.0 / tf.maximum(high - low, 1e-6)), 0.0, 255.0)
    return tf.where(high > low, scaled, tf.zeros_like(image))


class _ServingModule(tf.Module):
    """What both tasks' SavedModels share: geometry, metadata variables, decoding and checks."""

    def __init__(self, model, class_names: Sequence[str], name: str):
        super().__init__(name=name)
        self._size, self._channels = model_geometry(model)
        self.model = model
        self.class_names = tf.Variable(list(class_names), dtype=tf.string, trainable=False)
        self.image_size = tf.Variable(self._size, dtype=tf.int32, trainable=False)
        self.channels = tf.Variable(self._channels, dtype=tf.int32, trainable=False)
        self.max_image_pixels = max_image_pixels()  # fixed into the graph at export

    def _decode_full_size(self, data: tf.Tensor) -> tf.Tensor:
        """Encoded bytes -> [H, W, C] float32 0..255 at the image's own size."""
        known = tf.reduce_any(
            tf.stack([tf.equal(tf.strings.substr(data, 0, len(p)), p) for p in _MAGIC_PREFIXES])
        )
        check = tf.debugging.Assert(
            known, ["images: expected encoded JPEG, PNG, BMP or GIF bytes"], summarize=1
        )
        with tf.control_dependencies([check]):
            small_enough = _declared_pixels(data) <= self.max_image_pixels
        check = tf.debugging.Assert(small_enough, [
            f"images: more than {self.max_image_pixels} pixels declared in the image header "
            "(a decompression bomb or a huge scan); refused before decoding"], summarize=1)
        # Always decode RGB and convert here, so grey comes from the same luminance weights as
        # predict_pixels, not from each decoder's own RGB-to-grey. 16-bit PNGs are stretched
        # from their own percentiles, as the Python loaders do (data.intensity.percentile_scaled).
        with tf.control_dependencies([check]):
            image = tf.cond(
                _is_16_bit_png(data),
                lambda: _percentile_scaled(tf.cast(tf.io.decode_png(data, channels=3,
                                                                    dtype=tf.uint16), tf.float32)),
                lambda: tf.io.decode_image(data, channels=3, dtype=tf.float32,
                                           expand_animations=False) * 255.0)
        return to_channels(image[tf.newaxis], self._channels)[0]

    def _decode_one(self, data: tf.Tensor) -> tf.Tensor:
        return resize_to(self._decode_full_size(data)[tf.newaxis], self._size)[0]


class ClassifierModule(_ServingModule):
    """Holds the Keras model plus what a client needs to interpret its output."""

    def __init__(self, model, class_names: Sequence[str]):
        self._guarded = is_guarded(model)  # models.guard.with_guard: two outputs
        num_classes = (model.get_layer("distribution_guard").num_classes if self._guarded
                       else int(model.output_shape[-1]))
        if len(class_names) != num_classes:
            raise ValueError(
                f"model has {num_classes} outputs but {len(class_names)} class names were given"
            )
        super().__init__(model, class_names, name="braintumor_classifier")
        if self._guarded:
            guard = model.get_layer("distribution_guard")
            self.ood_threshold = tf.Variable(guard.threshold, dtype=tf.float32, trainable=False)
            self.temperature = tf.Variable(guard.temperature, dtype=tf.float32, trainable=False)

    def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self.model(images, training=False)
        probabilities = tf.cast(out["probabilities"] if self._guarded else out, tf.float32)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        outputs = {
            "probabilities": probabilities,
            "class_id": class_id,
            "class_name": tf.gather(self.class_names, class_id),
        }
        if self._guarded:
            score = tf.cast(out["ood_score"], tf.float32)
            outputs["ood_score"] = score
            outputs["in_distribution"] = score <= self.ood_threshold
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(self, images):
        pixels = tf.map_fn(
            self._decode_one,
            images,
            fn_output_signature=tf.TensorSpec([self._size, self._size, self._channels], tf.float32),
        )
        return self._outputs(pixels)

    # Unknown rank on purpose: a loaded signature does not enforce its declared shape, and with
    # a static rank of 4 the rank assertion would be folded away, leaving an obscure slice error.
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="pixels")])
    def predict_pixels(self, pixels):
        images, _ = checked_pixels(pixels, self._channels, self._size)
        return self._outputs(images)


class SegmenterModule(_ServingModule):
    """Same inputs and checks as the classifier's module; outputs a tumour mask at the input's size.

    ``mask_probability`` is float32 [N, H, W, 1] (bilinear back from the model's size), ``mask``
    uint8 0/1 at ``threshold``. Encoded images in one request must share a size, so that the masks
    stack into one tensor.
    """

    def __init__(self, model, threshold: float = DEFAULT_SEGMENTATION_THRESHOLD):
        size, _ = model_geometry(model)
        if tuple(model.output_shape[1:]) != (size, size, 1):
            raise ValueError(f"segmenter output must be [N, {size}, {size}, 1], got {model.output_shape}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        super().__init__(model, ["tumour"], name="braintumor_segmenter")
        self._threshold = float(threshold)
        self.task = tf.Variable("segmentation", dtype=tf.string, trainable=False)
        self.threshold = tf.Variable(self._threshold, dtype=tf.float32, trainable=False)

    def _masks(self, images: tf.Tensor, height_width: tf.Tensor) -> dict[str, tf.Tensor]:
        probability = tf.cast(self.model(images, training=False), tf.float32)
        probability = tf.image.resize(probability, height_width, method="bilinear")
        return {"mask_probability": probability,
                "mask": tf.cast(probability > self._threshold, tf.uint8)}

    def _decode_with_size(self, data: tf.Tensor):
        image = self._decode_full_size(data)
        return resize_to(image[tf.newaxis], self._size)[0], tf.shape(image)[:2]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(self, images):
        pixels, sizes = tf.map_fn(
            self._decode_with_size, images,
            fn_output_signature=(tf.TensorSpec([self._size, self._size, self._channels], tf.float32),
                                 tf.TensorSpec([2], tf.int32)))
        same = tf.debugging.Assert(
            tf.reduce_all(tf.equal(sizes, sizes[:1])),
            ["images: every image in one request must have the same height and width"])
        with tf.control_dependencies([same]):
            height_width = tf.identity(sizes[0])
        return self._masks(pixels, height_width)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="pixels")])
    def predict_pixels(self, pixels):
        images, shape = checked_pixels(pixels, self._channels, self._size)
        return self._masks(images, shape[1:3])


def next_version_dir(base_dir: str | os.PathLike) -> Path:
    """TF Serving serves the highest integer sub-directory, so a new export goes one above."""
    base = Path(base_dir)
    children = base.iterdir() if base.is_dir() else ()
    versions = [int(p.name) for p in children if p.is_dir() and p.name.isdigit()]
    return base / str(max(versions, default=0) + 1)


def _verify(path: Path, size: int, channels: int, num_classes: int) -> None:
    loaded = tf.saved_model.load(str(path))
    if num_classes == 0:  # a segmenter: a mask at the input's size
        zeros = tf.zeros([1, size + 8, size + 8, channels], tf.float32)
        probability = loaded.signatures["predict_pixels"](pixels=zeros)["mask_probability"].numpy()
        if probability.shape != (1, size + 8, size + 8, 1) or not np.all(np.isfinite(probability)):
            raise RuntimeError(f"exported segmenter failed its reload check: got shape "
                               f"{probability.shape}")
        return
    zeros = tf.zeros([1, size, size, channels], tf.float32)
    probabilities = loaded.signatures["predict_pixels"](pixels=zeros)["probabilities"].numpy()
    if probabilities.shape != (1, num_classes) or not np.all(np.isfinite(probabilities)):
        raise RuntimeError(
            f"exported model failed its reload check: got probabilities {probabilities!r}"
        )


def _open_permissions(root: Path) -> None:
    """mkdtemp makes the directory private (0700); a TF Serving container running as another
    user could not read it, so apply the usual umask-based modes before publishing."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def export_classifier(model, out_dir: str | os.PathLike, class_names: Sequence[str],
                      tta: str = "none", spec=None) -> Path:
    """Write atomically: a half-written directory would look servable to TF Serving.
    ``tta`` only records which test-time augmentation ``model`` already contains; ``spec``
    (spec.ModelSpec) is stored in assets.extra for every reader."""
    module = ClassifierModule(model, class_names)
    metadata = {"task": "classification", "class_names": list(class_names),
                "test_time_augmentation": tta,
                **({"spec": spec.to_dict()} if spec is not None else {})}
    if module._guarded:
        metadata.update(guard_metadata(model))
    return _export(module, model, out_dir, metadata, len(class_names))


def guard_metadata(model) -> dict:
    """What a client needs to read a guarded classifier's ``ood_score`` (models.guard)."""
    names = {layer.name for layer in model.layers}
    if "distribution_guard" not in names:
        return {}
    guard = model.get_layer("distribution_guard")
    return {"ood_threshold": guard.threshold, "temperature": guard.temperature,
            **({"class_weights": guard.class_weights} if guard.class_weights else {}),
            "ood_method": "largest over feature layers of the squared Mahalanobis distance to "
                          "the nearest class mean, each divided by its 99th percentile on "
                          "validation slices; flagged above ood_threshold"}


def export_segmenter(model, out_dir: str | os.PathLike, threshold: float = DEFAULT_SEGMENTATION_THRESHOLD,
                     tta: str = "none", spec=None) -> Path:
    """The segmenter's SavedModel: ``serving_default`` (encoded images) and ``predict_pixels``.
    ``tta`` only records which test-time augmentation ``model`` already contains."""
    return _export(SegmenterModule(model, threshold), model, out_dir,
                   {"task": "segmentation", "class_names": ["tumour"], "threshold": threshold,
                    "test_time_augmentation": tta,
                    **({"spec": spec.to_dict()} if spec is not None else {})}, 0)


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>-*`` folders and files left by exports whose process is gone (a
    kill mid-export); a partial of a process still running is left alone."""
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        pid = path.name.split(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _export(module, model, out_dir, metadata: dict, num_classes: int) -> Path:
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"export directory already exists, not overwriting: {out}")
    size, channels = model_geometry(model)
    with writes.reported(out, "the SavedModel", name_the_file=False):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        signatures = {
            "serving_default": module.serve_images.get_concrete_function(),
            "predict_pixels": module.predict_pixels.get_concrete_function(),
        }
        # A full or read-only disk names the export, not a hidden temporary folder.
        with writes.reported(out, "the SavedModel", name_the_file=False):
            tf.saved_model.save(module, str(tmp), signatures=signatures)
            meta_dir = tmp / METADATA_DIR
            meta_dir.mkdir(exist_ok=True)
            metadata = {**metadata, "image_size": size, "channels": channels,
                        "max_image_pixels": module.max_image_pixels}
            (meta_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _verify(tmp, size, channels, num_classes)
        faults.reached("export_written")  # whole but unpublished: must be cleaned, never used
        if out.exists():
            raise FileExistsError(f"export directory appeared while exporting: {out}")
        _open_permissions(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
