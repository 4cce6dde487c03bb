"""Intensity scaling shared by every image reader (files, DICOM, arrays, the SavedModel)."""

from __future__ import annotations

import numpy as np

# Images deeper than 8 bits (16-bit PNG/TIFF, DICOM) are scanner values, usually 12 bits in a
# 16-bit container: dividing by the container's range leaves them almost black. They are
# stretched from these percentiles of their own values to 0..255 instead.
HIGH_BIT_PERCENTILES = (0.5, 99.5)


def percentile_scaled(values: np.ndarray) -> np.ndarray:
    """float32 0..255 from the image's own 0.5th-99.5th percentile range (flat images: 0)."""
    values = np.nan_to_num(np.asarray(values, np.float32))
    low, high = np.percentile(values, HIGH_BIT_PERCENTILES, method="nearest")
    if not high > low:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - low) * (255.0 / (high - low)), 0.0, 255.0).astype(np.float32)
