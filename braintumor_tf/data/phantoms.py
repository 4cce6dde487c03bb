"""Synthetic MRI-like head slices with tumours, the package's built-in default data.

Lets every pipeline, test and demo run without downloading a real dataset. The classes differ
the way radiologists tell them apart (location and appearance), so a model trained on phantoms
learns something meaningful while the task stays cheap to generate. Only numpy and OpenCV are
used so that generating data never pays the TensorFlow import cost.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

# Same tuple as braintumor_tf.data.discover.CLASS_NAMES (kept local so this module has no
# dependency on a module still being written; tests check the two agree).
CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")

# Bump when the rendering changes so stale datasets on disk are regenerated.
PHANTOM_VERSION = 1
METADATA_FILE = "phantoms.json"
MIN_IMAGE_SIZE = 32

_GLIOMA, _MENINGIOMA, _NOTUMOR, _PITUITARY = range(4)


def _check_int(name: str, value, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise: upsampled coarse noise is far cheaper than filtering full-size noise."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return field / (field.std() + 1e-6)


def _polar(u: np.ndarray, v: np.ndarray, uc: float, vc: float) -> tuple[np.ndarray, np.ndarray]:
    du, dv = u - uc, v - vc
    return np.sqrt(du * du + dv * dv), np.arctan2(dv, du)


def _nonempty(mask: np.ndarray, dist: np.ndarray, allowed) -> np.ndarray:
    """Tiny images can hold a lesion between pixel centres; tumour classes must keep a mask."""
    if not mask.any():
        mask.flat[np.argmin(np.where(allowed, dist, np.inf))] = True
    return mask


def _lobulated(rng: np.random.Generator, phi: np.ndarray, max_dev: float) -> np.ndarray:
    """Radius multiplier with a few low harmonics, giving an irregular but closed outline."""
    out = np.ones_like(phi)
    amps = rng.uniform(0.0, 1.0, 4) / np.sqrt(np.arange(2, 6))
    amps *= max_dev / amps.sum()
    for k, amp in zip(range(2, 6), amps, strict=True):
        out += amp * np.sin(k * phi + rng.uniform(0, 2 * np.pi))
    return out


def _render(label: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # Head ellipse in its own frame: u left-right, v top-bottom (+v towards the skull base).
    a = s * rng.uniform(0.33, 0.40)
    b = min(a * rng.uniform(1.06, 1.22), s * 0.45)
    cx = s / 2 + rng.uniform(-0.04, 0.04) * s
    cy = s / 2 + rng.uniform(-0.03, 0.03) * s
    theta = np.deg2rad(rng.uniform(-12, 12))
    ct, st = np.cos(theta), np.sin(theta)
    dx, dy = xx - cx, yy - cy
    u = (dx * ct + dy * st) / a
    v = (-dx * st + dy * ct) / b
    r = np.sqrt(u * u + v * v)

    r_skull_out = 1.0 - rng.uniform(0.035, 0.06)
    r_in = r_skull_out - rng.uniform(0.045, 0.065)  # inner skull surface (dura)
    r_brain = r_in - rng.uniform(0.012, 0.025)
    ub, vb = u / r_brain, v / r_brain
    rb = r / r_brain
    px_norm = 1.0 / (a * r_brain)  # one pixel in brain-normalised units

    img = np.zeros((size, size), np.float32)
    # Scalp, dark outer table, bright diploe, dark inner table, CSF rim.
    img[r < 1.0] = rng.uniform(0.45, 0.62)
    img[r < r_skull_out] = 0.1
    img[r < r_skull_out - 0.008] = rng.uniform(0.72, 0.9)
    img[r < r_in + 0.008] = 0.1
    img[r < r_in] = rng.uniform(0.08, 0.16)
    scalp = (r < 1.0) & (r >= r_skull_out)
    img[scalp] *= 1.0 + 0.12 * _smooth_field(rng, size, 12)[scalp]

    brain = rb < 1.0
    grey = rng.uniform(0.36, 0.46)
    white = grey + rng.uniform(0.07, 0.14)
    gyri = _smooth_field(rng, size, max(8, size // 7))
    low = _smooth_field(rng, size, 4)
    wm = rb < 0.7 + 0.1 * gyri + 0.05 * low
    par = np.where(wm, white, grey).astype(np.float32)
    par *= 1.0 + 0.06 * low
    # Sulci: near-zero crossings of band-pass noise look like folded CSF lines in the cortex.
    sulcus = np.clip(1.0 - np.abs(gyri) / 0.3, 0.0, 1.0) * np.clip((rb - 0.55) / 0.15, 0.0, 1.0)
    par = par * (1.0 - 0.8 * sulcus) + 0.1 * 0.8 * sulcus
    img = np.where(brain, par, img)

    lesion = np.zeros((size, size), bool)
    if label == _GLIOMA:  # edema first so the ventricles stay dark on top of it
        lesion, dist, outline = _draw_glioma(img, ub, vb, brain, grey, rng, size)
    _draw_ventricles(img, ub, vb, brain, lesion, px_norm, rng)
    if label == _MENINGIOMA:
        lesion = _draw_meningioma(img, u, v, r, r_in, r_brain, white, rng, size)
    elif label == _PITUITARY:
        lesion = _draw_pituitary(img, ub, vb, white, rng, size)
    elif label == _GLIOMA:
        _fill_glioma(img, lesion, dist, outline, white, rng, size)

    # Small bright vessels in every class so "bright spot" alone is not the answer.
    for _ in range(rng.integers(0, 4)):
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.85)
        vx = cx + a * r_brain * rad * np.cos(ang)
        vy = cy + b * r_brain * rad * np.sin(ang)
        cv2.circle(img, (int(vx), int(vy)), 1, float(rng.uniform(0.6, 0.85)), -1)

    # Acquisition effects: partial-volume blur, bias field, contrast/gamma, Rician noise.
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.9))
    img *= 1.0 + rng.uniform(0.05, 0.2) * _smooth_field(rng, size, 3)
    img = np.clip(img, 0.0, None) ** rng.uniform(0.75, 1.3) * rng.uniform(0.8, 1.05)
    sigma = rng.uniform(0.012, 0.04)
    noise = rng.standard_normal((2, size, size), dtype=np.float32) * sigma
    img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, lesion.astype(np.uint8)


def _draw_ventricles(img, ub, vb, brain, lesion, px_norm, rng) -> None:
    """Dark midline CSF spaces: lateral ventricles, third ventricle, interhemispheric fissure."""
    scale = rng.uniform(0.7, 1.3)
    csf = float(rng.uniform(0.06, 0.14))
    shift_u = rng.uniform(-0.03, 0.03)
    shift_v = rng.uniform(-0.08, 0.04)
    vent = np.zeros(ub.shape, bool)
    for side in (-1.0, 1.0):
        # Frontal horns meet at the septum; bodies diverge towards the occipital horns.
        ang = -side * np.deg2rad(rng.uniform(8, 20))
        du = ub - (shift_u + side * 0.1 * scale)
        dv = vb - shift_v
        pu = du * np.cos(ang) + dv * np.sin(ang)
        pv = -du * np.sin(ang) + dv * np.cos(ang)
        w, h = rng.uniform(0.045, 0.065) * scale, rng.uniform(0.24, 0.32) * scale
        vent |= (pu / w) ** 2 + (pv / h) ** 2 < 1.0
    third = ((ub - shift_u) / max(0.018, 1.2 * px_norm)) ** 2
    vent |= third + ((vb - shift_v - 0.28 * scale) / (0.08 * scale)) ** 2 < 1.0
    if rng.random() < 0.8:
        half = max(0.5, rng.uniform(0.4, 0.9)) * px_norm
        fissure = (np.abs(ub - shift_u) < half) & (np.abs(vb - shift_v) > 0.4 * scale)
        img[fissure & brain] = img[fissure & brain] * 0.4 + 0.6 * csf
    vent &= brain & ~lesion
    img[vent] = csf


def _draw_pituitary(img, ub, vb, white, rng, size) -> np.ndarray:
    """Small homogeneous bright oval at the sella: midline, bottom-centre of the brain."""
    uc, vc = rng.uniform(-0.04, 0.04), rng.uniform(0.58, 0.72)
    rad = rng.uniform(0.07, 0.13)
    aspect = rng.uniform(0.8, 1.25)
    ell = ((ub - uc) / (rad * aspect)) ** 2 + ((vb - vc) / rad) ** 2
    mask = _nonempty(ell < 1.0, ell, True)
    _paint_homogeneous(img, mask, white, rng, size)
    return mask


def _draw_meningioma(img, u, v, r, r_in, r_brain, white, rng, size) -> np.ndarray:
    """Extra-axial lens: a disc centred near the dura, clipped by the inner skull surface."""
    # Keep away from the skull base so it is not confused with the sella location.
    phi = np.deg2rad(90 + rng.uniform(40, 320))
    depth_out = rng.uniform(-0.03, 0.06)
    rad = rng.uniform(0.15, 0.28)
    rad = max(rad, depth_out + 0.1)
    uc, vc = (r_in + depth_out) * np.cos(phi), (r_in + depth_out) * np.sin(phi)
    dist, _ = _polar(u, v, uc, vc)
    mask = _nonempty((dist < rad) & (r < r_in), dist, r < r_in)
    if rng.random() < 0.4:  # mild peritumoural edema
        halo = (dist < rad * rng.uniform(1.2, 1.5)) & (r < r_brain) & ~mask
        img[halo] = img[halo] * 0.75 + 0.25 * 0.2
    if rng.random() < 0.5:  # dural tail along the inner skull
        ang = np.arctan2(v, u)
        dang = np.angle(np.exp(1j * (ang - phi)))
        tail = (np.abs(dang) < rad * rng.uniform(1.3, 1.9)) & (r < r_in) & (r > r_in - 0.02)
        img[tail] = rng.uniform(0.6, 0.8)
    _paint_homogeneous(img, mask, white, rng, size)
    return mask


def _paint_homogeneous(img, mask, white, rng, size) -> None:
    # Relative to white matter so the lesion stays conspicuous whatever the tissue contrast.
    level = white + rng.uniform(0.25, 0.42)
    texture = 1.0 + 0.03 * _smooth_field(rng, size, 10)
    img[mask] = (level * texture)[mask]


def _draw_glioma(img, ub, vb, brain, grey, rng, size):
    """Pick an intra-axial outline and paint the surrounding hypo-intense edema."""
    rad = rng.uniform(0.12, 0.24)
    max_dev = rng.uniform(0.12, 0.3)
    reach = rad * (1.0 + max_dev) * 1.1
    rho = rng.uniform(0.05, max(0.06, 0.72 - reach))
    ang = rng.uniform(0, 2 * np.pi)
    uc, vc = rho * np.cos(ang), rho * np.sin(ang)
    dist, phi = _polar(ub, vb, uc, vc)
    outline = rad * _lobulated(rng, phi, max_dev) * (1.0 + 0.06 * _smooth_field(rng, size, 8))
    mask = _nonempty((dist < outline) & brain, dist, brain)
    edema = (dist < outline * rng.uniform(1.3, 1.9)) & brain & ~mask
    e_level = grey * rng.uniform(0.45, 0.65)
    img[edema] = img[edema] * 0.35 + 0.65 * e_level
    return mask, dist, outline


def _fill_glioma(img, mask, dist, outline, white, rng, size) -> None:
    """Heterogeneous interior: enhancing rim, mottled tissue, often a dark necrotic core."""
    frac = dist / np.maximum(outline, 1e-6)
    mottle = _smooth_field(rng, size, max(6, size // 12))
    rim_level = white + rng.uniform(0.18, 0.35)
    inner = rng.uniform(0.35, 0.6)
    val = inner * (1.0 + 0.15 * mottle)
    rim = frac > rng.uniform(0.55, 0.8)
    val = np.where(rim, rim_level * (1.0 + 0.06 * mottle), val)
    if rng.random() < 0.7:
        core = frac < rng.uniform(0.3, 0.55)
        val = np.where(core, rng.uniform(0.1, 0.25) * (1.0 + 0.1 * mottle), val)
    img[mask] = val[mask]


def _phantom_rng(seed: int, label: int, index: int) -> np.random.Generator:
    # Keyed per image so image k of a class is the same whatever images_per_class is.
    return np.random.default_rng([seed, label, index])


def generate_phantoms(
    images_per_class: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced, class-interleaved arrays: images/masks uint8 [N, H, W], labels int64 [N]."""
    per_class = _check_int("images_per_class", images_per_class, 1)
    size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    n = per_class * len(CLASS_NAMES)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    labels = np.tile(np.arange(len(CLASS_NAMES), dtype=np.int64), per_class)
    for i, label in enumerate(labels):
        rng = _phantom_rng(seed, int(label), i // len(CLASS_NAMES))
        images[i], masks[i] = _render(int(label), size, rng)
    return images, masks, labels


def _stem(label: int, index: int) -> str:
    return f"phantom_{CLASS_NAMES[label]}_{index:05d}"


def _is_complete(root: Path, params: dict, masks_root: Path | None) -> bool:
    try:
        if json.loads((root / METADATA_FILE).read_text()) != params:
            return False
    except (OSError, ValueError):
        return False
    per_class = params["images_per_class"]
    for label, name in enumerate(CLASS_NAMES):
        expected = {f"{_stem(label, i)}.png" for i in range(per_class)}
        class_dir = root / name
        if not class_dir.is_dir() or set(os.listdir(class_dir)) != expected:
            return False
        if masks_root is not None and not all((masks_root / e).is_file() for e in expected):
            return False
    return True


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)  # imencode + write handles non-ASCII paths
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    path.write_bytes(buf.tobytes())


