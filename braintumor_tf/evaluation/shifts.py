"""Rendering shifts: the same slice as another scanner, viewer or export tool would hand it over.

Each shift turns an image's pixels (8-bit, at the file's own size) into the bytes of a new file,
which then goes through the package's ordinary decoder, as a user's file would: a 16-bit copy is
a real 16-bit PNG, a JPEG shift a real JPEG. Geometric shifts also say how to move a mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from braintumor_tf.data.decode import decode_bytes


@dataclass(frozen=True)
class Shift:
    name: str
    render: Callable[[np.ndarray], bytes]  # uint8 [H, W, C] -> encoded file
    geometry: Callable[[np.ndarray], np.ndarray] | None = None  # the same move for a mask
    kind: str = "intensity"  # intensity | orientation | resolution | compression


def _png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def _jpeg(quality: int):
    def render(pixels):
        ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return data.tobytes()
    return render


def _lookup(table: np.ndarray):
    table = np.clip(np.round(table), 0, 255).astype(np.uint8)
    return lambda pixels: _png(cv2.LUT(pixels, table))


def _window(low: float, high: float):
    """Values below ``low`` and above ``high`` (of 0..255) clip, the rest stretch to 0..255."""
    values = np.arange(256, dtype=np.float64)
    return _lookup((values - low) * 255.0 / (high - low))


def _gamma(exponent: float):
    return _lookup(255.0 * (np.arange(256) / 255.0) ** exponent)


def _sixteen_bit(pixels: np.ndarray) -> bytes:
    """The same values in a 16-bit container (x 257: 255 -> 65535), as scanner exports give."""
    return _png(pixels.astype(np.uint16) * 257)


def _resample(size: int):
    def render(pixels):
        height, width = pixels.shape[:2]
        bigger = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LINEAR)
        back = cv2.resize(bigger, (width, height), interpolation=cv2.INTER_AREA)
        return _png(back)
    return render


def _blur(pixels: np.ndarray) -> bytes:
    return _png(cv2.GaussianBlur(pixels, (0, 0), 1.5))


def _noise(pixels: np.ndarray) -> bytes:
    rng = np.random.default_rng(int(pixels.sum()) % (2 ** 32))  # the same noise every run
    noisy = pixels.astype(np.float32) + rng.normal(0.0, 8.0, pixels.shape)
    return _png(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def _turn(k: int):
    return lambda array: np.ascontiguousarray(np.rot90(array, k, axes=(0, 1)))


def _flip(axis: int):
    return lambda array: np.ascontiguousarray(np.flip(array, axis=axis))


def _moved(move):
    return lambda pixels: _png(move(pixels))


SHIFTS: tuple[Shift, ...] = (
    Shift("rotate90", _moved(_turn(1)), _turn(1), "orientation"),
    Shift("rotate180", _moved(_turn(2)), _turn(2), "orientation"),
    Shift("rotate270", _moved(_turn(3)), _turn(3), "orientation"),
    Shift("flip_left_right", _moved(_flip(1)), _flip(1), "orientation"),
    Shift("flip_up_down", _moved(_flip(0)), _flip(0), "orientation"),
    Shift("window_narrow", _window(20.0, 200.0)),
    Shift("window_wide", _lookup(30.0 + np.arange(256) * (190.0 / 255.0))),
    Shift("gamma_0.6", _gamma(0.6)),
    Shift("gamma_1.6", _gamma(1.6)),
    Shift("sixteen_bit", _sixteen_bit),
    Shift("resample_640", _resample(640), kind="resolution"),
    Shift("jpeg_95", _jpeg(95), kind="compression"),
    Shift("jpeg_60", _jpeg(60), kind="compression"),
    Shift("jpeg_30", _jpeg(30), kind="compression"),
    Shift("blur", _blur, kind="compression"),
    Shift("noise", _noise, kind="compression"),
)
SHIFT_NAMES = tuple(shift.name for shift in SHIFTS)


def select_shifts(names: str | None) -> tuple[Shift, ...]:
    """``all`` (or None), or comma-separated names of SHIFTS."""
    if names is None or names.strip() in ("", "all"):
        return SHIFTS
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SHIFT_NAMES))
    if unknown:
        raise ValueError(f"unknown shift(s) {', '.join(unknown)}; choose from all, "
                         f"{', '.join(SHIFT_NAMES)}")
    return tuple(shift for shift in SHIFTS if shift.name in wanted)


def as_uint8(pixels: np.ndarray) -> np.ndarray:
    """Decoded float 0..255 pixels as the 8-bit image a shift starts from (BGR for colour)."""
    image = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]  # decode gives RGB; OpenCV encodes BGR
    return np.ascontiguousarray(image)


def shifted_pixels(original: np.ndarray, shift: Shift, channels: int, image_size: int | None,
                   name: str = "<shifted>") -> np.ndarray:
    """The shifted file decoded exactly as the package decodes any file."""
    return decode_bytes(shift.render(as_uint8(original)), channels, image_size, name=name)
