"""Subjects (patients) as the unit of a split.

Neighbouring slices of one patient correlate almost as well as copies do, so a split that only
keeps near-duplicates together still puts one patient on both sides and rewards remembering
patients. A subjects file (``path,subject``; hospital and research sets come with patient ids)
names the patient of each image; the split unit is then the union of a subject and every
near-duplicate group that touches it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from braintumor_tf.data import filesystem
from braintumor_tf.data.dicom import DICOM_EXTENSIONS, dicom_patient_id

SUBJECTS_FILE_NAME = "subjects.csv"
# data.subjects values that are not a path.
SUBJECTS_AUTO = "auto"
SUBJECTS_OFF = "none"


@dataclass(frozen=True)
class SubjectTable:
    """Subject of each image, keyed by the image's resolved absolute path."""

    csv_path: str
    subject_of: dict[str, str]
    rows: int
    rows_without_file: int

    def lookup(self, paths: Sequence[str]) -> list[str]:
        """The subject of each path; "" for a path the file does not list."""
        return [self.subject_of.get(_key(p), "") for p in paths]


@dataclass
class SubjectReport:
    """What the run summary says about subjects."""

    csv_path: str | None
    found_automatically: bool
    images: int = 0
    images_matched: int = 0
    images_unmatched: int = 0
    subjects: int = 0
    csv_rows: int = 0
    csv_rows_without_file: int = 0
    split_units: int = 0
    straddling_units: int = 0  # units with images in several splits (only with split folders)
    images_from_dicom_patient_id: int = 0  # subjects read from DICOM PatientID
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "notes"}


def _key(path) -> str:
    path = os.fspath(path)
    return path if filesystem.is_remote(path) else os.path.realpath(path)


def read_subjects(csv_path) -> SubjectTable:
    """Read ``path,subject`` rows (other columns ignored); paths are relative to the CSV's folder
    or absolute. A malformed file is one ``ValueError`` line naming the file and row.

    A ``scheme://`` file (gs://, ...) is read through tf.io.gfile; its relative rows are then
    remote paths beside it, matched to images by their text (object stores have no links)."""
    remote = filesystem.is_remote(csv_path)
    csv_path = csv_path if remote else Path(csv_path)
    if not (filesystem.is_file(csv_path) if remote else csv_path.is_file()):
        raise FileNotFoundError(f"subjects file not found: {csv_path}")
    base = filesystem.dirname(csv_path) if remote else csv_path.resolve().parent
    subject_of: dict[str, str] = {}
    rows = missing = 0
    try:
        with filesystem.open_text(csv_path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if not {"path", "subject"} <= columns:
                raise ValueError(f"{csv_path}: a subjects file needs the columns 'path' and 'subject', "
                                 f"found {sorted(columns) or 'none'}")
            for line, row in enumerate(reader, start=2):
                path, subject = (row.get("path") or "").strip(), (row.get("subject") or "").strip()
                if not path or not subject:
                    raise ValueError(f"{csv_path}, line {line}: empty path or subject")
                rows += 1
                if remote or filesystem.is_remote(path):
                    full = path if filesystem.is_remote(path) or os.path.isabs(path) \
                        else filesystem.join(base, path)
                else:
                    full = Path(path) if os.path.isabs(path) else base / path
                key = _key(full)
                if key in subject_of and subject_of[key] != subject:
                    raise ValueError(f"{csv_path}, line {line}: {path} is listed under two subjects "
                                     f"({subject_of[key]} and {subject})")
                subject_of[key] = subject
                if not filesystem.exists(full):
                    missing += 1
    except UnicodeDecodeError as error:
        raise ValueError(f"{csv_path}: not a UTF-8 text file ({error.reason})") from None
    except csv.Error as error:
        raise ValueError(f"{csv_path}: not a valid CSV file ({error})") from None
    if rows == 0:
        raise ValueError(f"{csv_path}: the subjects file has no rows")
    return SubjectTable(str(csv_path), subject_of, rows, missing)


def find_subjects_file(roots: Sequence[str | os.PathLike]) -> Path | str | None:
    """The nearest ``subjects.csv`` in a data root or one of its parents (first root wins); for a
    remote root the parents stop at its bucket."""
    for root in roots:
        if filesystem.is_remote(root):
            for candidate in (root, *filesystem.parent_folders(root)):
                path = filesystem.join(candidate, SUBJECTS_FILE_NAME)
                if filesystem.is_file(path):
                    return path
            continue
        folder = Path(os.path.abspath(root))
        for candidate in (folder, *folder.parents):
            path = candidate / SUBJECTS_FILE_NAME
            if path.is_file():
                return path
    return None


def resolve_subjects(setting: str | None, roots: Sequence[str | os.PathLike]
                     ) -> tuple[SubjectTable | None, bool]:
    """(table or None, found automatically) for a ``data.subjects`` value: a path, ``auto`` (look
    for subjects.csv beside the data) or ``none``."""
    if setting in (None, SUBJECTS_OFF):
        return None, False
    if setting == SUBJECTS_AUTO:
        found = find_subjects_file(roots)
        return (read_subjects(found), True) if found is not None else (None, False)
    return read_subjects(setting), False


def split_units(groups, subjects: Sequence[str]) -> np.ndarray:
    """Connected components of "same near-duplicate group" and "same subject": an image's copy in
    another subject's folder joins that subject. Unit ids are numbered by first member, so they
    depend only on the input order. An empty subject ("") links nothing."""
    groups = np.asarray(groups, np.int64).ravel()
    if len(subjects) != len(groups):
        raise ValueError(f"got {len(groups)} groups but {len(subjects)} subjects")
    n = len(groups)
    if n == 0:
        return np.zeros(0, np.int64)
    subject_ids = {name: n + k for k, name in enumerate(sorted({s for s in subjects if s}))}
    group_nodes = 2 * n + groups  # one node per group, after the image and subject nodes
    sources = [np.arange(n), np.array([k for k, s in enumerate(subjects) if s], np.int64)]
    targets = [group_nodes, np.array([subject_ids[s] for s in subjects if s], np.int64)]
    rows, cols = np.concatenate(sources), np.concatenate(targets)
    size = 2 * n + (int(groups.max()) + 1)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return renumber_by_first_member(labels[:n])


def renumber_by_first_member(labels) -> np.ndarray:
    """Component labels renumbered 0, 1, ... in order of each component's first member."""
    labels = np.asarray(labels).ravel()
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]


