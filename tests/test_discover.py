import os

import pytest

from braintumor_tf.data.discover import (
    CLASS_NAMES,
    ImageRecord,
    class_counts,
    class_for_path,
    discover_images,
    discover_images_with_report,
    odd_entries,
)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def label_of(records, path):
    return {r.path: r.label for r in records}[str(path)]


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("glioma", "glioma"),
        ("Glioma_Tumor", "glioma"),
        ("Glioma Tumor", "glioma"),
        ("MENINGIOMA_TUMOR", "meningioma"),
        ("pituitary-tumor", "pituitary"),
        ("no", "notumor"),
        ("normal", "notumor"),
        ("No-Tumor", "notumor"),
        ("notumor", "notumor"),
        ("tumor", None),
        ("Training", None),
    ],
)
def test_synonyms(tmp_path, folder, expected):
    f = tmp_path / folder / "a.png"
    assert class_for_path(f, tmp_path) == expected


def test_root_itself_can_be_class_folder(tmp_path):
    root = tmp_path / "pituitary_tumor"
    f = touch(root / "sub" / "a.jpg")
    assert class_for_path(f, root) == "pituitary"
    recs = discover_images([root])
    assert [r.label for r in recs] == [CLASS_NAMES.index("pituitary")]


def test_nested_layouts_nearest_class_wins(tmp_path):
    a = touch(tmp_path / "Training" / "glioma" / "sub" / "x.png")
    b = touch(tmp_path / "glioma" / "pituitary" / "x.png")
    recs = discover_images([tmp_path])
    assert label_of(recs, a) == CLASS_NAMES.index("glioma")
    assert label_of(recs, b) == CLASS_NAMES.index("pituitary")
    assert all(r.source == str(tmp_path) for r in recs)


def test_unlabelled_skipped_and_reported(tmp_path):
    good = touch(tmp_path / "no_tumor" / "a.jpg")
    loose = touch(tmp_path / "misc" / "b.jpg")
    recs, unlabelled = discover_images_with_report([tmp_path])
    assert [r.path for r in recs] == [str(good)]
    assert unlabelled == [str(loose)]
    recs_all = discover_images([tmp_path], require_label=False)
    assert {r.path: r.label for r in recs_all} == {str(good): 2, str(loose): -1}
    assert class_counts(recs_all)["unlabelled"] == 1


def test_extensions_hidden_and_case(tmp_path):
    d = tmp_path / "glioma"
    keep = [touch(d / n) for n in ["a.JPG", "b.jpeg", "c.png", "d.bmp", "e.TIF", "f.tiff"]]
    for n in ["notes.txt", "g.gif", "h.jpg.bak", ".hidden.jpg", "labels.csv"]:
        touch(d / n)
    touch(tmp_path / ".cache" / "glioma" / "x.png")
    recs = discover_images([tmp_path])
    assert sorted(r.path for r in recs) == sorted(str(p) for p in keep)


def test_deterministic_order_and_counts(tmp_path):
    for cls in ["pituitary", "glioma", "notumor", "meningioma"]:
        for i in (3, 1, 2):
            touch(tmp_path / cls / f"{i}.png")
    first = discover_images([tmp_path])
    assert first == discover_images([tmp_path])
    assert [r.path for r in first] == sorted(r.path for r in first)
    assert class_counts(first) == {name: 3 for name in CLASS_NAMES}
    assert isinstance(first[0], ImageRecord)


def test_multiple_roots_and_overlap(tmp_path):
    a = touch(tmp_path / "a" / "glioma" / "1.png")
    b = touch(tmp_path / "b" / "normal" / "1.png")
    recs = discover_images([tmp_path / "a", tmp_path / "b", tmp_path / "a"])
    assert [(r.path, r.label) for r in recs] == [(str(a), 0), (str(b), 2)]
    assert [r.source for r in recs] == [str(tmp_path / "a"), str(tmp_path / "b")]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loop_terminates(tmp_path):
    f = touch(tmp_path / "glioma" / "1.png")
    os.symlink(tmp_path, tmp_path / "glioma" / "loop")
    recs = discover_images([tmp_path])
    assert [r.path for r in recs] == [str(f)]


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        discover_images([missing])


def test_empty_root_and_file_root(tmp_path):
    with pytest.raises(ValueError, match="folder-per-class"):
        discover_images([tmp_path])
    touch(tmp_path / "misc" / "a.png")
    with pytest.raises(ValueError, match="no labelled image"):
        discover_images([tmp_path])
    f = touch(tmp_path / "glioma" / "b.png")
    with pytest.raises(ValueError, match="must be a folder"):
        discover_images([f])


def test_odd_entries_are_reported_not_silently_skipped(tmp_path, caplog):
    import logging

    glioma = tmp_path / "glioma"
    good = touch(glioma / "a.png")
    (glioma / "folder.jpg").mkdir()
    os.mkfifo(glioma / "pipe.png")
    (glioma / "dangling.png").symlink_to(tmp_path / "gone.png")
    (glioma / "self.png").symlink_to(glioma / "self.png")
    (glioma / "loop").symlink_to(glioma)  # a folder linking back to its parent
    with caplog.at_level(logging.WARNING, logger="braintumor_tf"):
        records = discover_images([tmp_path])
    assert [record.path for record in records] == [str(good)]
    reasons = {os.path.basename(entry["path"]): entry["reason"] for entry in odd_entries(tmp_path)}
    assert reasons == {
        "folder.jpg": "a folder named like an image file; skipped",
        "pipe.png": "a FIFO (named pipe), not an image file; skipped",
        "dangling.png": f"a symbolic link to a missing file ({tmp_path / 'gone.png'}); skipped",
        "self.png": "a symbolic link loop; skipped",
        "loop": "folder already listed through another path (a symbolic link loop or a second "
                "link); not entered again",
    }
    assert "5 entries under" in caplog.text and "look like images but are not readable" in caplog.text
