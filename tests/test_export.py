"""Export round trips: the SavedModel must work without this package, every runtime must agree."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from support import pixel_bombs

from braintumor_tf.export import savedmodel
from braintumor_tf.export.runtimes import Runtime, load_runtime
from braintumor_tf.export.savedmodel import export_classifier, next_version_dir
from braintumor_tf.export.tflite import convert_to_tflite

CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")
SIZE = 32

# Runs in a fresh interpreter with nothing but TensorFlow, as a serving client would.
CLIENT_SCRIPT = r"""
import json, sys
import tensorflow as tf

job = json.load(open(sys.argv[1]))
results = {}
for name, spec in job.items():
    loaded = tf.saved_model.load(spec["model_dir"])
    serve = loaded.signatures["serving_default"]
    pixels_fn = loaded.signatures["predict_pixels"]
    res = {}
    data = tf.stack([tf.io.read_file(p) for p in spec["images"]])
    out = serve(images=data)
    res["serving"] = {
        "probabilities": out["probabilities"].numpy().tolist(),
        "class_id": out["class_id"].numpy().tolist(),
        "class_name": [n.decode() for n in out["class_name"].numpy()],
        "dtypes": {k: v.dtype.name for k, v in out.items()},
    }
    res["pixels"] = []
    for item in spec["pixels"]:
        out = pixels_fn(pixels=tf.constant(item, tf.float32))
        res["pixels"].append({
            "probabilities": out["probabilities"].numpy().tolist(),
            "class_name": [n.decode() for n in out["class_name"].numpy()],
        })
    res["errors"] = {}
    bad_calls = {
        "bad_bytes": lambda: serve(images=tf.constant([b"definitely not an image"])),
        "two_channels": lambda: pixels_fn(pixels=tf.zeros([1, 8, 8, 2])),
        "rank_3": lambda: pixels_fn(pixels=tf.zeros([8, 8, 1])),
    }
    for bomb_name, bomb_path in spec.get("bombs", {}).items():
        bad_calls[bomb_name] = lambda p=bomb_path: serve(images=tf.stack([tf.io.read_file(p)]))
    for key, call in bad_calls.items():
        try:
            call()
            res["errors"][key] = None
        except Exception as exc:
            res["errors"][key] = str(exc)
    res["metadata"] = {
        "class_names": [n.decode() for n in loaded.class_names.numpy()],
        "image_size": int(loaded.image_size.numpy()),
        "channels": int(loaded.channels.numpy()),
    }
    results[name] = res
