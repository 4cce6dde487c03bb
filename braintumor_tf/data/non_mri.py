"""Images that are not brain MRI slices, made on the spot: what the out-of-distribution guard
must refuse (blank frames, noise, photographs, charts, text, CT-like slices).

Made here rather than downloaded so tests and the measurement script run anywhere. Photographs
are the two sample photos scikit-learn ships (cropped and turned) when it is installed, and
synthetic scenes (sky, ground, objects) otherwise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("blank", "noise", "photograph", "chart", "text", "ct_like")
_WORDS = ("patient", "report", "the", "results", "table", "figure", "scan", "total", "mean",
          "invoice", "2024", "summary", "page", "control", "value", "name", "date")


def _blank(rng, size):
    level = rng.choice([0, 0, 255, int(rng.integers(1, 255))])
    return np.full((size, size), level, np.uint8)


def _noise(rng, size):
    kind = rng.integers(3)
    if kind == 0:
        return rng.integers(0, 256, (size, size), dtype=np.uint8)
    if kind == 1:
        return np.clip(rng.normal(128, 50, (size, size)), 0, 255).astype(np.uint8)
    image = np.full((size, size), 128, np.uint8)
    speckle = rng.random((size, size))
    image[speckle < 0.1], image[speckle > 0.9] = 0, 255
    return image


def _sample_photos():
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return []
    return [np.asarray(Image.fromarray(photo).convert("L")) for photo in load_sample_images().images]


def _synthetic_scene(rng, size):
    image = Image.new("L", (size, size))
    draw = ImageDraw.Draw(image)
    horizon = int(size * rng.uniform(0.3, 0.7))
    for row in range(size):  # sky gradient above, textured ground below
        level = int(200 - 80 * row / size) if row < horizon else int(rng.uniform(60, 120))
        draw.line([(0, row), (size, row)], fill=level)
    for _ in range(rng.integers(3, 8)):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(size // 10, size // 3, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=int(rng.integers(0, 256)))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2))))


def _photograph(rng, size, photos):
    if photos and rng.random() < 0.7:
        photo = photos[rng.integers(len(photos))]
        crop = int(rng.uniform(0.4, 1.0) * min(photo.shape))
        top = rng.integers(0, photo.shape[0] - crop + 1)
        left = rng.integers(0, photo.shape[1] - crop + 1)
        patch = Image.fromarray(photo[top:top + crop, left:left + crop]).resize((size, size))
        return np.rot90(np.asarray(patch), rng.integers(4)).copy()
    return _synthetic_scene(rng, size)


def _chart(rng, size):
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    margin = size // 8
    draw.line([(margin, margin), (margin, size - margin), (size - margin, size - margin)], fill=0,
              width=2)
    count = int(rng.integers(3, 9))
    values = rng.uniform(0.1, 1.0, count)
    step = (size - 2 * margin) / count
    if rng.random() < 0.6:  # bars
        for index, value in enumerate(values):
            left = margin + index * step + step * 0.15
            top = size - margin - value * (size - 2 * margin)
            draw.rectangle([left, top, left + step * 0.7, size - margin],
                           fill=int(rng.integers(0, 200)))
    else:  # a line plot with markers
        points = [(margin + (index + 0.5) * step, size - margin - value * (size - 2 * margin))
                  for index, value in enumerate(values)]
        draw.line(points, fill=0, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=0)
    for tick in range(5):
        y = margin + tick * (size - 2 * margin) / 4
        draw.line([(margin - 4, y), (margin, y)], fill=0)
    return np.asarray(image)


def _text(rng, size):
    dark = rng.random() < 0.2
    image = Image.new("L", (size, size), 0 if dark else 255)
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(2, 12))
    while y < size - 10:
        words = " ".join(rng.choice(_WORDS, int(rng.integers(2, 6))))
        draw.text((int(rng.integers(2, 12)), y), words, fill=255 if dark else 0)
        y += int(rng.integers(11, 16))
    return np.asarray(image)


def _ct_like(rng, size):
    """An axial head CT at a brain window: bright skull, flat grey brain, black outside."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    ry, rx = rng.uniform(0.36, 0.45, 2)
    radius = np.sqrt((yy / ry) ** 2 + (xx / rx) ** 2)
    image = np.zeros((size, size))
    image[radius < 1.0] = 255  # skull saturates at a brain window
    image[radius < 0.9] = rng.uniform(90, 120)
    image[(np.abs(xx) < 0.03) & (radius < 0.5)] = rng.uniform(30, 50)  # falx / ventricles
    image += rng.normal(0, 6, image.shape) * (radius < 0.9)
    if rng.random() < 0.5:  # the scanner table under the head
        image[int(size * 0.93):int(size * 0.96), size // 8:-size // 8] = 180
    return np.clip(image, 0, 255).astype(np.uint8)


def non_mri_images(per_kind: int, size: int = 224, seed: int = 0,
                   kinds: tuple[str, ...] = KINDS) -> dict[str, np.ndarray]:
    """``{kind: uint8 [per_kind, size, size]}`` grey images, reproducible from ``seed``."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; choose from {KINDS}")
    if per_kind < 1 or size < 32:
        raise ValueError(f"per_kind must be >= 1 and size >= 32, got {per_kind!r}, {size!r}")
    rng = np.random.default_rng(seed)
    photos = _sample_photos() if "photograph" in kinds else []
    makers = {"blank": _blank, "noise": _noise, "chart": _chart, "text": _text,
              "ct_like": _ct_like,
              "photograph": lambda r, s: _photograph(r, s, photos)}
    return {kind: np.stack([makers[kind](rng, size) for _ in range(per_kind)]) for kind in kinds}
