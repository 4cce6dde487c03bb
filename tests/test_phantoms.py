import json

import cv2
import numpy as np
import pytest

from braintumor_tf.data import phantoms
from braintumor_tf.data.phantoms import (
    CLASS_NAMES,
    generate_phantoms,
    write_phantom_dataset,
)

SIZE = 96


@pytest.fixture(scope="module")
def sample():
    return generate_phantoms(12, SIZE, seed=7)


def _head(img: np.ndarray) -> np.ndarray:
    """Head silhouette recovered from the image alone, so geometry tests don't trust internals."""
    fg = (cv2.GaussianBlur(img, (5, 5), 0) > 35).astype(np.uint8)
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    head = np.zeros_like(fg)
    cv2.drawContours(head, [max(contours, key=cv2.contourArea)], -1, 1, -1)
    return head


def _depth(img: np.ndarray) -> np.ndarray:
    """Distance of each pixel from the head outline, in units of image size."""
    return cv2.distanceTransform(_head(img), cv2.DIST_L2, 5) / img.shape[0]


def _of(sample, name):
    images, masks, labels = sample
    sel = labels == CLASS_NAMES.index(name)
    return images[sel], masks[sel]


def test_class_names_match_discover():
    discover = pytest.importorskip("braintumor_tf.data.discover")
    assert phantoms.CLASS_NAMES == discover.CLASS_NAMES


def test_shapes_dtypes_and_balance(sample):
    images, masks, labels = sample
    assert images.shape == masks.shape == (48, SIZE, SIZE)
    assert images.dtype == masks.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [12] * 4
    assert set(np.unique(masks)) <= {0, 1}


def test_deterministic_by_seed(sample):
    again = generate_phantoms(12, SIZE, seed=7)
    for a, b in zip(sample, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = generate_phantoms(12, SIZE, seed=8)
    assert not np.array_equal(sample[0], other[0])


def test_masks_empty_iff_notumor(sample):
    _, masks, labels = sample
    areas = masks.reshape(len(masks), -1).sum(1)
    notumor = labels == CLASS_NAMES.index("notumor")
    assert (areas[notumor] == 0).all()
    assert (areas[~notumor] > 0).all()


def test_lesions_lie_inside_head(sample):
    images, masks, labels = sample
    for img, mask in zip(images, masks, strict=True):
        assert not (mask.astype(bool) & ~_head(img).astype(bool)).any()


def test_pituitary_at_midline_skull_base(sample):
    for img, mask in zip(*_of(sample, "pituitary"), strict=True):
        head = _head(img)
        ys, xs = np.nonzero(head)
        centre = np.array([xs.mean(), ys.mean()])
        evals, evecs = np.linalg.eigh(np.cov(np.stack([xs, ys])))
        minor, major = evecs[:, 0], evecs[:, 1] * np.sign(evecs[1, 1])
        semi = 2.0 * np.sqrt(evals)  # semi-axes of a uniform ellipse
        my, mx = np.nonzero(mask)
        offset = np.array([mx.mean(), my.mean()]) - centre
        assert abs(offset @ minor) / semi[0] < 0.15  # on the midline
        assert offset @ major / semi[1] > 0.35  # low in the head


def test_meningioma_abuts_inner_skull(sample):
    for img, mask in zip(*_of(sample, "meningioma"), strict=True):
        assert _depth(img)[mask > 0].min() < 0.075


def test_glioma_is_deep_in_parenchyma(sample):
    for img, mask in zip(*_of(sample, "glioma"), strict=True):
        assert _depth(img)[mask > 0].min() > 0.12


def _rule_features(img: np.ndarray) -> list[float]:
    """Image-only features mirroring how the classes are told apart: where bright lesions sit."""
    head = _head(img)
    dist = cv2.distanceTransform(head, cv2.DIST_L2, 5)
    dn = dist / dist.max()
    ys, xs = np.nonzero(head)
    half_w = (xs.max() - xs.min()) / 2
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    g = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.2)
    q = g / np.percentile(g[dn > 0.3], 75)
    dog = q - cv2.GaussianBlur(q, (0, 0), 6.0)
    sella = (np.abs(xx - xs.mean()) < 0.25 * half_w) & (yy > ys.min() + 0.65 * np.ptp(ys))
    sella &= dn > 0.12
    centre = (dn > 0.35) & ~sella
    band = (dn > 0.13) & (dn < 0.35) & ~sella
    bright = q > 1.2
    return [
        dog[centre].max(),
        dog[centre].min(),
        bright[centre].mean(),
        bright[sella].mean(),
        bright[band].mean(),
        ((q > 0.3) & (q < 0.6))[dn > 0.35].mean(),
    ]


