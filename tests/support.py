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
