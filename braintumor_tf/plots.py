"""PNG figures for training runs and evaluation reports.

Figures are built with the object-oriented ``matplotlib.figure.Figure`` API and rendered by the
Agg canvas, so nothing touches pyplot's global figure registry or the interactive backend: the
module is safe on headless machines and inside worker threads, and a figure is released as soon
as the function returns. No TensorFlow import, so plots can be remade from saved JSON.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from braintumor_tf.config import DEFAULT_SEGMENTATION_THRESHOLD
from braintumor_tf.overlays import PREDICTION_COLOUR, TRUTH_COLOUR, tinted

DPI = 100
MAX_PNG_BYTES = 180 * 1024
_LR_KEYS = ("learning_rate", "lr")
_FAMILY_ORDER = ("loss", "accuracy")


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    if buffer.tell() > MAX_PNG_BYTES and image.mode == "RGB":
        buffer = io.BytesIO()
        image.quantize(colors=256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """Keep PNGs under the size budget: grey figures are stored as 8-bit L, colour as RGB, then
    as a 256-colour palette, and only busy image grids are finally downscaled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(figure.canvas.buffer_rgba())[..., :3])
    figure.clear()
    if np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]):
        image = Image.fromarray(np.ascontiguousarray(rgb[..., 0]), mode="L")
    else:
        image = Image.fromarray(rgb, mode="RGB")
    data = _encode(image)
    for _ in range(8):
        if len(data) <= MAX_PNG_BYTES:
            break
        size = (max(1, round(image.width * 0.8)), max(1, round(image.height * 0.8)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        data = _encode(image)
    path.write_bytes(data)
    return path


def _placeholder(path: str | os.PathLike, message: str) -> Path:
    """Still write a file when there is nothing to draw, so callers need no special case."""
    figure = _new_figure(5, 2)
    figure.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return _save(figure, path)


def plot_confusion_matrix(
    matrix,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
    normalize: bool = True,
) -> Path:
    """Cells show counts plus row percentages; with ``normalize`` the colour follows the
    percentages so that rare classes are as readable as common ones."""
    counts = np.asarray(matrix)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"matrix must be {k}x{k} for {k} class names, got {counts.shape}")
    if np.any(counts < 0):
        raise ValueError("confusion matrix counts must be non-negative")
    row_sums = counts.sum(axis=1, keepdims=True).astype(np.float64)
    fraction = np.zeros(counts.shape, dtype=np.float64)
    np.divide(counts, row_sums, out=fraction, where=row_sums > 0)

    colour = fraction if normalize else counts.astype(np.float64)
    vmax = 1.0 if normalize else max(float(colour.max()), 1.0)
    size = 2.0 + 1.1 * k
    figure = _new_figure(size + 1.0, size)
    axes = figure.add_subplot()
    image = axes.imshow(colour, cmap="Blues", vmin=0.0, vmax=vmax)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04,
                    label="row fraction" if normalize else "count")
    for i in range(k):
        for j in range(k):
            text_colour = "white" if colour[i, j] > 0.6 * vmax else "black"
            axes.text(j, i, f"{int(counts[i, j])}\n{100.0 * fraction[i, j]:.1f}%",
                      ha="center", va="center", fontsize=9, color=text_colour)
    axes.set_xticks(range(k), labels=list(class_names), rotation=30, ha="right")
    axes.set_yticks(range(k), labels=list(class_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "Confusion matrix")
    figure.tight_layout()
    return _save(figure, path)


def _history_families(history: Mapping[str, Sequence[float]]) -> dict[str, list[str]]:
    """Group ``x``/``val_x`` together; learning rate and other extras get their own panel."""
    families: dict[str, list[str]] = {}
    for key, values in history.items():
        if values is None or len(values) == 0:
            continue
        base = key[4:] if key.startswith("val_") else key
        families.setdefault(base, []).append(key)
    ordered = [name for name in _FAMILY_ORDER if name in families]
    ordered += [name for name in families if name not in _FAMILY_ORDER and name not in _LR_KEYS]
    ordered += [name for name in families if name in _LR_KEYS]
    return {name: sorted(families[name], key=lambda k: k.startswith("val_")) for name in ordered}


def plot_history(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """One panel per metric family, train vs validation, so over-fitting is visible at a glance."""
    families = _history_families(history)
    if not families:
        return _placeholder(path, "no training history recorded")
    columns = min(len(families), 3)
    rows = math.ceil(len(families) / columns)
    figure = _new_figure(4.2 * columns, 3.2 * rows)
    for index, (family, keys) in enumerate(families.items(), start=1):
        axes = figure.add_subplot(rows, columns, index)
        for key in keys:
            values = np.asarray(history[key], dtype=np.float64)
            epochs = np.arange(1, values.size + 1)
            label = "validation" if key.startswith("val_") else "train"
            axes.plot(epochs, values, marker="o" if values.size < 30 else None,
                      markersize=3, label=label)
        if family in _LR_KEYS:
            values = np.asarray(history[keys[0]], dtype=np.float64)
            if np.all(values > 0) and values.max() / values.min() > 100:
                axes.set_yscale("log")
        else:
            axes.legend(fontsize=8)
        axes.set_title(family)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_learning_rate(
    values, path: str | os.PathLike, steps_per_epoch: int | None = None
) -> Path:
    """Shows the schedule actually applied (warm-up, decay) against optimizer steps."""
    rates = np.asarray(values, dtype=np.float64)
    if rates.ndim != 1:
        raise ValueError(f"learning-rate values must be 1-D, got shape {rates.shape}")
    if steps_per_epoch is not None and steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if rates.size == 0:
        return _placeholder(path, "no learning-rate values")
    figure = _new_figure(6.5, 3.5)
    axes = figure.add_subplot()
    axes.plot(np.arange(rates.size), rates, linewidth=1.5)
    positive = rates[rates > 0]
    if positive.size == rates.size and positive.max() / positive.min() > 100:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("learning rate")
    axes.grid(alpha=0.3)
    if steps_per_epoch:
        spe = float(steps_per_epoch)
        top = axes.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch")
    axes.set_title("Learning-rate schedule", pad=24 if steps_per_epoch else 6)
    figure.tight_layout()
    return _save(figure, path)


def _displayable(image) -> tuple[np.ndarray, bool]:
    """Bring uint8 or float images to float [0, 1]; float data above 1 is taken as 0-255."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    array = array.astype(np.float64)
    if np.asarray(image).dtype == np.uint8 or np.nanmax(array) > 1.0:
        array = array / 255.0
    return np.clip(np.nan_to_num(array), 0.0, 1.0), array.ndim == 2


def plot_image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None,
    path: str | os.PathLike,
    columns: int = 8,
) -> Path:
    """Visual sanity check of what the model is fed (after loading/augmentation)."""
    if len(images) == 0:
        raise ValueError("no images to plot")
    if titles is not None and len(titles) not in (0, len(images)):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    # Keep the canvas (and therefore the PNG) small however many images are passed.
    cell = min(1.6, 11.0 / columns, 10.0 / rows)
    figure = _new_figure(cell * columns, cell * rows + 0.2)
    for index, image in enumerate(images):
        pixels, grey = _displayable(image)
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(pixels, cmap="gray" if grey else None, vmin=0.0, vmax=1.0,
                    interpolation="antialiased")
        axes.set_axis_off()
        if titles:
            axes.set_title(str(titles[index]), fontsize=7)
    figure.tight_layout(pad=0.3)
    return _save(figure, path)




def plot_segmentation_cases(
    cases: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]],
    path: str | os.PathLike,
    threshold: float = DEFAULT_SEGMENTATION_THRESHOLD,
) -> Path:
    """One row per case: the image, the truth (green) and the thresholded prediction (red) on it.

    A case is (image 0..255 [H, W(, 1)], truth 0/1 [H, W(, 1)], probabilities [H, W(, 1)], caption).
    """
    if not cases:
        return _placeholder(path, "no cases to show")
    images, titles = [], []
    for image, truth, probabilities, caption in cases:
        predicted = np.asarray(probabilities) > threshold
        images += [image, tinted(image, truth, TRUTH_COLOUR),
                   tinted(image, predicted, PREDICTION_COLOUR)]
        titles += [caption, "truth", "prediction"]
    return plot_image_grid(images, titles, path, columns=3)
