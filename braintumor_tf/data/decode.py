"""Decode image files into float32 [H, W, C] arrays with raw pixel values in [0, 255].

OpenCV instead of tf.io.decode_image because it reads BMP/TIFF/16-bit files and lets us
reject truncated files that decoders would otherwise half-decode silently.
"""

from __future__ import annotations

import csv
import os

import cv2
import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.dicom import decode_dicom, is_dicom_bytes
from braintumor_tf.data.image_header import check_pixel_count
from braintumor_tf.data.intensity import percentile_scaled

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PADDING = b"\x00\r\n \xff"


class DecodeError(ValueError):
    """A file that is not a complete, decodable image."""


def _check_complete(data: bytes, name: str) -> None:
    """Decoders fill a truncated JPEG with grey and PNG errors can be soft; catch both early."""
    tail = data.rstrip(_PADDING)
    # Bytes after the end-of-image marker (some writers append metadata) are harmless; the marker
    # must come after the last start-of-scan, since an EXIF thumbnail carries an EOI of its own.
    last_scan = data.rfind(b"\xff\xda")
    ends_after_scan = last_scan >= 0 and data.rfind(_JPEG_EOI) > last_scan
    if data.startswith(_JPEG_SOI) and not tail.endswith(_JPEG_EOI) and not ends_after_scan:
        raise DecodeError(f"{name}: truncated JPEG (no end-of-image marker)")
    if data.startswith(_PNG_SIGNATURE) and b"IEND" not in data[-64:]:
        raise DecodeError(f"{name}: truncated PNG (no IEND chunk)")


def _to_float(img: np.ndarray) -> np.ndarray:
    """8-bit as it is; deeper integer images by their own percentile range (see above)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32)
    if img.dtype in (np.uint16, np.int16, np.uint32, np.int32):
        return percentile_scaled(img)
    if np.issubdtype(img.dtype, np.floating):
        return np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 255.0)
    if np.issubdtype(img.dtype, np.integer):
        top = float(np.iinfo(img.dtype).max)
        return np.clip(img.astype(np.float32) * (255.0 / top), 0.0, 255.0)
    raise TypeError(f"unsupported pixel type {img.dtype}")


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """OpenCV gives grey, BGR or BGRA; return grey or RGB."""
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == 2:  # grey + alpha
        img = img[:, :, :1]
    elif c == 4:
        img = img[:, :, :3]
    elif c not in (1, 3):
        raise DecodeError(f"unsupported number of channels: {c}")
    if img.shape[2] == 1:
        return img if channels == 1 else np.repeat(img, 3, axis=2)
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    # Area averaging avoids aliasing when shrinking; it is blocky when enlarging.
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    out = cv2.resize(img, (size, size), interpolation=interp)
    if out.ndim == 2:
        out = out[:, :, None]
    return out


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """The training resize, for callers that also need the image at its original size."""
    return _resize(np.asarray(img, np.float32), size)


def decode_bytes(
    data: bytes, channels: int, image_size: int | None = None, name: str = "<bytes>"
) -> np.ndarray:
    """Decode in-memory bytes (uploads, archives) exactly as files are decoded."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if len(data) == 0:
        raise DecodeError(f"{name}: empty file")
    if is_dicom_bytes(data):
        try:
            img = decode_dicom(data, name, DecodeError)
        except ImportError as error:  # pydicom not installed: this file cannot be read
            raise DecodeError(f"{name}: {error}") from error
        if img.ndim == 3:
            img = img[:, :, ::-1]  # RGB DICOM; _to_channels expects OpenCV's BGR
        img = _to_channels(img, channels)
        if image_size is not None:
            img = _resize(img, image_size)
        return np.ascontiguousarray(np.clip(img, 0.0, 255.0), dtype=np.float32)
    _check_complete(data, name)
    check_pixel_count(data, name, DecodeError)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DecodeError(f"{name}: decoder error: {str(exc).strip().splitlines()[-1]}") from exc
    if img is None:
        raise DecodeError(f"{name}: not a readable image (unknown format or corrupt data)")
    if img.size == 0 or min(img.shape[:2]) == 0:
        raise DecodeError(f"{name}: image has zero size")
    try:
        img = _to_channels(_to_float(img), channels)
    except DecodeError as exc:
        raise DecodeError(f"{name}: {exc}") from exc
    if image_size is not None:
        img = _resize(img, image_size)
    return np.ascontiguousarray(np.clip(img, 0.0, 255.0), dtype=np.float32)


def encode_png8(data: bytes, name: str = "<bytes>") -> bytes:
    """Any image this module reads (DICOM, TIFF, 16-bit PNG, ...) as an 8-bit PNG at its own size,
    through the same decode as training and local predict (the 16-bit percentile stretch, DICOM
    windowing): what the REST client sends a SavedModel that cannot decode the original. Grey
    stays one channel; colour is kept. Pixels are rounded to whole 0..255 values (at most 0.5
    from the float pixels a local model sees). DecodeError when the file cannot be read."""
    img = decode_bytes(data, channels=3, name=name)
    pixels = np.rint(img).astype(np.uint8)
    if np.array_equal(pixels[:, :, 0], pixels[:, :, 1]) and \
            np.array_equal(pixels[:, :, 0], pixels[:, :, 2]):
        pixels = pixels[:, :, 0]
    else:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise DecodeError(f"{name}: could not be re-encoded as PNG")
    return encoded.tobytes()


def read_image(path: str | os.PathLike, channels: int, image_size: int | None = None) -> np.ndarray:
    """Bytes, then decoded, rather than cv2.imread: imread fails silently on non-ASCII paths on
    Windows. filesystem.read_bytes opens regular files only (a FIFO or device named like an image
    is refused, not waited on) and reads ``scheme://`` paths (gs://, ...) through tf.io.gfile."""
    path = os.fspath(path)
    data = filesystem.read_bytes(path)
    return decode_bytes(data, channels, image_size, name=path)


def error_text(path: str, error: Exception) -> str:
    """Why ``path`` could not be read, without repeating the path (reports list it beside)."""
    if isinstance(error, OSError):
        return f"cannot read file: {error.strerror or error}"
    text, prefix = str(error), f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def check_images(paths) -> tuple[list[str], list[dict]]:
    """Fully decode every file up front so one bad file cannot crash training mid-epoch."""
    good: list[str] = []
    bad: list[dict] = []
    for path in paths:
        path = os.fspath(path)
        try:
            read_image(path, channels=3)
        except (DecodeError, OSError) as error:
            bad.append({"path": path, "reason": error_text(path, error)})
        else:
            good.append(path)
    return good, bad


def write_bad_file_report(bad: list[dict], path: str | os.PathLike) -> None:
    """Header is written even when empty so a report's presence means the check ran."""
    with open_csv(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "reason"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(bad)


def make_tf_loader(channels: int, image_size: int, read=None):
    """Loader for tf.data map; a bad file raises in the graph, so pipelines add
    `dataset.ignore_errors()` as a last guard behind check_images. ``read``: path -> float32
    [size, size, channels] instead of the training decode (evaluation passes the predictor's)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    import tensorflow as tf  # here, so that audits and splits never pay for importing TF

    def _load_np(path) -> np.ndarray:
        if isinstance(path, bytes | np.bytes_):
            path = os.fsdecode(bytes(path))  # the bytes of os.fsencode: any file name comes back
        if read is not None:
            return np.asarray(read(str(path)), np.float32)
        return read_image(str(path), channels, image_size)

    def load(path_tensor):
        img = tf.numpy_function(_load_np, [path_tensor], tf.float32, stateful=False)
        img.set_shape([image_size, image_size, channels])
        return img

    return load