def test_classes_are_learnable():
    """A tiny softmax regression on rule features, fit in numpy, must beat chance clearly."""
    x_train, _, y_train = generate_phantoms(30, SIZE, seed=1)
    x_test, _, y_test = generate_phantoms(30, SIZE, seed=2)
    f_train = np.array([_rule_features(i) for i in x_train])
    f_test = np.array([_rule_features(i) for i in x_test])
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    w = np.zeros((f_train.shape[1], 4))
    b = np.zeros(4)
    onehot = np.eye(4)[y_train]
    for _ in range(500):
        z = f_train @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(y_train)
        w -= 0.5 * (f_train.T @ grad + 1e-3 * w)
        b -= 0.5 * grad.sum(0)
    accuracy = ((f_test @ w + b).argmax(1) == y_test).mean()
    assert accuracy > 0.55, accuracy  # chance is 0.25


def test_write_dataset_layout_and_idempotent(tmp_path):
    root, masks_root = tmp_path / "data", tmp_path / "masks"
    out = write_phantom_dataset(root, 2, 48, seed=5, masks_root=masks_root)
    assert out == root.absolute()
    for name in CLASS_NAMES:
        files = sorted(p.name for p in (root / name).iterdir())
        assert files == [f"phantom_{name}_00000.png", f"phantom_{name}_00001.png"]
        img = cv2.imread(str(root / name / files[0]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (48, 48) and img.dtype == np.uint8
        mask = cv2.imread(str(masks_root / files[0]), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255}
        assert (mask.max() == 0) == (name == "notumor")
    meta = json.loads((root / "phantoms.json").read_text())
    assert (meta["images_per_class"], meta["image_size"], meta["seed"]) == (2, 48, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "masks"]  # no temp leftovers

    probe = root / "glioma" / "phantom_glioma_00000.png"
    stamp = probe.stat().st_mtime_ns
    write_phantom_dataset(root, 2, 48, seed=5, masks_root=masks_root)
    assert probe.stat().st_mtime_ns == stamp

    write_phantom_dataset(root, 3, 48, seed=5)  # different parameters: rewritten
    assert len(list((root / "glioma").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "masks"]


def test_write_dataset_matches_generate(tmp_path):
    write_phantom_dataset(tmp_path / "d", 1, 40, seed=9)
    images, _, labels = generate_phantoms(1, 40, seed=9)
    for img, label in zip(images, labels, strict=True):
        name = CLASS_NAMES[label]
        disk = cv2.imread(str(tmp_path / "d" / name / f"phantom_{name}_00000.png"), 0)
        np.testing.assert_array_equal(disk, img)


def test_write_dataset_refuses_foreign_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="non-phantom"):
        write_phantom_dataset(tmp_path / "d", 1, 32, seed=0)
    assert (tmp_path / "d" / "keep.txt").exists()


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: generate_phantoms(0, 64, 0), "images_per_class.*0"),
        (lambda: generate_phantoms(1, 16, 0), "image_size.*16"),
        (lambda: write_phantom_dataset("/nonexistent/x", 1, 8, 0), "image_size.*8"),
    ],
)
def test_invalid_arguments(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
