"""Data on a tf.io.gfile filesystem loads exactly as the same files on local disk.

TensorFlow registers an in-memory filesystem, ``ram://``, which stands in here for ``gs://``
(no cloud access on the test machines). Every test writes one tree of files twice, under
``tmp_path`` and under a fresh ``ram://`` folder, and compares the results relative to the roots.
"""

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from braintumor_tf.config import CONFIG_DIR, load_config
from braintumor_tf.data import filesystem
from braintumor_tf.data.coco import ANNOTATION_FILE, find_coco_splits, load_coco_split
from braintumor_tf.data.coco_masks import coco_mask_fn
from braintumor_tf.data.decode import check_images, make_tf_loader, read_image
from braintumor_tf.data.discover import discover_images_with_report, odd_entries
from braintumor_tf.data.manifest import manifest_split
from braintumor_tf.data.masks import read_mask
from braintumor_tf.data.segmentation import find_segmentation_images
from braintumor_tf.data.signatures import cached_signatures
from braintumor_tf.data.subjects import read_subjects, subjects_for


def png(height=24, width=20, seed=0, dtype=np.uint8, channels=1) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    top = 255 if dtype == np.uint8 else 4000
    pixels = rng.integers(0, top, shape).astype(dtype)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 18, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tree(tmp_path, files: dict, folders=()) -> tuple[str, str]:
    """The same files under a local and a ram:// root; (local root, remote root)."""
    local = tmp_path / "data"
    remote = f"ram://{uuid.uuid4().hex}/data"
    tf.io.gfile.makedirs(remote)
    for name in folders:
        (local / name).mkdir(parents=True, exist_ok=True)
        tf.io.gfile.makedirs(f"{remote}/{name}")
    for name, data in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
        # ram:// lists only folders made explicitly (GCS infers them from object names).
        tf.io.gfile.makedirs(os.path.dirname(f"{remote}/{name}"))
        with tf.io.gfile.GFile(f"{remote}/{name}", "wb") as handle:
            handle.write(data)
    return str(local), remote


def rel(path, root) -> str:
    path, root = os.fspath(path), os.fspath(root)
    assert path.startswith(root), (path, root)
    return path[len(root):]


FAKE_DICOM = b"\0" * 128 + b"DICM" + b"\0" * 16  # enough for discovery, not for decoding

CLASS_TREE = {
    "glioma/a.png": png(seed=1),
    "glioma/IM0001": FAKE_DICOM,  # extensionless DICOM, as scanners export series
    "glioma/README": b"not an image",
    "Training/meningioma/b.png": png(seed=2, channels=3),
    "notumor/c.jpg": jpeg(seed=3),
    "pituitary/sub/d.png": png(seed=4, dtype=np.uint16),
    "pituitary/.hidden.png": png(seed=5),
    "other/u.png": png(seed=6),
    "notes.txt": b"hello",
}


def test_is_remote():
    assert filesystem.is_remote("gs://bucket/x")
    assert filesystem.is_remote("ram://x")
    assert not filesystem.is_remote("/tmp/x")
    assert not filesystem.is_remote("relative/x.png")
    assert not filesystem.is_remote("C://data")  # a Windows drive, not a scheme
    assert not filesystem.is_remote(Path("gs://bucket/x"))


def test_discovery_finds_the_same_images_labels_and_odd_entries(tmp_path):
    local, remote = write_tree(tmp_path, CLASS_TREE, folders=["glioma/x.png"])

    def listing(root):
        records, unlabelled = discover_images_with_report(root, require_label=False)
        return ([(rel(r.path, root), r.label, r.source == root) for r in records],
                sorted(rel(p, root) for p in unlabelled),
                [(rel(e["path"], root), e["reason"]) for e in odd_entries(root)])

    remote_listing = listing(remote)
    assert remote_listing == listing(local)
    found = [path for path, _, _ in remote_listing[0]]
    assert "/glioma/IM0001" in found and "/glioma/README" not in found
    assert remote_listing[1] == ["/other/u.png"]
    assert remote_listing[2] == [("/glioma/x.png", "a folder named like an image file; skipped")]
    # A trailing "/" on the root gives the same paths.
    again, _ = discover_images_with_report(remote + "/", require_label=False)
    assert [(r.path, r.label) for r in again] == \
        [(remote + path, label) for path, label, _ in remote_listing[0]]


