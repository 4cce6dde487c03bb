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



# What is drawn, read from the figure before it is rasterised: a plot that shows the wrong numbers
# fails here, not only one that is blank.


@pytest.fixture
def drawn(monkeypatch):
    """Each saved figure as {axes title: {texts, ticks, lines, images, yscale, labels}}."""
    figures = []
    save = plots._save

    def capture(figure, path):
        panels = {}
        for axes in figure.axes:
            panels[axes.get_title()] = {
                "texts": [text.get_text() for text in axes.texts],
                "xticks": [label.get_text() for label in axes.get_xticklabels()],
                "yticks": [label.get_text() for label in axes.get_yticklabels()],
                "lines": {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
                          for line in axes.get_lines()},
                "images": [np.asarray(image.get_array()) for image in axes.get_images()],
                "yscale": axes.get_yscale(),
                "labels": (axes.get_xlabel(), axes.get_ylabel()),
            }
        figures.append(panels)
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", capture)
    return figures


def test_confusion_matrix_draws_the_counts_and_row_fractions(tmp_path, drawn):
    matrix = np.array([[50, 2, 1, 0], [3, 40, 5, 2], [0, 1, 60, 0], [1, 0, 2, 45]])
    plots.plot_confusion_matrix(matrix, NAMES, tmp_path / "cm.png", title="val")
    panel = drawn[-1]["val"]
    assert panel["xticks"] == NAMES and panel["yticks"] == NAMES
    assert panel["labels"] == ("predicted", "true")
    assert panel["texts"][0] == "50\n94.3%"  # row 0: 50 of 53
    assert panel["texts"][4 * 1 + 3] == "2\n4.0%"  # row 1, column 3: 2 of 50
    np.testing.assert_allclose(panel["images"][0], matrix / matrix.sum(axis=1, keepdims=True))
    plots.plot_confusion_matrix(matrix, NAMES, tmp_path / "raw.png", normalize=False)
    np.testing.assert_array_equal(drawn[-1]["Confusion matrix"]["images"][0], matrix)


def test_history_draws_train_and_validation_per_metric(tmp_path, drawn):
    history = {"loss": [1.2, 0.8, 0.6], "val_loss": [1.3, 0.9, 0.95],
               "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.45, 0.65, 0.7],
               "learning_rate": [1e-3, 5e-4, 1e-6]}
    plots.plot_history(history, tmp_path / "history.png")
    panels = drawn[-1]
    assert list(panels) == ["loss", "accuracy", "learning_rate"]
    for family in ("loss", "accuracy"):
        lines = panels[family]["lines"]
        np.testing.assert_array_equal(lines["train"][1], history[family])
        np.testing.assert_array_equal(lines["validation"][1], history[f"val_{family}"])
        np.testing.assert_array_equal(lines["train"][0], [1, 2, 3])  # epochs count from 1
    assert panels["learning_rate"]["yscale"] == "log"  # spans 1000x
    assert panels["loss"]["yscale"] == "linear"


def test_learning_rate_draws_every_step(tmp_path, drawn):
    values = np.concatenate([np.linspace(1e-4, 1e-3, 10), np.full(20, 1e-3)])
    plots.plot_learning_rate(values, tmp_path / "lr.png", steps_per_epoch=10)
    panel = drawn[-1]["Learning-rate schedule"]
    (steps, rates), = panel["lines"].values()
    np.testing.assert_array_equal(steps, np.arange(30))
    np.testing.assert_array_equal(rates, values)
    assert panel["yscale"] == "linear" and panel["labels"] == ("step", "learning rate")


def test_segmentation_cases_tint_truth_and_prediction_where_they_are(tmp_path, drawn):
    image = np.full((16, 16), 100, np.uint8)
    truth = np.zeros((16, 16), np.uint8)
    truth[2:6, 2:6] = 1
    probabilities = np.zeros((16, 16), np.float32)
    probabilities[10:14, 10:14] = 0.9
    plots.plot_segmentation_cases([(image, truth, probabilities, "case 1")], tmp_path / "cases.png")
    panels = drawn[-1]
    assert list(panels) == ["case 1", "truth", "prediction"]
    truth_pixels, predicted_pixels = panels["truth"]["images"][0], panels["prediction"]["images"][0]
    untouched = panels["case 1"]["images"][0]
    changed_truth = np.any(np.abs(truth_pixels - untouched[..., None]) > 1e-6, axis=-1)
    changed_prediction = np.any(np.abs(predicted_pixels - untouched[..., None]) > 1e-6, axis=-1)
    np.testing.assert_array_equal(changed_truth, truth > 0)
    np.testing.assert_array_equal(changed_prediction, probabilities > 0.5)
