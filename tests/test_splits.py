"""Group-aware splits must keep every copy of a slice on one side of the split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from support import base_image

from braintumor_tf.data import duplicates, manifest, signatures
from braintumor_tf.data import splits as splitting
from braintumor_tf.data.discover import CLASS_NAMES, ImageRecord


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


COPIES = (
    lambda im: im[:, ::-1],  # mirrored
    lambda im: np.rot90(im, 1),
    lambda im: np.rot90(im, 2),
    lambda im: np.rot90(im, 3),
    lambda im: cv2.resize(im, (120, 104), interpolation=cv2.INTER_AREA),  # stretched too
    lambda im: jpeg(im, 60),
    lambda im: np.clip(im.astype(np.float32) * 0.7 + 40, 0, 255).astype(np.uint8),
    lambda im: (255 * (im / 255.0) ** 0.8).astype(np.uint8),  # gamma
    lambda im: jpeg(np.rot90(cv2.resize(im, (224, 224)), 1), 75),
)


def write_copies(folder: Path, n_bases: int = 40, copies: int = 3, seed: int = 0):
    """n_bases distinct images, each with `copies` transformed copies; returns records and
    the base index of each record (the true group)."""
    records, truth = [], []
    for b in range(n_bases):
        label = b % len(CLASS_NAMES)
        cls = folder / CLASS_NAMES[label]
        cls.mkdir(parents=True, exist_ok=True)
        img = base_image(seed * 1000 + b)
        variants = [img] + [COPIES[(b * copies + k) % len(COPIES)](img) for k in range(copies)]
        for k, v in enumerate(variants):
            path = cls / f"b{b:03d}_{k}.{'jpg' if k % 2 else 'png'}"
            cv2.imwrite(str(path), np.ascontiguousarray(v))
            records.append(ImageRecord(str(path), label, str(folder)))
            truth.append(b)
    return records, np.array(truth)


@pytest.fixture(scope="module")
def copies_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("copies")
    records, truth = write_copies(folder)
    sigs, bad, ok = signatures.compute_signatures([r.path for r in records], progress=False)
    assert bad == [] and len(ok) == len(records)
    return records, truth, sigs


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_signature_is_unit_norm_and_blank_is_zero():
    sig = signatures.image_signature(base_image(1))
    assert sig.shape == (signatures.SIGNATURE_SIZE,) and sig.dtype == np.float32
    assert abs(float(sig @ sig) - 1.0) < 1e-2 and abs(float(sig.mean())) < 1e-3
    assert not signatures.image_signature(np.full((50, 70, 3), 9.0)).any()


def test_copies_grouped_and_distinct_images_apart(copies_set):
    records, truth, sigs = copies_set
    groups = duplicates.find_duplicate_groups(sigs, threshold=0.85)
    assert same_partition(groups, truth)
    assert groups[0] == 0 and set(groups.tolist()) == set(range(groups.max() + 1))


def test_pairs_report_transform(copies_set):
    records, truth, sigs = copies_set
    i, j, c, t = duplicates.find_pairs(sigs, 0.85)
    assert (i < j).all() and (c >= 0.85).all() and (truth[i] == truth[j]).all()
    # base 0 gets copies 0,1,2: mirrored, rot90, rot180 of the base (record 0).
    first = {int(b): duplicates.TRANSFORM_NAMES[int(k)] for a, b, k in zip(i, j, t, strict=True)
             if a == 0}
    assert first == {1: "flip_lr", 2: "rot90", 3: "rot180"}


def test_group_split_keeps_groups_whole(copies_set):
    records, truth, sigs = copies_set
    groups = duplicates.find_duplicate_groups(sigs)
    labels = np.array([r.label for r in records])
    splits = splitting.group_split(labels, groups, 0.2, 0.2, seed=3)
    for g in np.unique(groups):
        assert len(set(splits[groups == g])) == 1
    assert set(splits) == {"train", "val", "test"}


def test_random_split_leaks(copies_set):
    records, truth, sigs = copies_set
    labels = np.array([r.label for r in records])
    splits = splitting.random_split(labels, truth, 0.2, 0.2, seed=3)
    split_groups = [g for g in np.unique(truth) if len(set(splits[truth == g])) > 1]
    assert len(split_groups) > 10


def test_stratification_and_determinism():
    rng = np.random.default_rng(0)
    n = 3000
    groups = np.repeat(np.arange(n), rng.integers(1, 5, n))[:n]
    labels = rng.choice(4, size=groups.max() + 1, p=[0.4, 0.3, 0.2, 0.1])[groups]
    splits = splitting.group_split(labels, groups, 0.15, 0.2, seed=7)
    for c in range(4):
        in_c = labels == c
        for name, frac in (("val", 0.15), ("test", 0.2)):
            assert abs((splits[in_c] == name).mean() - frac) < 0.02, (c, name)
    assert np.array_equal(splits, splitting.group_split(labels, groups, 0.15, 0.2, seed=7))
    assert not np.array_equal(splits, splitting.group_split(labels, groups, 0.15, 0.2, seed=8))
    rand = splitting.random_split(labels, groups, 0.15, 0.2, seed=7)
    assert abs((rand == "test").mean() - 0.2) < 0.01
    no_val = splitting.group_split(labels, groups, 0.0, 0.2, seed=7)
    assert "val" not in set(no_val)


@pytest.mark.parametrize("val,test", [(-0.1, 0.2), (1.0, 0.0), (0.5, 0.5), (0.2, 1.2)])
def test_bad_fractions(val, test):
    with pytest.raises(ValueError):
        splitting.group_split([0, 1], [0, 1], val, test, seed=0)
    with pytest.raises(ValueError):
        splitting.random_split([0, 1], [0, 1], val, test, seed=0)


def test_manifest_round_trip(tmp_path):
    records = [ImageRecord(f"/d/{CLASS_NAMES[k % 4]}/x,{k}.png", k % 4, "/d") for k in range(9)]
    groups = np.array([0, 0, 1, 2, 3, 3, 4, 5, 6])
    splits = np.array(["train", "train", "val", "test", "train", "train", "val", "test", "train"])
    path = tmp_path / "sub" / "manifest.csv"
    manifest.write_manifest(path, records, groups, splits)
    rows = manifest.read_manifest(path)
    assert [r["path"] for r in rows] == [r.path for r in records]
    assert [r["label"] for r in rows] == [r.label for r in records]
    assert [r["group"] for r in rows] == groups.tolist()
    assert [r["split"] for r in rows] == splits.tolist()
    assert rows[2]["class_name"] == CLASS_NAMES[2]


def test_bad_files_reported_and_cache_reused(tmp_path, monkeypatch):
    records, truth = write_copies(tmp_path / "data", n_bases=8, copies=1)
    (tmp_path / "data" / "glioma" / "empty.jpg").write_bytes(b"")
    (tmp_path / "data" / "glioma" / "junk.png").write_bytes(b"not an image at all")
    good = cv2.imencode(".jpg", base_image(99))[1].tobytes()
    (tmp_path / "data" / "glioma" / "cut.jpg").write_bytes(good[: len(good) // 2])
    extra = [ImageRecord(str(tmp_path / "data" / "glioma" / n), 0, "x")
             for n in ("empty.jpg", "junk.png", "cut.jpg")]
    all_records = records[:3] + extra + records[3:]
    cache = tmp_path / "cache"
    first = splitting.make_split(all_records, 0.25, 0.25, seed=1, cache_dir=cache, progress=False)
    assert sorted(Path(b["path"]).name for b in first.bad) == ["cut.jpg", "empty.jpg", "junk.png"]
    assert all(b["reason"] for b in first.bad)
    assert len(first.records) == len(records) and same_partition(first.groups, truth)
    assert (cache / "signatures.npz").exists()

    def no_decoding(*args, **kwargs):
        raise AssertionError("cache not used")

    monkeypatch.setattr(signatures, "read_image", no_decoding)
    sigs, bad, ok = signatures.cached_signatures([r.path for r in records], cache, progress=False)
    assert bad == [] and len(ok) == len(records)
    monkeypatch.undo()
    second = splitting.make_split(all_records, 0.25, 0.25, seed=1, cache_dir=cache, progress=False)
    assert np.array_equal(first.groups, second.groups)
    assert np.array_equal(first.splits, second.splits) and first.bad == second.bad
    uncached = splitting.make_split(all_records, 0.25, 0.25, seed=1, progress=False)
    assert np.array_equal(first.splits, uncached.splits)
    flat = splitting.make_split(all_records, 0.25, 0.25, seed=1, group_aware=False, progress=False)
    assert len(flat.bad) == 3 and np.array_equal(flat.groups, np.arange(len(records)))
