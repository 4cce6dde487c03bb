"""Segmentation targets stored as mask images next to (or apart from) the images.

Masks are matched by file stem because that is the one thing mask exports keep: the extension
(.jpg image, .png mask) and the folder layout usually differ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.decode import decode_bytes
from braintumor_tf.data.discover import _walk_images


def index_masks(mask_root: str | os.PathLike) -> dict[str, list[str]]:
    """stem -> every mask file with that stem anywhere under ``mask_root`` (local or
    ``scheme://``, see filesystem.py)."""
    remote = filesystem.is_remote(mask_root)
    root = mask_root if remote else Path(mask_root)
    if not (filesystem.is_dir(root) if remote else root.is_dir()):
        raise FileNotFoundError(f"mask folder not found: {mask_root}")
    index: dict[str, list[str]] = {}
    for path in _walk_images(root):
        # PurePath's stem of a remote str is right: only the last component matters.
        index.setdefault(Path(path).stem if remote else path.stem, []).append(str(path))
    return index


def _best_candidate(image_path: str, candidates: list[str]) -> str:
    """Same stem in several folders (e.g. train/x.png and valid/x.png): take the mask whose
    folders match the image's nearest folders; refuse to guess on a tie."""
    image_dirs = Path(os.path.abspath(image_path)).parent.parts

    def shared_suffix(mask_path: str) -> int:
        mask_dirs = Path(os.path.abspath(mask_path)).parent.parts
        n = 0
        while n < min(len(image_dirs), len(mask_dirs)) and image_dirs[-1 - n] == mask_dirs[-1 - n]:
            n += 1
        return n

    scores = [shared_suffix(c) for c in candidates]
    best = max(scores)
    winners = [c for c, s in zip(candidates, scores, strict=True) if s == best]
    if len(winners) > 1:
        raise ValueError(f"several masks match {image_path} by file stem and none by folder: "
                         f"{', '.join(sorted(winners))}")
    return winners[0]


def pair_images_with_masks(image_paths: Sequence[str | os.PathLike], mask_root: str | os.PathLike
                           ) -> tuple[list[tuple[str, str]], list[str]]:
    """(image, mask) pairs in image order, and the images without a mask (reported, not fatal)."""
    index = index_masks(mask_root)
    pairs: list[tuple[str, str]] = []
    unmatched: list[str] = []
    for image_path in image_paths:
        image_path = os.fspath(image_path)
        candidates = index.get(Path(image_path).stem)
        if not candidates:
            unmatched.append(image_path)
            continue
        # An image folder that is also the mask root must not pair an image with itself.
        candidates = [c for c in candidates if _same_file_key(c) != _same_file_key(image_path)]
        if not candidates:
            unmatched.append(image_path)
            continue
        mask = candidates[0] if len(candidates) == 1 else _best_candidate(image_path, candidates)
        pairs.append((image_path, mask))
    return pairs, unmatched


def _same_file_key(path: str) -> str:
    return path if filesystem.is_remote(path) else os.path.realpath(path)


def _as_hw(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int | np.integer):
        size = (int(size), int(size))
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {size}")
    return height, width


def resize_mask(mask: np.ndarray, size) -> np.ndarray:
    """Nearest (pixel-centred) so a mask stays 0/1 and does not shift by half a pixel."""
    height, width = _as_hw(size)
    if mask.shape[:2] == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def read_mask(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [H, W] 0/1, any non-zero pixel is tumour; ``size`` is (height, width) or a side.

    Decoded like images (decode_bytes), so truncated files raise the same DecodeError and
    0/255, 0/1, 16-bit and colour masks all read alike. A ``scheme://`` path is read through
    tf.io.gfile (filesystem.py).
    """
    path = os.fspath(path)
    data = filesystem.read_bytes(path)  # regular files only, local or remote
    pixels = decode_bytes(data, channels=1, name=path)
    mask = (pixels[:, :, 0] > 0).astype(np.uint8)
    return mask if size is None else resize_mask(mask, size)


def mask_has_foreground(path: str | os.PathLike) -> bool:
    """For stratifying splits by tumour present / absent."""
    return bool(read_mask(path).any())


def remove_specks(mask: np.ndarray, min_fraction: float = 0.0, keep_largest: bool = False
                  ) -> np.ndarray:
    """A binary [H, W] mask without the connected pieces (8-connected) smaller than
    ``min_fraction`` of the slice, or with only its largest piece: a slice shows one tumour far
    more often than several, and small false positives cost a small tumour most of its Dice."""
    if mask.ndim != 2:
        raise ValueError(f"remove_specks takes one [H, W] mask, got shape {mask.shape}")
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction must be in [0, 1), got {min_fraction}")
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if not min_fraction and not keep_largest:
        return binary
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return binary
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = areas >= min_fraction * mask.size
    if keep_largest:
        keep &= areas == areas.max()
    return np.isin(labels, 1 + np.flatnonzero(keep)).astype(np.uint8)