def subjects_for(paths: Sequence[str], setting: str | None, roots: Sequence[str | os.PathLike]
                 ) -> tuple[list[str] | None, SubjectReport]:
    """The subject of each image under a ``data.subjects`` setting, and the report for the run
    summary; ``None`` subjects when no file applies (the split then keeps near-duplicate groups)."""
    table, automatic = resolve_subjects(setting, roots)
    # DICOM files name their patient: used for every DICOM image the CSV does not list.
    from_dicom = [f"dicom:{pid}" if (pid := dicom_patient_id(p)) else "" for p in paths] \
        if setting not in (None, SUBJECTS_OFF) and any(_maybe_dicom(p) for p in paths) \
        else [""] * len(paths)
    if table is None and not any(from_dicom):
        return None, SubjectReport(csv_path=None, found_automatically=False, images=len(paths))
    listed = table.lookup(paths) if table is not None else [""] * len(paths)
    subjects = [csv or dicom for csv, dicom in zip(listed, from_dicom, strict=True)]
    matched = sum(bool(s) for s in subjects)
    report = SubjectReport(
        csv_path=table.csv_path if table is not None else None,
        found_automatically=automatic, images=len(paths),
        images_matched=matched, images_unmatched=len(paths) - matched,
        subjects=len({s for s in subjects if s}),
        csv_rows=table.rows if table is not None else 0,
        csv_rows_without_file=table.rows_without_file if table is not None else 0,
        images_from_dicom_patient_id=sum(bool(d) and not c for c, d in
                                         zip(listed, from_dicom, strict=True)))
    return subjects, report


def _maybe_dicom(path) -> bool:
    name = os.path.basename(os.fspath(path)).lower()
    return name.endswith(DICOM_EXTENSIONS) or "." not in name


def describe(report: SubjectReport) -> str:
    """One line for the log."""
    if report.csv_path is None and not report.images_from_dicom_patient_id:
        return "no subjects file: the split keeps near-duplicate groups together (not patients)"
    how = "found beside the data" if report.found_automatically else "given"
    source = (f"{report.csv_path} ({how})" if report.csv_path is not None
              else "the DICOM files' PatientID")
    line = (f"subjects from {source}: {report.images_matched} of {report.images} "
            f"images matched, {report.subjects} subjects")
    if report.csv_path is not None and report.images_from_dicom_patient_id:
        line += f" ({report.images_from_dicom_patient_id} from DICOM PatientID)"
    if report.images_unmatched:
        line += f"; {report.images_unmatched} unmatched images keep their near-duplicate group"
    if report.csv_rows_without_file:
        line += f"; {report.csv_rows_without_file} rows of the file name no existing file"
    return line
