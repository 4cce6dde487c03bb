"""Helpers shared by the tests: small synthetic MRI-like images (no real data needed) and
running the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np


def base_image(seed: int, size: int = 160) -> np.ndarray:
    """Smooth random texture inside an ellipse, loosely like a slice on black; different seeds
    give images that are not near-duplicates of each other."""
    rng = np.random.default_rng(seed)
    noise = cv2.resize(rng.random((20, 20)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:size, :size]
    inside = ((xx - size / 2) / (0.42 * size)) ** 2 + ((yy - size / 2) / rng.uniform(
        0.3 * size, 0.47 * size)) ** 2 < 1
    return np.clip(noise * 255 * inside, 0, 255).astype(np.uint8)


def write_image(path: Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(image))
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    """Like write_image, but a failed write fails the test."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


# Subprocesses run the CLI exactly as a user types it; TF's C++ chatter is kept out of the logs.
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run_python(*args, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python *args`` in a subprocess; on failure the assertion shows the end of its output."""
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            timeout=timeout, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


def pixel_bombs(width: int = 12000, height: int = 12000) -> dict[str, bytes]:
    """Small files whose headers declare ``width`` x ``height`` pixels, one per format.

    The PNG is a real, decodable image (its zeros compress ~1000:1); the others are headers that
    only a size check reads before their (absent) pixel data would be decoded.
    """
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    ok, small_jpeg = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))
    jpeg = bytearray(small_jpeg.tobytes())
    frame = jpeg.find(b"\xff\xc0")
    jpeg[frame + 5:frame + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
    bmp = (b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHH", 40, width, -height, 1, 24)
           + b"\x00" * 24)
    gif = b"GIF89a" + struct.pack("<HH", min(width, 65535), min(height, 65535)) + b"\x00" * 20
    return {"bomb.png": png, "bomb.jpg": bytes(jpeg), "bomb.bmp": bmp, "bomb.gif": gif}


def disc_images(count: int, size: int, seed: int = 0, radius=(6, 14)):
    """Grey noise with one bright disc per image; the disc is the mask: (images, masks), float32
    [count, size, size, 1], pixels in 0..255."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    images = rng.normal(40, 10, (count, size, size, 1)).clip(0, 255).astype(np.float32)
    masks = np.zeros((count, size, size, 1), np.float32)
    for index in range(count):
        disc_radius = rng.uniform(*radius)
        centre = rng.uniform(disc_radius, size - disc_radius, 2)
        disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= disc_radius ** 2
        masks[index, disc, 0] = 1.0
        images[index, disc, 0] = 200.0
    return images, masks


def bright_segmenter(path, size: int) -> str:
    """A segmenter whose tumour is whatever is bright, sigmoid(20 * (x / 255 - 0.5)): known
    masks without training."""
    import keras

    inputs = keras.Input((size, size, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32",
                            kernel_initializer=keras.initializers.Constant(20.0),
                            bias_initializer=keras.initializers.Constant(-10.0))(x)
    keras.Model(inputs, x).save(path)
    return str(path)


# A tiny classifier run with deterministic input: kill/resume and multi-worker tests compare weights.
TINY_DETERMINISTIC = [
    "--set", "data.phantom_images_per_class=24", "--set", "data.phantom_image_size=48",
    "--set", "data.image_size=48", "--set", "model.stem_filters=8",
    "--set", "model.block_filters=[8, 16]", "--set", "model.block_kernel_sizes=[3, 3]",
    "--set", "model.block_downsample=[true, false]", "--set", "model.dense_units=16",
    "--set", "train.batch_size=16", "--set", "train.verbose=0", "--set", "train.epochs=3",
    "--set", "train.precision=float32", "--set", "train.deterministic=true",
]


# A child's own peak resident memory in MB, as an expression to run inside it. The mm's high-water
# mark (/proc VmHWM) starts afresh at exec; getrusage's ru_maxrss does not: a child of a pytest
# that already holds 1.7 GB reports 1.7 GB before it has done anything.
PEAK_MB_EXPRESSION = ("int(next(line for line in open('/proc/self/status') "
                      "if line.startswith('VmHWM:')).split()[1]) / 1024")
