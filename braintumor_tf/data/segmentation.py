"""Where segmentation images and their targets come from: COCO split folders, mask folders, or both.

Training and evaluation list images the same way, so a model scored by ``evaluate`` sees exactly
the images (and truth) that training would have used. No TensorFlow here, like coco.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from braintumor_tf.config import SEGMENTATION_TARGETS
from braintumor_tf.data import filesystem
from braintumor_tf.data.coco import CocoSplit, find_coco_splits, load_coco_split
from braintumor_tf.data.coco_masks import coco_mask_fn
from braintumor_tf.data.discover import discover_images
from braintumor_tf.data.masks import mask_has_foreground, pair_images_with_masks, read_mask, resize_mask
from braintumor_tf.data.phantoms import write_phantom_dataset
from braintumor_tf.log import log

# Folder names of published splits (Roboflow writes train/valid/test) -> our split names.
SPLIT_FOLDER_NAMES = {"train": "train", "training": "train", "valid": "val", "val": "val",
                      "validation": "val", "test": "test", "testing": "test"}


@dataclass
class SegmentationSource:
    """Images in a fixed order with whatever truth exists for them.

    ``folder_splits[i]`` names the split folder image i sits in (``None`` outside one);
    ``mask_paths`` maps an image to its mask file when a mask folder was given.
    """

    image_paths: list[str]
    folder_splits: list[str | None]
    coco_splits: list[CocoSplit] = field(default_factory=list)
    mask_paths: dict[str, str] = field(default_factory=dict)
    without_mask: list[str] = field(default_factory=list)
    mask_root: str | None = None

    @property
    def has_annotations(self) -> bool:
        return bool(self.coco_splits)

    @property
    def has_masks(self) -> bool:
        return self.mask_root is not None

    @property
    def has_split_folders(self) -> bool:
        """True when every image sits in a train/val/test folder and train and val both occur."""
        named = set(self.folder_splits)
        return None not in named and {"train", "val"} <= named

    def available_targets(self) -> list[str]:
        return [name for name, ok in (("annotations", self.has_annotations),
                                      ("masks", self.has_masks)) if ok]

    def images_with(self, targets: str) -> list[str]:
        """Images that have a truth of this kind (an annotated split's unannotated image has an
        empty one; an image without a mask file has none)."""
        self._require(targets)
        if targets == "annotations":
            return list(self.image_paths)
        return [p for p in self.image_paths if p in self.mask_paths]

    def mask_reader(self, targets: str) -> Callable[[str], np.ndarray]:
        """image path -> uint8 [H, W] 0/1 mask at the stored size."""
        self._require(targets)
        if targets == "annotations":
            return coco_mask_fn(self.coco_splits)
        paths = self.mask_paths

        def read(image_path) -> np.ndarray:
            if isinstance(image_path, bytes | np.bytes_):
                image_path = os.fsdecode(bytes(image_path))
            return read_mask(paths[os.fspath(image_path)])

        return read

    def dataset_masks(self, image_paths: Sequence[str], targets: str):
        """What ``segmentation_dataset`` takes as ``masks``: files when there are files."""
        if targets == "masks":
            self._require(targets)
            return [self.mask_paths[p] for p in image_paths]
        return self.mask_reader(targets)

    def has_tumour(self, image_paths: Sequence[str], targets: str) -> list[bool]:
        """For stratifying splits by tumour present / absent."""
        if targets == "annotations":
            self._require(targets)
            by_path = {}
            for split in self.coco_splits:
                by_path.update(split._by_path)
            return [by_path[os.path.abspath(p)].has_annotation for p in image_paths]
        return [mask_has_foreground(self.mask_paths[p]) for p in image_paths]

    def _require(self, targets: str) -> None:
        if targets not in SEGMENTATION_TARGETS:
            raise ValueError(f"targets must be one of {SEGMENTATION_TARGETS}, got {targets!r}")
        if targets == "annotations" and not self.has_annotations:
            raise ValueError("targets 'annotations' need COCO split folders (images + "
                             "_annotations.coco.json); give a mask folder and use targets 'masks'")
        if targets == "masks" and not self.has_masks:
            raise ValueError("targets 'masks' need a mask folder (segmentation.mask_root / --masks)")


def _split_of(path: Path | str, root: Path | str) -> str | None:
    """The split named by the nearest enclosing folder below ``root`` (or ``root`` itself)."""
    if filesystem.is_remote(root):
        parts = (filesystem.relative_parts(path, root) or ("",))[:-1]
        for part in (*reversed(parts), filesystem.basename(root)):
            if part.lower() in SPLIT_FOLDER_NAMES:
                return SPLIT_FOLDER_NAMES[part.lower()]
        return None
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError:
        parts = ()
    for part in (*reversed(parts), root.name):
        if part.lower() in SPLIT_FOLDER_NAMES:
            return SPLIT_FOLDER_NAMES[part.lower()]
    return None


def find_segmentation_images(root: str | os.PathLike,
                             mask_root: str | os.PathLike | None = None) -> SegmentationSource:
    """Every image of the COCO split folder(s) at or below ``root``, or, when there is no COCO
    file, every image under ``root``; paired with masks under ``mask_root`` by file stem.
    Either may be ``scheme://`` (gs://, ...): image paths are then ``str`` URLs."""
    remote = filesystem.is_remote(root)
    root_path = root if remote else Path(root)
    if not (filesystem.is_dir(root) if remote else root_path.is_dir()):
        raise FileNotFoundError(f"data folder not found: {root}")
    coco_splits: list[CocoSplit] = []
    try:
        folders = find_coco_splits(root_path)
    except ValueError:
        folders = []
    if folders:
        coco_splits = [load_coco_split(folder) for folder in folders]
        image_paths = [record.image_path for split in coco_splits
                       for record in sorted(split.records, key=lambda r: r.file_name)]
    else:
        image_paths = [record.path for record in discover_images(root_path, require_label=False)]
    folder_splits = [_split_of(p if remote else Path(p), root_path) for p in image_paths]
    source = SegmentationSource(image_paths, folder_splits, coco_splits)
    if mask_root is not None:
        pairs, unmatched = pair_images_with_masks(image_paths, mask_root)
        source.mask_paths = dict(pairs)
        source.without_mask = unmatched
        source.mask_root = os.fspath(mask_root)
        if unmatched:
            log(f"{len(unmatched)} of {len(image_paths)} images have no mask in {mask_root}: "
                + ", ".join(os.path.basename(p) for p in unmatched[:5])
                + (" ..." if len(unmatched) > 5 else ""))
        if not pairs:
            raise ValueError(f"no image under {root} has a mask in {mask_root} (masks are matched "
                             "by file stem)")
    return source


def mask_at_size(reader: Callable[[str], np.ndarray], image_path: str, size: int) -> np.ndarray:
    """Truth at the model's resolution (nearest, so it stays 0/1), as the training data sees it."""
    return resize_mask(np.asarray(reader(image_path), np.uint8), size)


def training_source(config, run_dir: Path) -> tuple[SegmentationSource, str]:
    """The images and the target kind to train on; ``data.root: null`` means phantoms with masks
    (generated under ``run_dir``, the top run directory of a staged run)."""
    seg = config.segmentation
    if config.data.root is None:
        root, masks = run_dir / "data" / "phantoms", run_dir / "data" / "phantom_masks"
        if not root.exists():
            log(f"no data.root given: generating the built-in phantom data set (with masks) in {root}")
        write_phantom_dataset(root, config.data.phantom_images_per_class,
                              config.data.phantom_image_size, config.data.phantom_seed,
                              masks_root=masks)
        return find_segmentation_images(root, masks), "masks"
    source = find_segmentation_images(config.data.root, seg.mask_root)
    return source, seg.targets
