"""Shared by both tasks' predictions: reading errors as one line, unique output names."""

from __future__ import annotations

from pathlib import Path

from braintumor_tf.data import filesystem
from braintumor_tf.data.decode import error_text


def file_stem(path) -> str:
    """The file name without its suffix, for naming outputs; a ``scheme://`` path is taken apart
    as a URL (on Windows a Path would read ``gs:`` as a drive)."""
    if filesystem.is_remote(path):
        return Path(filesystem.basename(path)).stem
    return Path(path).stem


def unique_name(stem: str, used: set[str]) -> str:
    """Same file name in different folders must not overwrite each other's outputs."""
    while stem in used:
        stem += "_"
    used.add(stem)
    return stem


def default_masks_dir(json_path=None, csv_path=None) -> Path:
    """Beside the table (``<table stem>_masks/``) so tables and masks travel together."""
    table = json_path or csv_path
    if table is None:
        return Path("masks")
    return Path(table).parent / f"{Path(table).stem}_masks"


__all__ = ["default_masks_dir", "error_text", "file_stem", "unique_name"]