def test_gcs_style_listing_with_trailing_slashes(tmp_path, monkeypatch):
    """GCS lists folders as "name/" (tensorflow#39167); discovery must not depend on that."""
    local, remote = write_tree(tmp_path, CLASS_TREE)
    listdir, isdir = tf.io.gfile.listdir, tf.io.gfile.isdir
    monkeypatch.setattr(tf.io.gfile, "listdir", lambda path: [
        name + "/" if isdir(f"{path.rstrip('/')}/{name}") else name for name in listdir(path)])
    remote_records, _ = discover_images_with_report(remote)
    local_records, _ = discover_images_with_report(local)
    assert [(rel(r.path, remote), r.label) for r in remote_records] == \
        [(rel(r.path, local), r.label) for r in local_records]


def test_missing_or_unknown_remote_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        discover_images_with_report(f"ram://{uuid.uuid4().hex}/none")
    with pytest.raises(OSError, match="not implemented"):
        discover_images_with_report("nosuchscheme://bucket/data")


def test_decoding_gives_the_same_pixels(tmp_path):
    truncated = png(seed=7)[:-30]
    local, remote = write_tree(tmp_path, {**CLASS_TREE, "glioma/cut.png": truncated})
    names = ["glioma/a.png", "Training/meningioma/b.png", "notumor/c.jpg", "pituitary/sub/d.png"]
    for name in names:
        for channels, size in ((1, None), (3, 32), (3, 8)):
            local_pixels = read_image(f"{local}/{name}", channels, size)
            remote_pixels = read_image(f"{remote}/{name}", channels, size)
            assert remote_pixels.dtype == local_pixels.dtype
            np.testing.assert_array_equal(remote_pixels, local_pixels)
    dataset = tf.data.Dataset.from_tensor_slices([f"{remote}/notumor/c.jpg"])
    (loaded,) = list(dataset.map(make_tf_loader(channels=3, image_size=16)))
    np.testing.assert_array_equal(loaded.numpy(), read_image(f"{local}/notumor/c.jpg", 3, 16))
    # Unreadable files are reported the same way (and missing ones as OSError, not tf.errors).
    checked = ["glioma/a.png", "glioma/cut.png", "glioma/gone.png"]
    good_l, bad_l = check_images([f"{local}/{n}" for n in checked])
    good_r, bad_r = check_images([f"{remote}/{n}" for n in checked])
    assert [rel(p, remote) for p in good_r] == [rel(p, local) for p in good_l] == ["/glioma/a.png"]
    assert [(rel(b["path"], remote), b["reason"]) for b in bad_r] == \
        [(rel(b["path"], local), b["reason"]) for b in bad_l]
    assert "No such file" in bad_r[1]["reason"]


def test_signature_cache_keys_remote_files(tmp_path):
    local, remote = write_tree(tmp_path, CLASS_TREE)
    names = ["glioma/a.png", "notumor/c.jpg", "pituitary/sub/d.png"]
    local_sigs, _, _ = cached_signatures([f"{local}/{n}" for n in names], tmp_path / "cl", 1, False)
    for _ in range(2):  # the second call is answered from the cache
        remote_sigs, bad, ok = cached_signatures([f"{remote}/{n}" for n in names], tmp_path / "cr",
                                                 1, False)
        assert bad == [] and ok.tolist() == [0, 1, 2]
        np.testing.assert_array_equal(remote_sigs, local_sigs)


def _coco_tree() -> dict:
    images = [{"id": 1, "file_name": "a.png", "height": 24, "width": 20},
              {"id": 2, "file_name": "b.png", "height": 24, "width": 20},
              {"id": 3, "file_name": "lost.png", "height": 24, "width": 20}]
    annotations = [{"id": 9, "image_id": 1, "category_id": 1, "iscrowd": 0,
                    "segmentation": [[2, 3, 12, 3, 12, 10, 2, 10]]}]
    split = {"images": images, "annotations": annotations,
             "categories": [{"id": 1, "name": "tumour"}]}
    return {
        f"train/{ANNOTATION_FILE}": json.dumps(split).encode(),
        "train/a.png": png(seed=11), "train/b.png": png(seed=12),
        f"valid/{ANNOTATION_FILE}": json.dumps({**split, "images": images[:2]}).encode(),
        "valid/a.png": png(seed=13), "valid/b.png": png(seed=14),
    }


