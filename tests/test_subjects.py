"""Patient-level splits: a subject (with every copy of its images) never straddles train/val/test."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from support import base_image, write_image

from braintumor_tf.commands.audit import audit
from braintumor_tf.config import load_config
from braintumor_tf.data import splits
from braintumor_tf.data import subjects as subj
from braintumor_tf.data.discover import CLASS_NAMES, discover_images
from braintumor_tf.data.run_split import split_and_write_manifest


def write_subject_set(root, subjects=24, slices=5):
    """``subjects`` patients, each with ``slices`` distinct (not near-duplicate) slices of one class,
    under root/data/<class>/, and root/subjects.csv naming them by paths relative to root."""
    rows = []
    for s in range(subjects):
        label = CLASS_NAMES[s % 4]
        for k in range(slices):
            path = write_image(root / "data" / label / f"p{s:02d}_{k}.png", base_image(100 * s + k))
            rows.append((path.relative_to(root).as_posix(), f"P{s:02d}"))
    write_csv(root / "subjects.csv", [("path", "subject", "basis"), *[(p, s, "patient") for p, s in rows]])
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def straddling(names, splits) -> int:
    seen: dict[str, set] = {}
    for name, split in zip(names, splits, strict=True):
        if name:
            seen.setdefault(name, set()).add(str(split))
    return sum(len(v) > 1 for v in seen.values())


def test_subject_never_straddles_while_groups_alone_would(tmp_path):
    write_subject_set(tmp_path)
    records = discover_images(tmp_path / "data")
    table = subj.read_subjects(tmp_path / "subjects.csv")
    names = table.lookup([r.path for r in records])
    assert all(names) and len(set(names)) == 24
    by_subject = splits.make_split(records, 0.25, 0.25, seed=0, subjects=names, progress=False)
    assert straddling(by_subject.subjects, by_subject.splits) == 0
    assert set(by_subject.splits) == {"train", "val", "test"}
    # Without subjects each slice is its own group: patients land on several sides.
    by_group = splits.make_split(records, 0.25, 0.25, seed=0, progress=False)
    assert straddling(names, by_group.splits) > 5


def test_copy_in_another_subject_joins_it_and_unlisted_keep_their_group():
    groups = np.array([0, 1, 2, 2, 3, 4])  # image 3 is a copy of image 2
    names = ["A", "A", "A", "B", "", ""]  # images 4 and 5 are not in the file
    units = subj.split_units(groups, names)
    assert units.tolist() == [0, 0, 0, 0, 1, 2]
    assert subj.split_units(np.array([0, 0, 1]), ["", "", ""]).tolist() == [0, 0, 1]


def test_csv_paths_relative_absolute_and_missing_files_counted(tmp_path):
    image = write_image(tmp_path / "imgs" / "a.png", base_image(1))
    other = write_image(tmp_path / "b.png", base_image(2))
    write_csv(tmp_path / "imgs" / "s.csv", [("subject", "path", "extra"), ("S1", "a.png", "x"),
                                            ("S2", str(other), "y"), ("S3", "gone.png", "z")])
    table = subj.read_subjects(tmp_path / "imgs" / "s.csv")
    assert table.lookup([str(image), str(other), str(tmp_path / "c.png")]) == ["S1", "S2", ""]
    assert table.rows == 3 and table.rows_without_file == 1


@pytest.mark.parametrize("text,message", [
    ("file,patient\na.png,S1\n", "needs the columns 'path' and 'subject'"),
    ("path,subject\na.png,\n", "line 2: empty path or subject"),
    ("path,subject\na.png,S1\na.png,S2\n", "listed under two subjects"),
    ("path,subject\n", "has no rows"),
    (b"path,subject\n\xff\xfe.png,S1\n", "not a UTF-8 text file"),
])
def test_malformed_csv_is_one_line_error(tmp_path, text, message):
    path = tmp_path / "subjects.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message) as error:
        subj.read_subjects(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_found_in_a_parent_of_the_data_root_and_can_be_turned_off(tmp_path):
    write_subject_set(tmp_path, subjects=4, slices=2)
    deeper = tmp_path / "data" / "glioma"
    assert subj.find_subjects_file([deeper]) == tmp_path / "subjects.csv"
    table, automatic = subj.resolve_subjects("auto", [deeper])
    assert table is not None and automatic
    assert subj.resolve_subjects("none", [deeper]) == (None, False)
    with pytest.raises(FileNotFoundError, match="subjects file not found"):
        subj.resolve_subjects(str(tmp_path / "nope.csv"), [deeper])


def test_run_split_writes_subject_column_and_report(tmp_path):
    rows = write_subject_set(tmp_path, subjects=16, slices=3)
    write_image(tmp_path / "data" / "glioma" / "unlisted.png", base_image(9999))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(None, [f"data.root={tmp_path / 'data'}", "data.val_fraction=0.25",
                                "data.test_fraction=0.25"])
    records = discover_images(tmp_path / "data")
    manifest = split_and_write_manifest(config, run_dir, records, [tmp_path / "data"])
    assert straddling([r["subject"] for r in manifest], [r["split"] for r in manifest]) == 0
    assert sum(1 for r in manifest if r["subject"] == "") == 1
    report = json.loads((run_dir / "subjects.json").read_text())
    assert report["found_automatically"] and report["images_unmatched"] == 1
    assert report["images_matched"] == len(rows) and report["subjects"] == 16
    assert report["split_units"] == 17 and report["csv_rows_without_file"] == 0


def test_audit_reports_subjects_and_test_in_training_overlap(tmp_path):
    # One data set with Training/Testing; patients 0-3 have slices on both sides.
    rows = [("path", "subject")]
    for s in range(8):
        for k in range(3):
            side = "Testing" if (s < 4 and k == 0) or s >= 6 else "Training"
            path = write_image(tmp_path / "set" / side / CLASS_NAMES[s % 4] / f"{s}_{k}.png",
                               base_image(50 * s + k))
            rows.append((path.relative_to(tmp_path).as_posix(), f"P{s}"))
    write_csv(tmp_path / "subjects.csv", rows)
    summary = audit([str(tmp_path / "set")], tmp_path / "out", progress=False)
    stats = summary["subjects"]
    assert stats["subjects"] == 8 and stats["per_class"]["glioma"] == 2
    assert stats["test_in_training"]["set"] == {"test_subjects": 6, "also_in_training": 4}
    assert "also in training" in (tmp_path / "out" / "summary.md").read_text()
    none = audit([str(tmp_path / "set")], tmp_path / "out2", progress=False, subjects="none")
    assert none["subjects"]["file"] is None and none["subjects"]["subjects"] == 24


def test_a_cut_short_manifest_is_refused_on_reuse(tmp_path):
    from braintumor_tf.data.run_split import reuse_split

    write_subject_set(tmp_path, subjects=8, slices=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(None, [f"data.root={tmp_path / 'data'}", "data.val_fraction=0.25",
                                "data.test_fraction=0.25"])
    written = split_and_write_manifest(config, run_dir, discover_images(tmp_path / "data"),
                                       [tmp_path / "data"])
    assert reuse_split(run_dir) == written
    manifest = run_dir / "split_manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[: len(lines) // 2]))  # a resumed run would train on half
    with pytest.raises(ValueError, match="cut short or edited"):
        reuse_split(run_dir)
