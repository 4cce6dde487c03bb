"""Pictures drawn over an MRI slice: a tinted mask, an outlined mask, a Grad-CAM heatmap.

One place for the colour conventions (truth green, prediction red, outline yellow) so evaluation
overlays, ``predict --explain`` files and Grad-CAM pictures look alike. RGB uint8 in and out.
"""

from __future__ import annotations

import cv2
import numpy as np

TRUTH_COLOUR = (26, 230, 51)
PREDICTION_COLOUR = (255, 38, 26)
OUTLINE_COLOUR = (255, 255, 0)


def as_rgb(image) -> np.ndarray:
    """uint8 RGB [H, W, 3] from grey [H, W] or [H, W, 1] or RGB, values clipped to 0..255."""
    pixels = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB) if pixels.ndim == 2 else pixels[..., :3].copy()


def tinted(image, mask, colour=PREDICTION_COLOUR, alpha: float = 0.45) -> np.ndarray:
    """The slice with the pixels of ``mask`` (> 0.5) blended towards ``colour``."""
    rgb = as_rgb(image).astype(np.float32)
    inside = np.asarray(mask, np.float32).reshape(rgb.shape[:2]) > 0.5
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * np.asarray(colour, np.float32)
    return np.round(rgb).astype(np.uint8)


def mask_overlay(image, mask, alpha: float = 0.35) -> np.ndarray:
    """Predicted tumour tinted red and outlined in yellow (the outline shows small tumours)."""
    rgb = tinted(image, mask, PREDICTION_COLOUR, alpha)
    inside = (np.asarray(mask).reshape(rgb.shape[:2]) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, OUTLINE_COLOUR, max(1, round(max(rgb.shape[:2]) / 256)))
    return rgb


def heatmap_overlay(image, heatmap, alpha: float = 0.4) -> np.ndarray:
    """A 0..1 heatmap (any size) in the jet colour map over the slice."""
    rgb = as_rgb(image)
    heat = cv2.resize(np.asarray(heatmap, np.float32), (rgb.shape[1], rgb.shape[0]))
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    return cv2.addWeighted(rgb, 1.0 - alpha, cv2.cvtColor(colour, cv2.COLOR_BGR2RGB), alpha, 0.0)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                max(1, round(scale * 2)), cv2.LINE_AA)


def explained_picture(image, heatmap, caption: str, alpha: float = 0.4) -> np.ndarray:
    """The heatmap over the slice at the slice's own size, above a band with ``caption`` and
    the colour scale (blue: no weight, red: most weight for the class named)."""
    picture = heatmap_overlay(image, heatmap, alpha)
    width = picture.shape[1]
    scale = max(0.35, min(1.0, width / 640))
    line = int(28 * scale) + 6
    band = np.zeros((2 * line + 8, width, 3), np.uint8)
    _text(band, caption, (4, line - 6), scale)
    ramp = np.linspace(0, 255, max(width // 2, 2), dtype=np.float32).astype(np.uint8)[None, :]
    colours = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    bar_left, bar_width, bar_height = width // 4, width // 2, max(4, line // 3)
    band[line + 2:line + 2 + bar_height, bar_left:bar_left + bar_width] = cv2.resize(
        colours, (bar_width, bar_height), interpolation=cv2.INTER_NEAREST)
    _text(band, "low", (max(0, bar_left - int(40 * scale)), line + bar_height + 2), scale * 0.7)
    _text(band, "high", (bar_left + bar_width + 4, line + bar_height + 2), scale * 0.7)
    return np.concatenate([picture, band], axis=0)