def test_coco_splits_load_the_same_records_and_masks(tmp_path):
    local, remote = write_tree(tmp_path, _coco_tree())
    assert [rel(f, remote) for f in find_coco_splits(remote)] == \
        [rel(f, local) for f in find_coco_splits(local)] == ["/train", "/valid"]

    def summary(folder, root):
        split = load_coco_split(folder)
        return ([(rel(r.image_path, root), r.image_id, r.height, r.width, len(r.shapes))
                 for r in split.records], [rel(m, root) for m in split.missing], split.categories)

    assert summary(f"{remote}/train", remote) == summary(f"{local}/train", local)
    assert summary(f"{remote}/train", remote)[1] == ["/train/lost.png"]
    masks_l = coco_mask_fn(load_coco_split(f"{local}/train"))
    masks_r = coco_mask_fn(load_coco_split(f"{remote}/train"))
    assert masks_r(f"{remote}/train/a.png").sum() > 0
    np.testing.assert_array_equal(masks_r(f"{remote}/train/a.png"), masks_l(f"{local}/train/a.png"))

    source_l, source_r = find_segmentation_images(local), find_segmentation_images(remote)
    assert [rel(p, remote) for p in source_r.image_paths] == \
        [rel(p, local) for p in source_l.image_paths]
    assert source_r.folder_splits == source_l.folder_splits == ["train", "train", "val", "val"]
    assert source_r.has_tumour(source_r.image_paths, "annotations") == \
        source_l.has_tumour(source_l.image_paths, "annotations")


def test_coco_size_mismatch_is_caught_from_the_remote_header(tmp_path):
    tree = _coco_tree()
    tree["train/b.png"] = png(height=30, seed=12)
    local, remote = write_tree(tmp_path, tree)
    for root in (local, remote):
        with pytest.raises(ValueError, match="b.png: JSON says 24x20, file is 30x20"):
            load_coco_split(f"{root}/train")


def test_mask_folder_pairs_and_reads_the_same(tmp_path):
    mask = np.zeros((24, 20), np.uint8)
    mask[4:9, 5:12] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    tree = {"images/train/s1.png": png(seed=21), "images/train/s2.jpg": jpeg(seed=22),
            "images/valid/s1.png": png(seed=23), "images/valid/s3.png": png(seed=24),
            "masks/train/s1.png": buffer.getvalue(), "masks/train/s2.png": png(seed=25),
            "masks/valid/s1.png": png(seed=26)}
    local, remote = write_tree(tmp_path, tree)
    source_l = find_segmentation_images(f"{local}/images", f"{local}/masks")
    source_r = find_segmentation_images(f"{remote}/images", f"{remote}/masks")
    assert sorted((rel(i, remote), rel(m, remote)) for i, m in source_r.mask_paths.items()) == \
        sorted((rel(i, local), rel(m, local)) for i, m in source_l.mask_paths.items())
    assert [rel(p, remote) for p in source_r.without_mask] == ["/images/valid/s3.png"]
    assert source_r.folder_splits == source_l.folder_splits
    paths_r, paths_l = source_r.images_with("masks"), source_l.images_with("masks")
    assert source_r.has_tumour(paths_r, "masks") == source_l.has_tumour(paths_l, "masks")
    reader_r, reader_l = source_r.mask_reader("masks"), source_l.mask_reader("masks")
    for path_r, path_l in zip(paths_r, paths_l, strict=True):
        np.testing.assert_array_equal(reader_r(path_r), reader_l(path_l))
    assert read_mask(f"{remote}/masks/train/s1.png").sum() == 5 * 7


def test_subjects_csv_found_and_read_the_same(tmp_path):
    csv_text = ("path,subject\nglioma/a.png,p1\nnotumor/c.jpg,p1\nTraining/meningioma/b.png,p2\n"
                "glioma/gone.png,p3\n")
    local, remote = write_tree(tmp_path, {**CLASS_TREE, "subjects.csv": csv_text.encode()})
    names = ["glioma/a.png", "notumor/c.jpg", "Training/meningioma/b.png", "other/u.png"]
    subjects_l, report_l = subjects_for([f"{local}/{n}" for n in names], "auto", [local])
    subjects_r, report_r = subjects_for([f"{remote}/{n}" for n in names], "auto", [remote])
    assert subjects_r == subjects_l == ["p1", "p1", "p2", ""]
    assert report_r.csv_path == f"{remote}/subjects.csv"
    assert {**report_r.as_dict(), "csv_path": None} == {**report_l.as_dict(), "csv_path": None}
    assert report_r.csv_rows_without_file == 1
    # Found in a parent folder of the data root, and given explicitly.
    _, found = subjects_for([f"{remote}/glioma/a.png"], "auto", [f"{remote}/glioma"])
    assert found.found_automatically and found.images_matched == 1
    table = read_subjects(f"{remote}/subjects.csv")
    assert table.lookup([f"{remote}/glioma/a.png"]) == ["p1"]


