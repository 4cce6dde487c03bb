"""Train/val/test splits that keep whole units on one side: subjects joined with their
near-duplicate groups (or the groups alone when no subject is known).

Splitting image by image puts copies and neighbouring slices of one patient on both sides and
inflates test scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from braintumor_tf.data.discover import ImageRecord
from braintumor_tf.data.duplicates import cached_groups
from braintumor_tf.data.manifest import SPLIT_NAMES
from braintumor_tf.data.signatures import cached_signatures
from braintumor_tf.data.subjects import split_units

# Segmentation images are stratified by whether they show a tumour at all.
SEGMENTATION_LABELS = ("empty", "tumour")


def _check_split_args(labels, groups, val_fraction: float, test_fraction: float):
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be < 1 to leave training data")
    labels = np.asarray(labels, dtype=np.int64).ravel()
    groups = np.asarray(groups, dtype=np.int64).ravel()
    if labels.shape != groups.shape:
        raise ValueError(f"labels and groups differ in length: {len(labels)} vs {len(groups)}")
    return labels, groups


def group_split(
    labels, groups, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Whole groups to one split, stratified by each group's majority label.

    Per class, groups are visited largest first (random order among equal sizes) and each
    goes to the split furthest below its image target, so every split ends close to the
    requested fraction of every class.
    """
    labels, groups = _check_split_args(labels, groups, val_fraction, test_fraction)
    out = np.empty(len(labels), dtype="<U5")
    if len(labels) == 0:
        return out
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    out[:] = np.asarray(SPLIT_NAMES)[_assign_groups(labels, groups, fractions, seed)]
    return out


def group_folds(labels, groups, folds: int, seed: int) -> np.ndarray:
    """Fold index (0..folds-1) of each image for patient-level K-fold cross-validation: whole
    groups (subjects) per fold, stratified by each group's majority label like ``group_split``."""
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    labels, groups = _check_split_args(labels, groups, 0.0, 0.0)
    if len(labels) == 0:
        return np.zeros(0, np.int64)
    if len(np.unique(groups)) < folds:
        raise ValueError(f"{folds} folds need at least {folds} subjects or duplicate groups, "
                         f"found {len(np.unique(groups))}")
    return _assign_groups(labels, groups, np.full(int(folds), 1.0 / folds), seed)


def _assign_groups(labels: np.ndarray, groups: np.ndarray, fractions: np.ndarray,
                   seed: int) -> np.ndarray:
    """Index into ``fractions`` for each image, whole groups at a time (see group_split)."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse)
    # Majority label per group, ties to the smaller label.
    lab_vals, lab_idx = np.unique(labels, return_inverse=True)
    table = np.zeros((len(uniq), len(lab_vals)), np.int64)
    np.add.at(table, (inverse, lab_idx), 1)
    group_class = table.argmax(axis=1)
    rng = np.random.default_rng(seed)
    group_part = np.zeros(len(uniq), np.int64)
    for c in range(len(lab_vals)):
        members = np.flatnonzero(group_class == c)
        members = members[rng.permutation(len(members))]
        members = members[np.argsort(-sizes[members], kind="stable")]
        target = fractions * sizes[members].sum()
        filled = np.zeros(len(fractions))
        for g in members:
            deficit = np.where(fractions > 0, target - filled, -np.inf)
            part = int(np.argmax(deficit))
            group_part[g] = part
            filled[part] += sizes[g]
    return group_part[inverse]


def random_split(
    labels, groups, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Image-by-image stratified split that ignores groups: the leaky baseline."""
    labels, groups = _check_split_args(labels, groups, val_fraction, test_fraction)
    return group_split(labels, np.arange(len(labels)), val_fraction, test_fraction, seed)


def segmentation_records(image_paths: Sequence[str], has_tumour: Sequence[bool],
                         source: str = "") -> list[ImageRecord]:
    """ImageRecords for make_split: label 1 when the mask is non-empty, so train/val/test get
    the same share of tumour-free slices (write the manifest with SEGMENTATION_LABELS)."""
    if len(image_paths) != len(has_tumour):
        raise ValueError(f"got {len(image_paths)} images but {len(has_tumour)} tumour flags")
    return [ImageRecord(path=os.fspath(p), label=int(bool(t)), source=source)
            for p, t in zip(image_paths, has_tumour, strict=True)]


@dataclass(frozen=True)
class SplitResult:
    records: list[ImageRecord]  # readable images only
    groups: np.ndarray  # near-duplicate group of each record
    splits: np.ndarray
    bad: list[dict]
    subjects: list[str]  # subject of each record, "" where none is known
    units: np.ndarray  # what was split whole: subject joined with near-duplicate group


def make_split(
    records: Sequence[ImageRecord],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group_aware: bool = True,
    threshold: float = 0.85,
    cache_dir=None,
    workers: int = 2,
    progress: bool = True,
    subjects: Sequence[str] | None = None,
) -> SplitResult:
    """Signatures are computed even when not group-aware: they double as the bad-file check.

    ``subjects`` (one per record, "" for unknown) makes the split patient-level: whole subjects,
    with every near-duplicate group touching them, go to one side. Without subjects the units are
    the near-duplicate groups."""
    records = list(records)
    _check_split_args([], [], val_fraction, test_fraction)
    if subjects is not None and len(subjects) != len(records):
        raise ValueError(f"got {len(records)} records but {len(subjects)} subjects")
    sigs, bad, ok_index = cached_signatures(
        [r.path for r in records], cache_dir, workers, progress)
    kept = [records[k] for k in ok_index]
    kept_subjects = [""] * len(kept) if subjects is None else [subjects[k] for k in ok_index]
    labels = np.array([r.label for r in kept], np.int64)
    if group_aware:
        groups = cached_groups(sigs, [r.path for r in kept], threshold, cache_dir)
        units = split_units(groups, kept_subjects) if any(kept_subjects) else groups
        splits = group_split(labels, units, val_fraction, test_fraction, seed)
    else:
        groups = np.arange(len(kept), dtype=np.int64)
        units = groups
        splits = random_split(labels, groups, val_fraction, test_fraction, seed)
    return SplitResult(records=kept, groups=groups, splits=splits, bad=bad, subjects=kept_subjects,
                       units=units)
