"""Small synthetic MRI-like images shared by the tests (no real data needed)."""

from __future__ import annotations

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
