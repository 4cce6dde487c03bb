"""LiteRT (TFLite) files of a classifier or segmenter for phones and other edge devices.

Every variant takes the same input as the Keras model (raw pixels 0..255, resized and
channel-converted as in training), so an edge app does the same preprocessing for all of them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from braintumor_tf.log import native_stderr_without

TFLITE_VARIANTS = ("float32", "float16", "dynamic", "int8")
# What the converter prints at error level although nothing is wrong (checked on TF 2.21):
# dropped from its output, everything else is passed through.
# Kept in float inside the int8 file (with quantise/dequantise around them): LiteRT's int8
# comparison aborts the whole process (QuantizeMultiplierGreaterThanOne) and its int8 division
# refuses any divisor whose raw int8 value is 0, i.e. a real value of -zero_point x scale. The
# in-graph percentile stretch uses both; its int8 file died on its first real slice.
FLOAT_OPS_IN_INT8 = ("GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL",
                     "SELECT_V2", "DIV")
CONVERTER_NOISE = ("NodeDef mentions attribute Truncate",
                   "All log messages before absl::InitializeLog() is called",
                   "fully_quantize: 0, inference_type:")
INT8_IO_TYPES = ("int8", "float32")
# A file's suffix says its contract: <name>_<suffix>.tflite. Written into every sidecar JSON.
CONTRACTS = {
    "float32": "float32 weights and activations; input and output float32",
    "float16": "float16 weights (dequantised on load), float32 activations; input and output float32",
    "dynamic": "dynamic-range: int8 weights, float32 activations; input and output float32",
    "int8": "full integer: int8 weights and activations; input and output int8 (see scale, zero_point)",
    "int8_float_io": "full integer: int8 weights and activations; input and output float32 "
                     "(quantised inside the model)",
}


def file_suffix(variant: str, int8_io: str = "int8") -> str:
    """``int8`` with float input/output is a different contract, so a different name."""
    return "int8_float_io" if variant == "int8" and int8_io == "float32" else variant


def tflite_file_name(name: str, variant: str, int8_io: str = "int8") -> str:
    return f"{name}_{file_suffix(variant, int8_io)}.tflite"
PREPROCESSING = (
    "decode the image, convert to the model's channel count (grey = ITU-R 601 luminance of RGB, "
    "grey is repeated for RGB), resize to image_size x image_size (area averaging when shrinking), "
    "keep raw pixel values 0..255 (the model rescales internally); images deeper than 8 bits "
    "(16-bit PNG/TIFF, DICOM) are first stretched from their own 0.5th-99.5th percentiles to "
    "0..255"
)


def _calibration_batches(images: np.ndarray) -> Iterable[list[np.ndarray]]:
    for image in images:
        yield [np.asarray(image, np.float32)[np.newaxis]]


def _int8_with_float_ops(tf, converter, representative_images) -> bytes:
    """The int8 conversion with ``FLOAT_OPS_IN_INT8`` left in float, through LiteRT's public
    selective-quantisation entry (the quantisation debugger's denylist), which gives float
    input and output: the ``int8_float_io`` contract."""
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=list(FLOAT_OPS_IN_INT8))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_options=options,
        debug_dataset=lambda: _calibration_batches(representative_images[:1]))
    return debugger.get_nondebug_quantized_model()


def quantised_ops(flatbuffer: bytes, names) -> set[str]:
    """The ``names`` among the file's operations that take an int8 input. LiteRT lists
    operations only through its interpreter's ``_get_ops_details``; without it, nothing is
    found (the check is a courtesy: a clear error instead of a crash at the first image)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    list_ops = getattr(interpreter, "_get_ops_details", None)
    if list_ops is None:
        return set()
    tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    return {op["op_name"] for op in list_ops() if op["op_name"] in names
            and any(tensors.get(index) == np.int8 for index in op["inputs"])}


def _tensor_info(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(d) for d in detail.get("shape_signature", detail["shape"])],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def describe_tflite(flatbuffer: bytes) -> dict:
    """Input/output dtype, shape, scale and zero point as an edge app needs them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    outputs = interpreter.get_output_details()
    main = next(o for o in outputs if len(o["shape"]) != 1)
    info = {"input": _tensor_info(interpreter.get_input_details()[0]), "output": _tensor_info(main)}
    score = next((o for o in outputs if len(o["shape"]) == 1), None)
    if score is not None:  # a guarded classifier (models.guard): the [N] output is ood_score
        info["ood_score_output"] = _tensor_info(score)
    return info


def _write_atomic(path: Path, data: bytes, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"file already exists, not overwriting: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _all_float32(model) -> bool:
    import keras

    return all(_all_float32(layer) if isinstance(layer, keras.Model)
               else getattr(layer, "compute_dtype", "float32") == "float32"
               for layer in model.layers)


def float32_model(model):
    """A float32 twin of a mixed-precision model: the converter rejects bfloat16 ops, and
    quantisation wants float32 statistics anyway. Variables are float32 already.

    Nested sub-models (the UNet's ResNet50 encoder) are twinned recursively: their own layers
    carry their own dtype policies, which a top-level clone would keep.
    """
    import keras

    if _all_float32(model):
        return model

    def as_float32(layer):
        if isinstance(layer, keras.Model):
            return float32_model(layer)
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    twin = keras.models.clone_model(model, clone_function=as_float32)
    twin.set_weights(model.get_weights())
    return twin


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def convert_to_tflite(
    model,
    path: str | os.PathLike,
    variant: str = "float32",
    representative_images: np.ndarray | None = None,
    int8_io: str = "int8",
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Path:
    """Convert one variant; ``int8`` needs calibration images decoded exactly as in training.

    ``int8_io`` picks the int8 variant's input/output type: ``int8`` for integer-only
    accelerators, ``float32`` to keep the app's code identical to the float variants.
    A JSON beside the file records dtypes, scale and zero point of input and output.
    """
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"variant must be one of {TFLITE_VARIANTS}, got {variant!r}")
    if int8_io not in INT8_IO_TYPES:
        raise ValueError(f"int8_io must be one of {INT8_IO_TYPES}, got {int8_io!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"TFLite file already exists, not overwriting: {path}")
    if variant == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ValueError("the int8 variant needs representative training images for calibration")
        expected = tuple(model.input_shape[1:])
        if tuple(np.shape(representative_images)[1:]) != expected:
            raise ValueError(
                f"representative images must have shape [N, {', '.join(map(str, expected))}], "
                f"got {np.shape(representative_images)}"
            )
    model = float32_model(model)
    # from_concrete_functions on a function calling a Keras 3 model silently produces wrong
    # weights, so go through a Keras SavedModel export (free batch dimension) instead.
    with tempfile.TemporaryDirectory(prefix="tflite-src-") as src:
        model.export(src, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(src)
        if variant != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if variant == "int8":
            converter.representative_dataset = lambda: _calibration_batches(representative_images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = tf.int8 if int8_io == "int8" else tf.float32
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        with native_stderr_without(*CONVERTER_NOISE):
            if variant == "int8" and int8_io == "float32":
                flatbuffer = _int8_with_float_ops(tf, converter, representative_images)
            else:
                flatbuffer = converter.convert()
    if variant == "int8" and int8_io == "int8":
        broken = quantised_ops(flatbuffer, FLOAT_OPS_IN_INT8)
        if broken:
            raise ValueError(
                f"this model's integer-only LiteRT file would run {', '.join(sorted(broken))} on "
                "int8 tensors, which LiteRT's kernels get wrong or abort on (the in-graph "
                "percentile stretch uses them): export it with --int8-io float32, which keeps "
                "those few operations in float and every other one in int8")
    info = {
        "variant": variant,
        "file": path.name,
        "contract": CONTRACTS[file_suffix(variant, int8_io)],
        "preprocessing": PREPROCESSING,
        "dequantize": "float = (q - zero_point) * scale; quantize: q = round(x / scale) + zero_point",
        **describe_tflite(flatbuffer),
        **(metadata or {}),
    }
    if variant == "int8":
        info["calibration_images"] = int(len(representative_images))
    _write_atomic(path, flatbuffer, overwrite)
    _write_atomic(sidecar_path(path), (json.dumps(info, indent=2) + "\n").encode(), overwrite=True)
    return path