def test_split_manifest_given_as_input_resolves_beside_it(tmp_path):
    manifest = ("path,label,class_name,group,split,subject\n"
                "glioma/a.png,0,glioma,0,train,\nnotumor/c.jpg,2,notumor,1,val,s\n")
    local, remote = write_tree(tmp_path, {**CLASS_TREE, "split.csv": manifest.encode()})
    rows_r = manifest_split(f"{remote}/split.csv", "val")
    rows_l = manifest_split(f"{local}/split.csv", "val")
    assert rows_r[0]["path"] == f"{remote}/notumor/c.jpg"
    assert [{**r, "path": rel(r["path"], remote)} for r in rows_r] == \
        [{**r, "path": rel(r["path"], local)} for r in rows_l]


def test_segmentation_split_of_remote_data_matches_local(tmp_path):
    """The whole data preparation (discovery, masks, signatures, groups, split, manifest in a local
    run directory) on ram:// data; no training."""
    from braintumor_tf.tasks.segmentation import SegmentationTask

    tree = {}
    for split in ("train", "valid"):
        for k in range(6):
            tree[f"img/{split}/{split}_{k}.png"] = png(32, 32, seed=k + 10 * (split == "valid"))
            tree[f"msk/{split}/{split}_{k}.png"] = png(32, 32, seed=100 + k)
    local, remote = write_tree(tmp_path, tree)
    results = []
    for root in (local, remote):
        config = load_config(CONFIG_DIR / "segmentation.yaml", [
            f"data.root={root}/img", f"segmentation.mask_root={root}/msk",
            "segmentation.targets=masks"])
        run_dir = tmp_path / f"run{len(results)}"
        run_dir.mkdir()
        rows = SegmentationTask().prepare_data(config, run_dir).rows
        results.append([{**row, "path": rel(row["path"], root)} for row in rows])
    assert len(results[1]) == 12 and {row["split"] for row in results[1]} >= {"train", "val"}
    assert results[1] == results[0]


def test_local_data_does_not_import_tensorflow(tmp_path):
    local, _ = write_tree(tmp_path, CLASS_TREE)
    code = ("import sys; from braintumor_tf.data.discover import discover_images; "
            "from braintumor_tf.data.decode import read_image; "
            f"records = discover_images({local!r}); read_image(records[0].path, 1); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_classification_split_of_remote_data_matches_local(tmp_path):
    """data.root = ram://... through the classification task (discovery, groups, subjects CSV
    beside the data, split, manifest in a local run directory); no training."""
    from braintumor_tf.tasks.classification import ClassificationTask

    tree, subjects = {}, ["path,subject"]
    for label in ("glioma", "meningioma", "notumor", "pituitary"):
        for k in range(5):
            seed = 1000 + 10 * len(label) + k
            tree[f"data/{label}/{label}_{k}.png"] = png(32, 32, seed=seed)
            subjects.append(f"data/{label}/{label}_{k}.png,{label}_patient{k % 2}")
    tree["subjects.csv"] = ("\n".join(subjects) + "\n").encode()
    local, remote = write_tree(tmp_path, tree)
    results = []
    for root in (local, remote):
        config = load_config(CONFIG_DIR / "classification.yaml", [f"data.root={root}/data"])
        run_dir = tmp_path / f"run{len(results)}"
        run_dir.mkdir()
        rows = ClassificationTask().prepare_data(config, run_dir).rows
        results.append(sorted(({**row, "path": rel(row["path"], root)} for row in rows),
                              key=lambda row: row["path"]))
    assert len(results[1]) == 20 and {row["subject"] for row in results[1]} >= {"glioma_patient0"}
    assert results[1] == results[0]
