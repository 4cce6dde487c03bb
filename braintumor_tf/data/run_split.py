"""Split a run's images once, by subject where subjects are known, and write the manifest.

Shared by classification and segmentation so both split the same way; the manifest (and
``subjects.json``) are what a resumed run, ``evaluate --split`` and ``export --run`` read back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.config import Config
from braintumor_tf.data.decode import write_bad_file_report
from braintumor_tf.data.discover import CLASS_NAMES, ImageRecord, odd_entries
from braintumor_tf.data.manifest import read_manifest, write_manifest
from braintumor_tf.data.splits import make_split
from braintumor_tf.data.subjects import describe, subjects_for
from braintumor_tf.log import log, logger

SUBJECTS_REPORT = "subjects.json"
MANIFEST_NAME = "split_manifest.csv"
# Row count and hash of the manifest as written, checked whenever the run reuses it.
SPLIT_RECORD = "split.json"


def split_and_write_manifest(config: Config, run_dir: Path, records: Sequence[ImageRecord],
                             roots: Sequence[str | Path], class_names=CLASS_NAMES,
                             folder_splits: dict[str, str] | None = None) -> list[dict]:
    """Split ``records`` (whole subjects and near-duplicate groups per side) and write
    ``split_manifest.csv``, ``bad_files.csv`` and ``subjects.json``; ``folder_splits`` (image ->
    split) keeps a data set's own folders instead."""
    result, report = split_by_subject(config, run_dir, records, roots)
    splits = result.splits
    if folder_splits is not None:
        splits = np.asarray([folder_splits[record.path] for record in result.records])
        straddling = units_in_several_splits(result.units, splits)
        log(f"using the data's own split folders; {straddling} split unit(s) (subjects or duplicate "
            "groups) have images in more than one of them")
    report.split_units = int(len(np.unique(result.units)))
    report.straddling_units = units_in_several_splits(result.units, splits)
    manifest_path = run_dir / MANIFEST_NAME
    # A manifest already there: reuse_split found the split's JSON files damaged, and the split
    # is made again to rebuild them; it must be this run's split byte for byte.
    if manifest_path.exists():
        written = manifest_path.with_name(MANIFEST_NAME + ".rebuilt")
        write_manifest(written, result.records, result.groups, splits,
                       class_names=class_names, subjects=result.subjects)
        same = written.read_bytes() == manifest_path.read_bytes()
        written.unlink()
        damaged = ", ".join(str(run_dir / name) for name in damaged_split_files(run_dir))
        if not same:
            raise ValueError(
                f"{damaged or run_dir / SPLIT_RECORD} damaged, and splitting the data again does "
                f"not give this run's {MANIFEST_NAME} (the data or data.* settings changed): "
                "restore the file from a copy, or train into a new --out")
        logger.warning(f"{damaged or 'the split files'} rebuilt: splitting the data again gave "
                       f"this run's {MANIFEST_NAME} byte for byte")
    skipped = [*result.bad, *odd_entries(roots)]
    write_bad_file_report(skipped, run_dir / "bad_files.csv")
    if skipped:
        log(f"skipped {len(skipped)} unreadable files, listed in {run_dir / 'bad_files.csv'}")
    (run_dir / SUBJECTS_REPORT).write_text(json.dumps(report.as_dict(), indent=2))
    if not manifest_path.exists():
        write_manifest(manifest_path, result.records, result.groups, splits,
                       class_names=class_names, subjects=result.subjects)
    rows = read_manifest(manifest_path)
    (run_dir / SPLIT_RECORD).write_text(json.dumps(
        {"manifest": MANIFEST_NAME, "rows": len(rows), "sha256": _digest(manifest_path)}, indent=2))
    return rows


