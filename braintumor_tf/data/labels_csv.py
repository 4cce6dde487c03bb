"""Labelled images listed in a table (``path,class``) instead of folder names, and the "source"
of every image, the unit every classifier number is reported by.

A hospital's spreadsheet, or ../shared/data's ``pkdarabi_classes.csv``, names each slice's class
beside its path; the images stay where they are.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from braintumor_tf.data import filesystem
from braintumor_tf.data.discover import CLASS_NAMES, ImageRecord, canonical_class


def _rows(csv_path) -> list[dict]:
    remote = filesystem.is_remote(csv_path)
    with filesystem.open_text(csv_path, encoding="utf-8" if remote else "utf-8-sig",
                              newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "class"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"labels file {csv_path}: needs columns path and class, missing "
                             f"{', '.join(sorted(missing))} (has {', '.join(reader.fieldnames or [])})")
        return list(reader)


def _base_folder(csv_path, first_path: str):
    """The folder the table's relative paths start from: the CSV's own folder, or the nearest
    parent folder where its first path exists (tables kept beside a data set's subfolder often
    name paths from the data set's top, as ../shared/data's do)."""
    if filesystem.is_remote(csv_path):
        folder = filesystem.dirname(csv_path)
        while folder and not filesystem.exists(filesystem.join(folder, first_path)):
            parent = filesystem.dirname(folder)
            if parent == folder or "://" not in parent:
                return filesystem.dirname(csv_path)
            folder = parent
        return folder or filesystem.dirname(csv_path)
    folder = Path(csv_path).parent
    for candidate in (folder, *folder.parents, *folder.resolve().parents):
        if (candidate / first_path).exists():
            return candidate
    return folder


def records_from_labels(csv_path) -> list[ImageRecord]:
    """One ImageRecord per row; ``source`` is the deepest folder all the rows share, so a table
    of one data set is reported under that set's name (``source_name``).

    Raises ValueError naming the row for an unknown class, and FileNotFoundError for a missing
    table or a listed image that does not exist."""
    remote = filesystem.is_remote(csv_path)
    if not (filesystem.is_file(csv_path) if remote else Path(csv_path).is_file()):
        raise FileNotFoundError(f"labels file not found: {csv_path}")
    rows = _rows(csv_path)
    if not rows:
        raise ValueError(f"labels file {csv_path} lists no images")
    base = _base_folder(csv_path, rows[0]["path"])
    records, missing = [], []
    for line, row in enumerate(rows, start=2):
        name = canonical_class(row["class"] or "")
        if name is None:
            raise ValueError(f"labels file {csv_path}, line {line}: unknown class {row['class']!r}; "
                             f"use one of {', '.join(CLASS_NAMES)} (or a synonym such as no_tumor)")
        path = row["path"]
        if not (filesystem.is_remote(path) or os.path.isabs(path)):
            path = filesystem.join(base, path) if remote else str(Path(base) / path)
        if not (filesystem.exists(path) if filesystem.is_remote(path) else os.path.exists(path)):
            missing.append(path)
            continue
        records.append(ImageRecord(path=path, label=CLASS_NAMES.index(name), source=""))
    if missing:
        raise FileNotFoundError(f"labels file {csv_path}: {len(missing)} listed image(s) not found, "
                                f"e.g. {missing[0]} (paths are read relative to {base})")
    common = os.path.commonpath([os.path.dirname(r.path) for r in records]) if not remote else \
        os.path.commonprefix([filesystem.dirname(r.path) for r in records]).rstrip("/")
    return [ImageRecord(path=r.path, label=r.label, source=common) for r in records]


def source_name(record: ImageRecord) -> str:
    """The top folder under the root the image was found in (``nickparvar`` under
    ``data/classification``), or the root's own name when images sit in class folders directly
    below it or came from a labels table."""
    root = os.fspath(record.source).rstrip("/")
    if not root:
        return ""
    relative = (filesystem.relative_parts(record.path, root) if filesystem.is_remote(root)
                else _relative_parts(record.path, root))
    if relative and len(relative) >= 3 and canonical_class(relative[0]) is None:
        return relative[0]
    return os.path.basename(root) or root


def _relative_parts(path: str, root: str) -> tuple[str, ...] | None:
    try:
        return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(root))).parts
    except ValueError:
        return None


def source_names(records: Sequence[ImageRecord]) -> list[str]:
    return [source_name(record) for record in records]
