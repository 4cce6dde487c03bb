import cv2
import numpy as np
import pytest
from support import write_png

from braintumor_tf.data.decode import DecodeError
from braintumor_tf.data.manifest import read_manifest, write_manifest
from braintumor_tf.data.masks import mask_has_foreground, pair_images_with_masks, read_mask
from braintumor_tf.data.splits import SEGMENTATION_LABELS, make_split, segmentation_records


def _square_mask(size, value, top=2, side=4):
    mask = np.zeros((size, size), np.uint8)
    mask[top:top + side, top:top + side] = value
    return mask


@pytest.mark.parametrize("value", [255, 1, 7])
def test_read_mask_any_nonzero_is_tumour(tmp_path, value):
    path = write_png(tmp_path / "m.png", _square_mask(10, value))
    mask = read_mask(path)
    assert mask.dtype == np.uint8 and mask.shape == (10, 10)
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 16


def test_read_mask_resizes_with_nearest(tmp_path):
    path = write_png(tmp_path / "m.png", _square_mask(10, 255, top=0, side=5))
    bigger = read_mask(path, size=(20, 40))
    assert bigger.shape == (20, 40) and set(np.unique(bigger)) == {0, 1}
    assert bigger[:10, :20].all() and bigger.sum() == 200  # exactly the upper-left quarter
    # Halving samples source pixels 1, 3, 5, ... (centred), so rows/columns 0-4 give 2 of them.
    assert read_mask(path, size=5)[:2, :2].all() and read_mask(path, size=5).sum() == 4


def test_read_mask_colour_and_16_bit(tmp_path):
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[1, 1] = (0, 0, 1)
    assert read_mask(write_png(tmp_path / "c.png", colour)).sum() == 1
    deep = np.zeros((6, 6), np.uint16)
    deep[2, 3] = 1
    assert read_mask(write_png(tmp_path / "d.png", deep)).sum() == 1


def test_truncated_mask_raises(tmp_path):
    path = write_png(tmp_path / "m.png", _square_mask(10, 255))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DecodeError):
        read_mask(path)


def test_pairing_by_stem_recursively(tmp_path):
    images = []
    for split in ("train", "valid"):
        for k in range(2):
            path = tmp_path / "images" / split / f"{split}_{k}.rf.abc.jpg"
            write_png(path.with_suffix(".png"), np.zeros((4, 4), np.uint8))  # written as png first
            path.with_suffix(".png").rename(path)
            images.append(path)
    orphan = tmp_path / "images" / "train" / "orphan.jpg"
    orphan.write_bytes(images[0].read_bytes())
    images.append(orphan)
    masks = tmp_path / "masks"
    write_png(masks / "train" / "train_0.rf.abc.png", _square_mask(8, 255))
    write_png(masks / "train" / "deeper" / "train_1.rf.abc.png", _square_mask(8, 1))
    write_png(masks / "valid_0.rf.abc.png", _square_mask(8, 255))
    write_png(masks / "valid" / "valid_1.rf.abc.png", np.zeros((8, 8), np.uint8))

    pairs, unmatched = pair_images_with_masks(images, masks)
    assert unmatched == [str(orphan)]
    assert [(p[0].rsplit("/", 1)[1], p[1].rsplit("/", 1)[1]) for p in pairs] == [
        ("train_0.rf.abc.jpg", "train_0.rf.abc.png"), ("train_1.rf.abc.jpg", "train_1.rf.abc.png"),
        ("valid_0.rf.abc.jpg", "valid_0.rf.abc.png"), ("valid_1.rf.abc.jpg", "valid_1.rf.abc.png")]
    assert [mask_has_foreground(m) for _, m in pairs] == [True, True, True, False]


def test_same_stem_in_two_mask_folders(tmp_path):
    image = write_png(tmp_path / "images" / "valid" / "x.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "masks" / "train" / "x.png", np.zeros((4, 4), np.uint8))
    right = write_png(tmp_path / "masks" / "valid" / "x.png", np.zeros((4, 4), np.uint8))
    pairs, _ = pair_images_with_masks([image], tmp_path / "masks")
    assert pairs == [(str(image), str(right))]
    other = write_png(tmp_path / "elsewhere" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="several masks match"):
        pair_images_with_masks([other], tmp_path / "masks")


def test_missing_mask_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        pair_images_with_masks([], tmp_path / "nope")


def test_group_aware_split_of_one_mask_folder(tmp_path):
    rng = np.random.default_rng(0)
    images, masks = [], []
    for k in range(16):
        image = (rng.random((32, 32)) * 255).astype(np.uint8)
        images.append(write_png(tmp_path / "images" / f"{k}.png", image))
        masks.append(write_png(tmp_path / "masks" / f"{k}.png", _square_mask(32, 255 * (k % 2))))
    # A mirrored copy of image 0 must land in image 0's split.
    images.append(write_png(tmp_path / "images" / "copy.png", cv2.flip(cv2.imread(str(images[0]), 0), 1)))
    masks.append(masks[0])
    records = segmentation_records(images, [mask_has_foreground(m) for m in masks])
    result = make_split(records, 0.25, 0.25, seed=0, progress=False)
    assert [r.label for r in result.records] == [k % 2 for k in range(16)] + [0]
    by_path = dict(zip([r.path for r in result.records], result.splits, strict=True))
    assert by_path[str(images[0])] == by_path[str(images[-1])]
    for split in ("train", "val", "test"):
        labels = {r.label for r, s in zip(result.records, result.splits, strict=True) if s == split}
        assert labels == {0, 1}
    write_manifest(tmp_path / "m.csv", result.records, result.groups, result.splits,
                   class_names=SEGMENTATION_LABELS)
    rows = read_manifest(tmp_path / "m.csv")
    assert {row["class_name"] for row in rows} == {"empty", "tumour"}


def test_remove_specks_drops_small_pieces_or_keeps_the_largest():
    from braintumor_tf.data.masks import remove_specks

    mask = np.zeros((100, 100), np.uint8)
    mask[10:30, 10:30] = 1          # 400 px: 4 % of the slice
    mask[60:63, 60:63] = 1          # 9 px
    mask[80:90, 80:85] = 1          # 50 px
    mask[63, 63] = 1                # touches the 9-px piece diagonally: one 10-px piece
    assert remove_specks(mask).sum() == mask.sum()
    assert remove_specks(mask, min_fraction=0.002).sum() == 450      # the 10-px piece goes
    assert remove_specks(mask, min_fraction=0.006).sum() == 400
    assert remove_specks(mask, keep_largest=True).sum() == 400
    assert remove_specks(np.zeros((8, 8)), keep_largest=True).sum() == 0
    with pytest.raises(ValueError, match="one \\[H, W\\] mask"):
        remove_specks(mask[None])
    with pytest.raises(ValueError, match="min_fraction"):
        remove_specks(mask, min_fraction=1.0)
