import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from braintumor_tf.data.augment import (
    JointAugmentParams,
    augment_image_and_mask,
    make_joint_augmenter,
)
from braintumor_tf.data.coco import ANNOTATION_FILE, load_coco_split
from braintumor_tf.data.coco_masks import coco_mask_fn
from braintumor_tf.data.datasets import segmentation_dataset

SIZE = 32


def _asymmetric_mask():
    """An L in the upper-left corner: every flip and quarter turn moves it somewhere else."""
    mask = np.zeros((SIZE, SIZE, 1), np.float32)
    mask[4:20, 4:9] = 1
    mask[15:20, 4:16] = 1
    return mask


def _image_from(mask, seed=0):
    noise = np.random.default_rng(seed).uniform(-20, 20, mask.shape)
    return (mask * 200 + 30 + noise).astype(np.float32)


ALL_ON = JointAugmentParams(horizontal_flip=True, vertical_flip=True, rotate90=True, rotation=0.05,
                            zoom=0.15, translation=0.1, contrast=0.2, brightness=0.05, gamma=0.2,
                            noise=0.02)


def test_image_and_mask_stay_aligned_under_random_transforms():
    mask = _asymmetric_mask()
    images = np.stack([_image_from(mask, s) for s in range(16)])
    masks = np.stack([mask] * 16)
    for step in range(8):
        out_image, out_mask = augment_image_and_mask(images, masks, [step, 1], ALL_ON)
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        assert out_image.shape == images.shape and out_mask.shape == masks.shape
        assert set(np.unique(out_mask)) <= {0.0, 1.0}
        assert out_image.min() >= 0 and out_image.max() <= 255
        agreement = ((out_image > 110) == (out_mask > 0.5)).mean(axis=(1, 2, 3))
        assert agreement.min() > 0.97, agreement
        assert (out_mask.sum(axis=(1, 2, 3)) > 0).all()  # the L is not pushed out of view


def test_flips_and_quarter_turns_happen_and_are_exact():
    mask = _asymmetric_mask()
    params = JointAugmentParams(horizontal_flip=True, vertical_flip=False, rotate90=True)
    views = {name: np.rot90(mask, k) for k, name in enumerate(("r0", "r90", "r180", "r270"))}
    views.update({f"f{name}": np.fliplr(v) for name, v in views.items()})
    seen = set()
    for step in range(40):
        out_image, out_mask = augment_image_and_mask(mask * 200, mask, [step, 7], params)
        match = [name for name, v in views.items() if np.array_equal(out_mask.numpy(), v)]
        assert len(match) == 1, "a pure flip/quarter turn must move the mask exactly"
        np.testing.assert_array_equal(out_image.numpy(), views[match[0]] * 200)
        seen.add(match[0])
    assert len(seen) >= 6  # flips and turns actually happen (8 possible outcomes)


def test_intensity_changes_touch_the_image_only():
    mask = _asymmetric_mask()
    image = _image_from(mask)
    params = JointAugmentParams(horizontal_flip=False, contrast=0.5, brightness=0.2, gamma=0.5,
                                noise=0.1)
    out_image, out_mask = augment_image_and_mask(image, mask, [3, 4], params)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    assert not np.allclose(out_image.numpy(), image)


def test_joint_augmenter_inside_tf_data_and_from_config():
    assert make_joint_augmenter({"horizontal_flip": False}) is None
    augmenter = make_joint_augmenter(ALL_ON, seed=5)
    mask = _asymmetric_mask()
    pairs = tf.data.Dataset.from_tensors((_image_from(mask), mask)).repeat(6)
    seeds = tf.data.Dataset.random(seed=1).batch(2)
    dataset = tf.data.Dataset.zip((pairs, seeds)).map(lambda p, s: augmenter(p[0], p[1], s))
    for out_image, out_mask in dataset:
        assert ((out_image.numpy() > 110) == (out_mask.numpy() > 0.5)).mean() > 0.97
    with pytest.raises(ValueError, match="zoom must be in"):
        JointAugmentParams(zoom=1.5)


# ----------------------------------------------------------------------------- dataset


def _write_pairs(tmp_path, n=5):
    """Images 24x40 with a bright bar; masks of the bar at a different size (12x20), 0/255."""
    image_paths, mask_paths = [], []
    for k in range(n):
        image = np.full((24, 40), 20, np.uint8)
        image[:, 8 * k:8 * k + 8] = 220
        mask = np.zeros((12, 20), np.uint8)
        mask[:, 4 * k:4 * k + 4] = 255
        image_path = tmp_path / "images" / f"{k}.png"
        mask_path = tmp_path / "masks" / "nested" / f"{k}.png"
        for path, array in ((image_path, image), (mask_path, mask)):
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), array)
        image_paths.append(str(image_path))
        mask_paths.append(str(mask_path))
    return image_paths, mask_paths


def test_segmentation_dataset_from_mask_files(tmp_path):
    image_paths, mask_paths = _write_pairs(tmp_path)
    dataset = segmentation_dataset(image_paths, mask_paths, image_size=20, channels=1,
                                   batch_size=2, training=False)
    batches = list(dataset)
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    images = np.concatenate([b[0].numpy() for b in batches])
    masks = np.concatenate([b[1].numpy() for b in batches])
    assert images.dtype == np.float32 and images.shape == (5, 20, 20, 1)
    assert masks.dtype == np.float32 and masks.shape == (5, 20, 20, 1)
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert images.max() > 200 and images.min() >= 0
    for k in range(5):
        np.testing.assert_array_equal(masks[k, :, :, 0], (images[k, :, :, 0] > 120))


def test_segmentation_dataset_training_with_augmentation(tmp_path):
    image_paths, mask_paths = _write_pairs(tmp_path)
    dataset = segmentation_dataset(image_paths, mask_paths, image_size=20, channels=3,
                                   batch_size=4, training=True, augment=ALL_ON, seed=3)
    epoch_1 = [b[1].numpy() for b in dataset]
    epoch_2 = [b[1].numpy() for b in dataset]
    for image, mask in dataset:
        assert image.shape[1:] == (20, 20, 3) and mask.shape[1:] == (20, 20, 1)
        agreement = ((image.numpy()[..., :1] > 120) == (mask.numpy() > 0.5)).mean()
        assert agreement > 0.9
    assert not all(np.array_equal(a, b) for a, b in zip(epoch_1, epoch_2, strict=True))


def test_segmentation_dataset_from_coco(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.full((40, 40), 60, np.uint8))
    data = {"images": [{"id": 3, "file_name": "a.jpg", "height": 40, "width": 40}],
            "annotations": [{"id": 0, "image_id": 3, "category_id": 1,
                             "segmentation": [[0, 0, 19, 0, 19, 19, 0, 19]]}],
            "categories": [{"id": 1, "name": "tumour"}]}
    (folder / ANNOTATION_FILE).write_text(json.dumps(data))
    split = load_coco_split(folder)
    dataset = segmentation_dataset([r.image_path for r in split.records], coco_mask_fn(split),
                                   image_size=20, channels=1, batch_size=1, training=False)
    image, mask = next(iter(dataset))
    assert image.shape == (1, 20, 20, 1) and mask.shape == (1, 20, 20, 1)
    assert mask.numpy()[0, :10, :10].all() and mask.numpy().sum() == 100


def test_segmentation_dataset_rejects_mismatched_lengths(tmp_path):
    image_paths, mask_paths = _write_pairs(tmp_path, n=2)
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        segmentation_dataset(image_paths, mask_paths[:1], 16, 1, 1, False)