def split_by_subject(config: Config, run_dir: Path, records: Sequence[ImageRecord],
                     roots: Sequence[str | Path]):
    """(SplitResult, SubjectReport): subjects looked up as data.subjects says, then the units
    (subject joined with its near-duplicate groups) split; also what cross-validation folds."""
    data = config.data
    subjects, report = subjects_for([r.path for r in records], data.subjects, roots)
    log(describe(report))
    result = make_split(records, data.val_fraction, data.test_fraction, data.split_seed,
                        group_aware=data.group_aware, threshold=data.group_threshold,
                        cache_dir=Path(run_dir) / "cache", subjects=subjects)
    return result, report


def reuse_split(run_dir: Path) -> list[dict] | None:
    """The rows of a run's existing split (None when it has none), refused when the manifest is
    not the one the split wrote: a truncated or edited file would silently train on other data."""
    manifest_path = Path(run_dir) / MANIFEST_NAME
    if not manifest_path.exists():
        return None
    damaged = damaged_split_files(run_dir)
    if damaged:  # derived from the data: split_and_write_manifest makes them again, checked
        logger.warning(f"{', '.join(str(Path(run_dir) / name) for name in damaged)} damaged "
                       f"(empty, cut short or not JSON); splitting the data again to rebuild "
                       f"{'them' if len(damaged) > 1 else 'it'}")
        return None
    rows = read_manifest(manifest_path)
    record_path = Path(run_dir) / SPLIT_RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("rows") != len(rows) or record.get("sha256") != _digest(manifest_path):
            raise ValueError(
                f"{manifest_path} has {len(rows)} rows and is not the manifest this run's split "
                f"wrote ({record.get('rows')} rows): it was cut short or edited. Restore it, or "
                f"delete it and {SPLIT_RECORD} to split again")
    log(f"reusing split from {manifest_path} ({len(rows)} images)")
    return rows


def damaged_split_files(run_dir: Path) -> list[str]:
    """Which of the split's JSON records (``split.json``, ``subjects.json``) are there but do not
    read as a JSON object: a kill or a full disk while they were written."""
    damaged = []
    for name in (SPLIT_RECORD, SUBJECTS_REPORT):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            damaged.append(name)
    return damaged


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def subjects_summary(run_dir: Path) -> dict | None:
    """What summary.json says about subjects (``subjects.json`` of the split), if recorded."""
    path = Path(run_dir) / SUBJECTS_REPORT
    return json.loads(path.read_text()) if path.exists() else None


def units_in_several_splits(units, splits) -> int:
    seen: dict[int, set] = {}
    for unit, split in zip(np.asarray(units).tolist(), np.asarray(splits).tolist(), strict=True):
        seen.setdefault(unit, set()).add(split)
    return sum(len(names) > 1 for names in seen.values())


def rows_of_split(rows, name: str, max_per_group: int | None = None, seed: int = 0,
                  sources=()) -> list[dict]:
    """The manifest rows of one split; ``max_per_group`` caps the copies of each duplicate group;
    ``sources`` (when given) keeps only rows of those sources (data.train_sources)."""
    chosen = [row for row in rows if row["split"] == name]
    if sources:
        known = {row.get("source", "") for row in rows}
        unknown = sorted(set(sources) - known)
        if unknown:
            raise ValueError(f"data.train_sources names {', '.join(unknown)}, which no image of "
                             f"the split comes from; sources here: {', '.join(sorted(known))}")
        chosen = [row for row in chosen if row.get("source", "") in set(sources)]
    return cap_per_group(chosen, max_per_group, seed) if max_per_group is not None else chosen


def cap_per_group(rows, max_per_group: int, seed: int = 0):
    """At most ``max_per_group`` copies of each duplicate group, chosen at random but reproducibly.

    Groups of dozens of copies of one slice otherwise dominate an epoch; capping spends the
    compute on distinct slices instead.
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    taken: dict[str, int] = {}
    keep = []
    for index in order:
        group = str(rows[index]["group"])
        if taken.get(group, 0) < max_per_group:
            taken[group] = taken.get(group, 0) + 1
            keep.append(index)
    return [rows[index] for index in sorted(keep)]