def _sibling_tmp(final: Path) -> Path:
    # Same parent as final so the closing os.replace is a rename, not a cross-device copy.
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace final with tmp; an old copy is moved aside first so final is never half-written."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_phantom_dataset(
    root: str | os.PathLike,
    images_per_class: int,
    image_size: int,
    seed: int,
    masks_root: str | os.PathLike | None = None,
) -> Path:
    """Write root/<class>/phantom_<class>_<index>.png (+ 0/255 masks); no-op if already there."""
    per_class = _check_int("images_per_class", images_per_class, 1)
    size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    root = Path(root).absolute()
    masks_dir = Path(masks_root).absolute() if masks_root is not None else None
    params = {
        "version": PHANTOM_VERSION,
        "images_per_class": per_class,
        "image_size": size,
        "seed": seed,
        "classes": list(CLASS_NAMES),
    }
    if _is_complete(root, params, masks_dir):
        return root
    if root.exists() and any(root.iterdir()) and not (root / METADATA_FILE).exists():
        raise ValueError(f"refusing to overwrite non-phantom directory {str(root)!r}")

    if masks_dir is not None and masks_dir.exists():
        foreign = [p for p in masks_dir.iterdir() if not p.name.startswith("phantom_")]
        if foreign:
            raise ValueError(f"refusing to overwrite non-phantom directory {str(masks_dir)!r}")

    tmp_root = _sibling_tmp(root)
    tmp_masks = None
    try:
        if masks_dir is not None:
            tmp_masks = _sibling_tmp(masks_dir)
        for name in CLASS_NAMES:
            (tmp_root / name).mkdir()
        for label, name in enumerate(CLASS_NAMES):
            for i in range(per_class):
                image, mask = _render(label, size, _phantom_rng(seed, label, i))
                stem = _stem(label, i)
                _write_png(tmp_root / name / f"{stem}.png", image)
                if tmp_masks is not None:
                    _write_png(tmp_masks / f"{stem}.png", mask * np.uint8(255))
        (tmp_root / METADATA_FILE).write_text(json.dumps(params, indent=2) + "\n")
        # Masks first: the images root (with its metadata) is the completion marker.
        if tmp_masks is not None:
            _swap_in(tmp_masks, masks_dir)
            tmp_masks = None
        _swap_in(tmp_root, root)
        tmp_root = None
    finally:
        for leftover in (tmp_root, tmp_masks):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return root
