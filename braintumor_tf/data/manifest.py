"""The split manifest: one CSV row per image (path, label, group, split, subject), so a run, a
resumed run, ``evaluate --split`` and ``export --run`` all see exactly the same split."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.discover import CLASS_NAMES, ImageRecord

SPLIT_NAMES = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "class_name", "group", "split", "subject", "source")
# Manifests written before subjects existed have no subject column; they still read.
_REQUIRED_MANIFEST_COLUMNS = ("path", "label", "class_name", "group", "split")


def write_manifest(path, records: Sequence[ImageRecord], groups, splits,
                   class_names: Sequence[str] = CLASS_NAMES, subjects: Sequence[str] | None = None,
                   sources: Sequence[str] | None = None) -> None:
    """One row per image so a run can be repeated on exactly the same split.

    ``class_names`` names the labels in the class_name column (SEGMENTATION_LABELS for
    segmentation records); ``subjects`` fills the subject column ("" where none is known);
    ``sources`` the source column (default: labels_csv.source_name of each record)."""
    from braintumor_tf.data.labels_csv import source_names

    groups = np.asarray(groups).ravel()
    splits = np.asarray(splits).ravel()
    subjects = [""] * len(records) if subjects is None else list(subjects)
    sources = source_names(records) if sources is None else list(sources)
    if not len(records) == len(groups) == len(splits) == len(subjects) == len(sources):
        raise ValueError("records, groups, splits, subjects and sources must have the same length")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open_csv(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for rec, g, s, subject, source in zip(records, groups, splits, subjects, sources,
                                              strict=True):
            name = class_names[rec.label] if 0 <= rec.label < len(class_names) else ""
            writer.writerow([rec.path, rec.label, name, int(g), str(s), subject, source])


def read_manifest(path) -> list[dict]:
    """Rows as dicts with int label and group (subject "" when the manifest has none); a
    ``scheme://`` manifest (one given as input) is read through tf.io.gfile."""
    with _open_for_reading(path) as f:
        reader = csv.DictReader(f)
        missing = set(_REQUIRED_MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a split manifest, missing columns {sorted(missing)}")
        rows = []
        for row in reader:
            if row["split"] not in SPLIT_NAMES:
                raise ValueError(f"{path}: unknown split {row['split']!r} for {row['path']}")
            rows.append({
                "path": row["path"],
                "label": int(row["label"]),
                "class_name": row["class_name"],
                "group": int(row["group"]),
                "split": row["split"],
                "subject": row.get("subject") or "",
                "source": row.get("source") or "",
            })
    return rows


def _open_for_reading(path):
    """open_csv's reading for a remote file: UTF-8, rows kept as written, any file name kept."""
    if filesystem.is_remote(path):
        return filesystem.open_text(path, encoding="utf-8", errors="surrogateescape", newline="")
    return open_csv(path)


def manifest_split(path, split: str | None = None) -> list[dict]:
    """The rows of one split (every row when ``split`` is None), paths resolved: as written when
    they exist from here, else relative to the manifest's folder (training may have been started
    elsewhere). Remote rows (``scheme://``) are kept as written; a remote manifest's relative rows
    resolve against its remote folder."""
    remote = filesystem.is_remote(path)
    path = path if remote else Path(path)
    rows = read_manifest(path)
    if split is not None:
        known = sorted({row["split"] for row in rows})
        rows = [row for row in rows if row["split"] == split]
        if not rows:
            raise ValueError(f"no rows with split {split!r} in {path}; it has {', '.join(known)}")
    for row in rows:
        if filesystem.is_remote(row["path"]):
            continue
        if remote:
            image = row["path"]
            if not os.path.isabs(image) and not os.path.exists(image):
                beside = filesystem.join(filesystem.dirname(path), image)
                if filesystem.exists(beside):
                    row["path"] = beside
            continue
        image = Path(row["path"])
        if not image.is_absolute() and not image.exists() and (path.parent / image).exists():
            row["path"] = str(path.parent / image)
    return rows
