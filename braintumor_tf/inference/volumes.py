"""NIfTI volumes, predicted slice by slice.

A volume's intensities are stretched once, from the whole volume's 0.5th-99.5th percentiles,
so every slice of it is scaled alike. Slices are taken along the axial axis by default (the
array axis the affine maps closest to inferior-superior).

Classifier: a record per slice, and one answer per volume by this rule: count the slices the
classifier calls each tumour class, among slices its guard lets through (all slices for a
model without a guard); the volume gets the tumour class with the most slices if at least
``min_tumour_slices`` of them agree, otherwise ``notumor``. One confident slice can be noise;
a tumour spans several slices.

Slices that cannot be a brain MRI slice are never counted, guard or not: blank ones (one value
throughout after the volume's stretch: all zeros, all NaN) and noise-like ones (neighbouring
pixels uncorrelated, as no scan is). A volume none of whose slices is counted gets no class: its
record carries ``class_name: None`` and an ``error`` saying why, rather than a ``notumor`` that
nothing was looked at to earn.

Segmenter: a mask per slice at the slice's own size, stacked into a uint8 NIfTI volume with the
input's affine and header, so it overlays the scan in any viewer.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
from pathlib import Path

import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.intensity import percentile_scaled
from braintumor_tf.machine import environment_limit
from braintumor_tf.serving.predictor import Predictor

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MIN_TUMOUR_SLICES = 3
# Below this correlation between neighbouring pixels a slice is noise, not a scan (MRI slices,
# smooth tissue on a dark background, are well above 0.8; white or speckle noise is near 0).
MIN_NEIGHBOUR_CORRELATION = 0.5
NO_MRI_SLICE = "no slice of this volume looks like a brain MRI slice"
_INSTALL = "reading NIfTI needs nibabel: pip install 'braintumor_tf[medical]'"


def is_nifti(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def _nibabel():
    try:
        import nibabel
    except ImportError as error:
        raise ImportError(_INSTALL) from error
    return nibabel


def axial_axis(affine: np.ndarray) -> int:
    """The array axis whose direction is closest to inferior-superior."""
    codes = _nibabel().aff2axcodes(affine)
    return next(index for index, code in enumerate(codes) if code in ("S", "I"))


MAX_VOXELS_VARIABLE = "BRAINTUMOR_TF_MAX_VOLUME_VOXELS"
DEFAULT_MAX_VOXELS = 512 ** 3  # 134,217,728: 512 MB as float32; MRI volumes are 10-50 million


def max_volume_voxels() -> int:
    """The largest volume read: $BRAINTUMOR_TF_MAX_VOLUME_VOXELS, else 512³ voxels. A 255 KB
    .nii.gz can declare 640³ zeros: 1 GB as float32 and several GB while it is scaled."""
    return environment_limit(MAX_VOXELS_VARIABLE, DEFAULT_MAX_VOXELS, "voxels")


def read_volume(path: str | os.PathLike, axis: int | None = None):
    """(nibabel image, float32 slices [N, H, W] in 0..255, the slicing axis). A ``scheme://``
    volume (gs://, ...) is fetched whole through tf.io.gfile and read from memory.

    Bounded before any voxel is read: the file is opened as a regular file no larger than
    ``filesystem.max_file_bytes()`` (local or remote), and the header's shape must hold at most
    ``max_volume_voxels()`` voxels; a gzipped volume is decompressed as it is read, so a small
    .nii.gz declaring a huge volume costs its header only."""
    nibabel = _nibabel()
    with _opened(path) as stream:
        image = _lazy_image(nibabel, path, stream)
        voxels = int(np.prod([int(n) for n in image.shape], dtype=object))
        limit = max_volume_voxels()
        if voxels > limit:
            shape = " x ".join(str(int(n)) for n in image.shape)
            raise ValueError(f"{path}: a volume of {shape} = {voxels:,} voxels, over the "
                             f"{limit:,}-voxel limit; not read ({MAX_VOXELS_VARIABLE} raises it)")
        try:
            data = np.asarray(image.dataobj, dtype=np.float32)
        except Exception as error:  # nibabel raises several types for damaged files
            raise ValueError(f"{path}: not a readable NIfTI volume ({error})") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    axis = axial_axis(image.affine) if axis is None else int(axis)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    scaled = percentile_scaled(data)
    return image, np.moveaxis(scaled, axis, 0), axis


@contextlib.contextmanager
def _opened(path):
    """The volume's bytes as a seekable stream, decompressed on the fly when gzipped. Local
    files through ``open_regular`` (regular files only, the file-size cap before reading);
    remote ones through ``read_bytes`` (the cap on their listed size)."""
    raw = io.BytesIO(filesystem.read_bytes(path)) if filesystem.is_remote(path) \
        else filesystem.open_regular(path)
    with raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":  # gzip: a .nii.gz
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        else:
            yield raw


def _lazy_image(nibabel, path, stream):
    """The image with its header read and its voxels not yet (an ArrayProxy on ``stream``):
    NIfTI-1, else NIfTI-2."""
    errors = []
    for kind in (nibabel.Nifti1Image, nibabel.Nifti2Image):
        try:
            stream.seek(0)
            return kind.from_stream(stream)
        except Exception as error:  # nibabel raises several types for damaged files
            errors.append(error)
    raise ValueError(f"{path}: not a readable NIfTI volume ({errors[0]})") from errors[0]


def slice_problem(pixels: np.ndarray) -> str | None:
    """Why a scaled slice cannot be a brain MRI slice (``"blank"``, ``"noise-like"``), or None."""
    values = np.asarray(pixels, np.float64)
    if values.size == 0 or not values.max() > values.min():
        return "blank"
    centred = values - values.mean()
    variance = float(np.mean(centred * centred))
    pairs = []
    if values.shape[1] > 1:
        pairs.append(float(np.mean(centred[:, 1:] * centred[:, :-1])))
    if values.shape[0] > 1:
        pairs.append(float(np.mean(centred[1:] * centred[:-1])))
    if pairs and np.mean(pairs) / variance < MIN_NEIGHBOUR_CORRELATION:
        return "noise-like"
    return None


def volume_class(records: list[dict], min_tumour_slices: int = MIN_TUMOUR_SLICES) -> dict:
    """The per-volume answer from per-slice records (rule in the module docstring). With no
    slice counted: ``class_name`` None and a ``reason``."""
    counted = [r for r in records
               if r.get("in_distribution") is not False and not r.get("slice_problem")]
    if not counted:
        problems: dict[str, int] = {}
        for record in records:
            kind = record.get("slice_problem") or (
                "out of distribution" if record.get("in_distribution") is False else "other")
            problems[kind] = problems.get(kind, 0) + 1
        why = ", ".join(f"{count} {kind}" for kind, count in sorted(problems.items()))
        return {"class_name": None, "slices": len(records), "slices_counted": 0,
                "tumour_slices": {}, "excluded": problems,
                "reason": f"{NO_MRI_SLICE} ({len(records)} slices: {why or 'none'})"}
    counts: dict[str, int] = {}
    for record in counted:
        if record["class_name"] != "notumor":
            counts[record["class_name"]] = counts.get(record["class_name"], 0) + 1
    best = max(counts, key=lambda name: counts[name], default=None)
    chosen = best if best is not None and counts[best] >= min_tumour_slices else "notumor"
    return {"class_name": chosen, "slices": len(records), "slices_counted": len(counted),
            "tumour_slices": counts, "rule": f"most-called tumour class if >= "
                                              f"{min_tumour_slices} slices agree, else notumor"}


def predict_volume_classes(runtime, path, axis: int | None = None, batch_size: int = 32,
                           min_tumour_slices: int = MIN_TUMOUR_SLICES) -> dict:
    from braintumor_tf.inference.classification import class_record

    _, slices, axis = read_volume(path, axis)
    predictor = Predictor(runtime)
    records = []
    for start in range(0, len(slices), batch_size):
        chunk = [image[:, :, None] for image in slices[start:start + batch_size]]
        for offset, answer in enumerate(predictor.classify(chunk)):
            index = start + offset
            record = class_record(f"{path}[{index}]", runtime.class_names, answer.probabilities,
                                  ood_score=answer.ood_score,
                                  in_distribution=answer.in_distribution)
            record["slice"] = index
            record["slice_problem"] = slice_problem(slices[index])
            records.append(record)
    answer = volume_class(records, min_tumour_slices)
    return {"path": str(path), "axis": axis, "volume": answer, "slices": records,
            "error": answer.get("reason")}


def predict_volume_mask(runtime, path, out_path, axis: int | None = None,
                        batch_size: int = 8) -> dict:
    """Write the tumour mask volume (uint8 0/1, the input's affine and header)."""
    nibabel = _nibabel()
    image, slices, axis = read_volume(path, axis)
    masks = np.zeros(slices.shape, np.uint8)
    for start in range(0, len(slices), batch_size):
        chunk = [image[:, :, None] for image in slices[start:start + batch_size]]
        for offset, mask in enumerate(Predictor(runtime).segment(chunk)):
            masks[start + offset] = mask
    volume = np.moveaxis(masks, 0, axis)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(volume, image.affine, header), str(out_path))
    per_slice = masks.reshape(len(masks), -1).sum(axis=1)
    return {"path": str(path), "axis": axis, "mask": str(out_path),
            "tumour_voxels": int(masks.sum()), "slices_with_tumour": int(np.sum(per_slice > 0)),
            "slices": int(len(masks)), "error": None}
