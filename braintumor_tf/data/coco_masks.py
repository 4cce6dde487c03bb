"""COCO shapes to masks: polygons (cv2.fillPoly with sub-pixel vertices) and RLE, per image.

Rasterised lazily, per image, because eagerly holding ~1,700 full-size masks would cost hundreds
of MB for data read once per run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import cv2
import numpy as np

from braintumor_tf.data.coco import CocoShape, CocoSplit, SegRecord
from braintumor_tf.data.rle import rle_to_mask

_POLYGON_SHIFT = 4  # fixed-point bits given to cv2.fillPoly, so fractional vertices are kept


def _shape_mask(shape: CocoShape, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    if shape.polygons:
        scale = 1 << _POLYGON_SHIFT
        points = [np.round(p * scale).astype(np.int32) for p in shape.polygons]
        # One call per polygon: fillPoly with several polygons applies even-odd filling, which
        # would cut holes where a tumour's parts overlap; the union is what is meant.
        for pts in points:
            cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_POLYGON_SHIFT)
    if shape.rle_counts is not None:
        mask |= rle_to_mask(shape.rle_counts, height, width)
    return mask


def coco_mask(record: SegRecord, category_ids: Iterable[int] | None = None) -> np.ndarray:
    """Union of every shape (of the given categories) as uint8 0/1 at the JSON's image size.

    Polygons follow cv2.fillPoly, which includes boundary pixels: an integer box from x0 to x1
    covers columns x0..x1 inclusive.
    """
    wanted = None if category_ids is None else {int(c) for c in category_ids}
    mask = np.zeros((record.height, record.width), np.uint8)
    for shape in record.shapes:
        if wanted is None or shape.category_id in wanted:
            mask |= _shape_mask(shape, record.height, record.width)
    return mask


def coco_mask_fn(splits: CocoSplit | Sequence[CocoSplit], category_ids: Iterable[int] | None = None
                 ) -> Callable[[str], np.ndarray]:
    """image path -> mask, for segmentation_dataset; looks records up across several splits."""
    if isinstance(splits, CocoSplit):
        splits = [splits]
    by_path: dict[str, SegRecord] = {}
    for split in splits:
        by_path.update(split._by_path)
    wanted = None if category_ids is None else tuple(int(c) for c in category_ids)

    def mask_for(image_path) -> np.ndarray:
        if isinstance(image_path, bytes | np.bytes_):
            image_path = os.fsdecode(bytes(image_path))
        key = os.path.abspath(os.fspath(image_path))
        if key not in by_path:
            raise KeyError(f"{image_path} is not an image of the given COCO split(s)")
        return coco_mask(by_path[key], wanted)

    return mask_for


def polygon_area(polygon: np.ndarray) -> float:
    """Shoelace area of an [N, 2] polygon (what COCO's ``area`` means for polygons)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def is_axis_aligned_box(polygon: np.ndarray, tolerance: float = 1e-6) -> bool:
    """True when the polygon fills its bounding box: how the pkdarabi "polygons" were found
    to be boxes."""
    width = np.ptp(polygon[:, 0])
    height = np.ptp(polygon[:, 1])
    box = float(width * height)
    return box > 0 and abs(polygon_area(polygon) - box) <= tolerance * max(box, 1.0)
