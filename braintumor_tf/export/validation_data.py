"""Images an export calibrates int8 on and checks parity with: a run's train/val split or folders.

Decoded with ``read_image``, as training decodes, so calibration sees training statistics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.config import load_config
from braintumor_tf.data.decode import DecodeError, read_image
from braintumor_tf.data.discover import discover_images
from braintumor_tf.data.manifest import manifest_split
from braintumor_tf.data.segmentation import find_segmentation_images, mask_at_size, training_source


def manifest_rows(run_dir: Path, split: str) -> list[tuple[str, int]]:
    manifest = run_dir / "split_manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"no split_manifest.csv in run directory {run_dir}")
    return [(row["path"], int(row["label"])) for row in manifest_split(manifest, split)]


def folder_rows(folder) -> list[tuple[str, int]]:
    return [(r.path, r.label) for r in discover_images([Path(folder)], require_label=False)]


def load_pixels(rows: Sequence[tuple[str, int]], image_size: int, channels: int, limit: int,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Decoded with read_image, as training decodes, so calibration sees training statistics."""
    rows = list(rows)
    if len(rows) > limit:
        chosen = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(chosen)]
    images, labels = [], []
    for path, label in rows:
        try:
            images.append(read_image(path, channels, image_size))
        except (DecodeError, OSError):
            continue
        labels.append(label)
    if not images:
        raise ValueError(f"none of the {len(rows)} selected images could be read")
    return np.stack(images).astype(np.float32), np.asarray(labels)


def _sample(items: list, limit: int, seed: int) -> list:
    if len(items) <= limit:
        return items
    chosen = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(chosen)]


def segmenter_validation(image_size: int, channels: int, limit: int, run_dir=None,
                         validation_data=None, masks=None, representative_data=None,
                         seed: int = 1, split: str = "val"
                         ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Validation pixels and, when the data has them, truth masks at the model's size (nearest,
    as training sees them). Truth is optional: agreement with the Keras masks needs none."""
    reader, with_truth = None, set()
    if run_dir is not None:
        paths = [path for path, _ in manifest_rows(Path(run_dir), split)]
        config_file = Path(run_dir) / "config.yaml"
        if config_file.is_file():
            source, targets = training_source(load_config(config_file), Path(run_dir))
            by_abs = {os.path.abspath(p): p for p in source.images_with(targets)}
            # Manifest paths may be relative to where training ran; the reader wants the source's.
            paths = [by_abs.get(os.path.abspath(p), p) for p in paths]
            reader, with_truth = source.mask_reader(targets), set(by_abs.values())
    elif validation_data is not None:
        source = find_segmentation_images(validation_data, masks)
        targets = "masks" if source.has_masks else "annotations" if source.has_annotations else None
        if targets is None:
            paths = list(source.image_paths)
        else:
            paths = source.images_with(targets)
            reader, with_truth = source.mask_reader(targets), set(paths)
    elif representative_data is not None:
        paths = [path for path, _ in folder_rows(representative_data)]
    else:
        return None
    images, truths = [], []
    for path in _sample(paths, limit, seed):
        try:
            images.append(read_image(path, channels, image_size))
        except (DecodeError, OSError):
            continue
        truths.append(mask_at_size(reader, path, image_size) if path in with_truth else None)
    if not images:
        raise ValueError(f"none of the {min(len(paths), limit)} selected validation images could be read")
    if any(t is None for t in truths):
        return np.stack(images).astype(np.float32), None
    return np.stack(images).astype(np.float32), np.stack(truths)
