import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

from braintumor_tf import plots

MAX_BYTES = 200 * 1024
NAMES = ["glioma", "meningioma", "notumor", "pituitary"]


def _check_png(path):
    assert path.exists()
    assert 0 < path.stat().st_size < MAX_BYTES
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert pixels is not None and pixels.ndim == 3
    assert pixels.std() > 0, "image is a single flat colour"
    return pixels


def test_modules_do_not_import_tensorflow():
    code = (
        "import sys, braintumor_tf.plots, braintumor_tf.training.metrics; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_confusion_matrix(tmp_path):
    matrix = np.array([[50, 2, 1, 0], [3, 40, 5, 2], [0, 1, 60, 0], [1, 0, 2, 45]])
    out = plots.plot_confusion_matrix(matrix, NAMES, tmp_path / "cm.png", title="val")
    assert out == tmp_path / "cm.png"
    _check_png(out)
    _check_png(plots.plot_confusion_matrix(matrix, NAMES, tmp_path / "raw.png", normalize=False))


def test_confusion_matrix_zero_row_has_no_warnings(tmp_path):
    matrix = [[5, 1, 0], [0, 0, 0], [2, 0, 7]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plots.plot_confusion_matrix(matrix, NAMES[:3], tmp_path / "sub" / "cm.png")
    _check_png(out)


def test_confusion_matrix_shape_checked(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_confusion_matrix(np.eye(3), NAMES, tmp_path / "bad.png")


def test_history(tmp_path):
    history = {
        "loss": [1.2, 0.8, 0.6, 0.5],
        "val_loss": [1.3, 0.9, 0.8, 0.85],
        "accuracy": [0.5, 0.7, 0.8, 0.85],
        "val_accuracy": [0.45, 0.65, 0.7, 0.72],
        "auc": [0.7, 0.8, 0.9, 0.92],
        "learning_rate": [1e-3, 1e-3, 5e-4, 1e-6],
    }
    families = plots._history_families(history)
    assert list(families) == ["loss", "accuracy", "auc", "learning_rate"]
    assert families["loss"] == ["loss", "val_loss"]
    _check_png(plots.plot_history(history, tmp_path / "history.png"))


def test_history_empty_keys(tmp_path):
    _check_png(plots.plot_history({}, tmp_path / "empty.png"))
    _check_png(plots.plot_history({"loss": [], "val_loss": []}, tmp_path / "empty2.png"))
    partial = {"loss": [0.9, 0.7], "val_loss": [], "val_accuracy": [0.5, 0.6]}
    assert plots._history_families(partial) == {"loss": ["loss"], "accuracy": ["val_accuracy"]}
    _check_png(plots.plot_history(partial, tmp_path / "partial.png"))


def test_learning_rate(tmp_path):
    warmup = np.linspace(1e-5, 1e-3, 50)
    decay = 1e-3 * 0.5 * (1 + np.cos(np.linspace(0, np.pi, 250)))
    values = np.concatenate([warmup, decay])
    _check_png(plots.plot_learning_rate(values, tmp_path / "lr.png"))
    _check_png(plots.plot_learning_rate(values, tmp_path / "lr_epochs.png", steps_per_epoch=30))
    _check_png(plots.plot_learning_rate(np.array([]), tmp_path / "lr_empty.png"))
    with pytest.raises(ValueError):
        plots.plot_learning_rate(np.ones((2, 2)), tmp_path / "bad.png")


def test_image_grid(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 300.0)
    images = [
        (blob * 255).astype(np.uint8),  # grey uint8
        blob.astype(np.float32),  # grey float [0, 1]
        (blob * 255.0)[..., None],  # grey float [0, 255] with channel axis
        np.stack([blob, blob * 0.5, 1 - blob], axis=-1),  # RGB float
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),  # RGB uint8
    ] * 4
    titles = [f"img {i}" for i in range(len(images))]
    _check_png(plots.plot_image_grid(images, titles, tmp_path / "grid.png", columns=8))
    _check_png(plots.plot_image_grid(images[:1], [], tmp_path / "one.png"))


def test_image_grid_validates(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_image_grid([], [], tmp_path / "none.png")
    with pytest.raises(ValueError):
        plots.plot_image_grid([np.zeros((8, 8))] * 2, ["only one"], tmp_path / "t.png")
    with pytest.raises(ValueError):
        plots.plot_image_grid([np.zeros((8, 8, 2))], ["x"], tmp_path / "c.png")