results["imported_braintumor_tf"] = any(m.startswith("braintumor_tf") for m in sys.modules)
json.dump(results, open(sys.argv[2], "w"))
"""


def tiny_model(channels: int = 1, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, channels))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # Large random logits so that small input differences show up in the probabilities.
    init = keras.initializers.RandomNormal(stddev=5.0)
    outputs = keras.layers.Dense(4, "softmax", dtype="float32", kernel_initializer=init)(x)
    return keras.Model(inputs, outputs)


def encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def reference_pixels(data: bytes, channels: int) -> np.ndarray:
    """Decode with PIL (not TF) and resize the way the signature documents."""
    image = Image.open(io.BytesIO(data))
    if image.mode == "I;16":  # stretched from its own 0.5th-99.5th percentiles, as documented
        array = np.asarray(image, np.float32)
        low, high = np.percentile(array, (0.5, 99.5), method="nearest")
        array = np.clip((array - low) * (255.0 / (high - low)), 0, 255)
    else:
        array = np.asarray(image).astype(np.float32)
    if array.ndim == 2:
        array = array[..., None]
    array = array[..., :3]  # alpha is dropped, not composited
    return resize(array[None], channels)[0]


def resize(batch: np.ndarray, channels: int) -> np.ndarray:
    """Channel conversion and resizing as the signatures document them."""
    if channels == 3 and batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    if channels == 1 and batch.shape[-1] == 3:
        batch = batch @ np.array([[0.299], [0.587], [0.114]], np.float32)
    if batch.shape[1:3] == (SIZE, SIZE):
        return batch
    return tf.image.resize(batch, [SIZE, SIZE], method="bilinear", antialias=True).numpy()


def make_images(directory: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, lossless); mixed sizes, modes and formats."""
    rng = np.random.default_rng(1)

    def smooth(h, w, c=None):
        # Smooth content keeps JPEG error small; noise would make the comparison meaningless.
        y, x = np.mgrid[0:h, 0:w]
        base = 127 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)
        if c is None:
            return base.astype(np.uint8)
        shifts = rng.uniform(-40, 40, c)
        return np.clip(base[..., None] + shifts, 0, 255).astype(np.uint8)

    blobs = {
        "grey.png": (encode(rng.integers(0, 256, (40, 50), dtype=np.uint8), "PNG"), True),
        "rgb.png": (encode(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "PNG"), True),
        "rgba.png": (encode(rng.integers(0, 256, (33, 33, 4), dtype=np.uint8), "PNG"), True),
        "grey16.png": (
            encode(rng.integers(0, 65536, (36, 28), dtype=np.uint16), "PNG", None), True
        ),
        # A 12-bit scan in a 16-bit PNG: stretched from its own range, not divided by 257.
        "scan12.png": (encode((smooth(40, 40).astype(np.uint16) * 16), "PNG", None), True),
        "rgb.bmp": (encode(rng.integers(0, 256, (45, 37, 3), dtype=np.uint8), "BMP"), True),
        "exact.png": (encode(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8), "PNG"), True),
        "rgb.jpg": (encode(smooth(45, 37, 3), "JPEG"), False),
        "grey.jpg": (encode(smooth(50, 41), "JPEG"), False),
    }
    files = {}
    for name, (data, lossless) in blobs.items():
        path = directory / name
        path.write_bytes(data)
        files[name] = (path, lossless)
    assert Image.open(files["grey16.png"][0]).mode == "I;16"
    return files


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export a grey and an RGB model once and query both from a TensorFlow-only process."""
    root = tmp_path_factory.mktemp("export")
    images = make_images(root)
    rng = np.random.default_rng(2)
    pixel_inputs = [
        rng.uniform(0, 255, (2, 20, 24, 1)).astype(np.float32),
        rng.uniform(0, 255, (1, 28, 36, 3)).astype(np.float32),
    ]
    bombs = {}
    for bomb_name, data in pixel_bombs(20000, 20000).items():
        (root / bomb_name).write_bytes(data)
        bombs[bomb_name] = str(root / bomb_name)
    models, job = {}, {}
    for channels in (1, 3):
        name = f"c{channels}"
        models[name] = tiny_model(channels)
        model_dir = export_classifier(models[name], root / name / "1", CLASS_NAMES)
        job[name] = {
            "model_dir": str(model_dir),
            "images": [str(path) for path, _ in images.values()],
            "pixels": [p.tolist() for p in pixel_inputs],
            "bombs": bombs,
        }
    (root / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, str(root / "job.json"), str(root / "out.json")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "out.json").read_text())
    return {"root": root, "images": images, "pixels": pixel_inputs, "models": models,
            "results": results}


def test_client_process_needs_only_tensorflow(exported):
    assert exported["results"]["imported_braintumor_tf"] is False


@pytest.mark.parametrize("name", ["c1", "c3"])
def test_serving_default_matches_keras_on_encoded_images(exported, name):
    model = exported["models"][name]
    channels = model.input_shape[-1]
    serving = exported["results"][name]["serving"]
    got = np.array(serving["probabilities"], np.float32)
    assert serving["dtypes"] == {
        "probabilities": "float32", "class_id": "int64", "class_name": "string"
    }
    for row, (image_name, (path, lossless)) in enumerate(exported["images"].items()):
        pixels = reference_pixels(path.read_bytes(), channels)[None]
        want = model.predict(pixels, verbose=0)[0]
        # JPEG decoders may differ by a level here and there; lossless formats must agree.
        tolerance = 1e-4 if lossless else 1e-2
        np.testing.assert_allclose(got[row], want, atol=tolerance, err_msg=image_name)
    assert serving["class_id"] == got.argmax(axis=1).tolist()
    assert serving["class_name"] == [CLASS_NAMES[i] for i in got.argmax(axis=1)]


@pytest.mark.parametrize("name", ["c1", "c3"])
def test_predict_pixels_converts_channels_and_size(exported, name):
    model = exported["models"][name]
    channels = model.input_shape[-1]
    for pixels, out in zip(exported["pixels"], exported["results"][name]["pixels"], strict=True):
        want = model.predict(resize(pixels, channels), verbose=0)
        got = np.array(out["probabilities"], np.float32)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert out["class_name"] == [CLASS_NAMES[i] for i in got.argmax(axis=1)]


def test_bad_inputs_fail_with_clear_message(exported):
    errors = exported["results"]["c1"]["errors"]
    assert "expected encoded JPEG, PNG, BMP or GIF bytes" in errors["bad_bytes"]
    assert "expected 1 or 3 channels" in errors["two_channels"]
    assert "expected rank 4" in errors["rank_3"]


def test_pixel_bombs_are_refused_by_the_graph_before_decoding(exported):
    """20000 x 20000 declared (400 MP) in PNG, JPEG, BMP and GIF headers: refused by the header
    check inside serving_default, not by the decoder (which would first allocate)."""
    errors = exported["results"]["c1"]["errors"]
    for name in ("bomb.png", "bomb.jpg", "bomb.bmp", "bomb.gif"):
        assert errors[name] is not None and "pixels declared in the image header" in errors[name], (
            name, errors[name])


def test_metadata_travels_with_the_model(exported):
    assert exported["results"]["c3"]["metadata"] == {
        "class_names": list(CLASS_NAMES), "image_size": SIZE, "channels": 3
    }
    meta_file = exported["root"] / "c1" / "1" / "assets.extra" / "braintumor_tf.json"
    meta = json.loads(meta_file.read_text())
    assert meta == {"task": "classification", "class_names": list(CLASS_NAMES),
                    "image_size": SIZE, "channels": 1, "max_image_pixels": 50_000_000,
                    "test_time_augmentation": "none"}


def test_existing_out_dir_is_refused_and_untouched(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_classifier(tiny_model(), out, CLASS_NAMES)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("stage", ["save", "verify"])
def test_interrupted_export_leaves_nothing_behind(tmp_path, monkeypatch, stage):
    real_save = tf.saved_model.save

    def save_then_fail(*args, **kwargs):
        real_save(*args, **kwargs)  # leave a partly complete directory behind
        raise KeyboardInterrupt("simulated interruption")

    def verify_fails(*args, **kwargs):
        raise RuntimeError("simulated bad reload")

    if stage == "save":
        monkeypatch.setattr(tf.saved_model, "save", save_then_fail)
    else:
        monkeypatch.setattr(savedmodel, "_verify", verify_fails)
    with pytest.raises((KeyboardInterrupt, RuntimeError), match="simulated"):
        export_classifier(tiny_model(), tmp_path / "models" / "1", CLASS_NAMES)
    assert list((tmp_path / "models").iterdir()) == []


def test_class_name_count_must_match_model(tmp_path):
    with pytest.raises(ValueError, match="4 outputs but 3 class names"):
        export_classifier(tiny_model(), tmp_path / "m", CLASS_NAMES[:3])
    assert not (tmp_path / "m").exists()


def test_next_version_dir(tmp_path):
    assert next_version_dir(tmp_path / "absent") == tmp_path / "absent" / "1"
    assert next_version_dir(tmp_path) == tmp_path / "1"
    for name in ("1", "3", "10x", ".3.tmp-abc"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert next_version_dir(tmp_path) == tmp_path / "4"


def test_runtimes_agree_across_formats(tmp_path):
    model = tiny_model(1, seed=0)
    other = tiny_model(1, seed=5)
    pixels = np.random.default_rng(3).uniform(0, 255, (5, SIZE, SIZE, 1)).astype(np.float32)
    want = model.predict(pixels, verbose=0)
    assert not np.allclose(other.predict(pixels, verbose=0), want, atol=1e-3)

    model.save(tmp_path / "model.keras")
    base = tmp_path / "serving"
    export_classifier(other, base / "1", CLASS_NAMES)
    export_classifier(model, base / "3", CLASS_NAMES)
    (base / "7.partial").mkdir()  # not a version: ignored
    for variant in ("float32", "float16", "dynamic"):
        convert_to_tflite(model, tmp_path / f"model_{variant}.tflite", variant)

    cases = {
        "model.keras": ("keras", 1e-6),
        "serving/3": ("savedmodel", 1e-5),
        "serving": ("savedmodel", 1e-5),
        "model_float32.tflite": ("tflite", 1e-5),
        "model_float16.tflite": ("tflite", 2e-2),
        "model_dynamic.tflite": ("tflite", 2e-2),
    }
    for rel, (kind, tolerance) in cases.items():
        runtime = load_runtime(tmp_path / rel, class_names=CLASS_NAMES, batch_size=2)
        assert isinstance(runtime, Runtime)
        assert (runtime.kind, runtime.image_size, runtime.channels) == (kind, SIZE, 1), rel
        assert runtime.class_names == CLASS_NAMES
        got = runtime.predict(pixels)
        assert got.shape == (5, 4) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=tolerance, err_msg=rel)
        assert runtime.predict(pixels[:0]).shape == (0, 4)
        with pytest.raises(ValueError, match="pixels must be float32"):
            runtime.predict(pixels[..., 0])

    # SavedModels carry their own class names.
    assert load_runtime(base).class_names == CLASS_NAMES
    with pytest.raises(ValueError, match="differ from the exported"):
        load_runtime(base, class_names=("a", "b", "c", "d"))
    with pytest.raises(FileExistsError):
        convert_to_tflite(model, tmp_path / "model_float32.tflite")


def test_load_runtime_rejects_missing_and_unknown(tmp_path):
    missing = tmp_path / "nope.keras"
    with pytest.raises(FileNotFoundError, match=f"model not found: {missing}"):
        load_runtime(missing)
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .keras file"):
        load_runtime(tmp_path / "weights.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="TF Serving base directory"):
        load_runtime(tmp_path / "empty")
