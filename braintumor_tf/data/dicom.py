"""DICOM slices as the rest of the package sees images: float32 grey 0..255.

Hospital data comes as DICOM: stored values need the file's rescale slope/intercept, a
MONOCHROME1 image is inverted (high values dark), and the file's own window (centre/width) is
how its radiologist looked at it; without one, the image's 0.5th-99.5th percentiles set the
range (as for 16-bit PNG/TIFF, data.intensity.percentile_scaled). ``PatientID`` is the subject, so
a split of DICOM data is by patient without a subjects CSV. pydicom is an optional dependency
(``pip install 'braintumor_tf[medical]'``); compressed transfer syntaxes need the decoder
plugins pydicom names, and a file that needs a missing one is a per-file error.
"""

from __future__ import annotations

import io
import os
import stat

import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.intensity import percentile_scaled

DICOM_EXTENSIONS = (".dcm", ".dicom")
_INSTALL = "reading DICOM needs pydicom: pip install 'braintumor_tf[medical]'"


def is_dicom_bytes(data: bytes) -> bool:
    """Part 10 files carry "DICM" after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Sniffs the first 132 bytes. Only regular files of at least that size are opened: folder
    scans call this on every file without an extension, and a FIFO there would block the open
    forever (filesystem.open_regular), a /proc file is empty by its size."""
    try:
        if filesystem.is_remote(path):
            return is_dicom_bytes(filesystem.read_bytes(path, 132))
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size < 132:
            return False
        return is_dicom_bytes(filesystem.read_bytes(path, 132))
    except (OSError, ValueError):
        return False


def _pydicom():
    try:
        import pydicom
    except ImportError as error:  # optional dependency
        raise ImportError(_INSTALL) from error
    return pydicom


def _first(value) -> float | None:
    """Window centre/width may be multi-valued; the first pair is the default view."""
    if value is not None and not isinstance(value, str | bytes) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def decode_dicom(data: bytes, name: str, error_type=ValueError) -> np.ndarray:
    """float32 [H, W] (grey) or [H, W, 3] (RGB DICOM) in 0..255."""
    pydicom = _pydicom()
    from braintumor_tf.data.image_header import max_image_pixels

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # pydicom raises many types for damaged files
        raise error_type(f"{name}: not a readable DICOM file ({error})") from error
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows * columns == 0:
        raise error_type(f"{name}: DICOM file without an image (no Rows/Columns)")
    if rows * columns > max_image_pixels():
        raise error_type(f"{name}: {columns} x {rows} pixels declared, more than the "
                         f"{max_image_pixels():,}-pixel limit")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise error_type(f"{name}: a {frames}-frame DICOM; give single-slice files (one file "
                         "per slice, as scanners export a series)")
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        syntax = getattr(dataset.file_meta, "TransferSyntaxUID", None) if hasattr(
            dataset, "file_meta") else None
        label = getattr(syntax, "name", str(syntax))
        raise error_type(f"{name}: cannot decode its pixel data ({label}): {error}. Compressed "
                         "transfer syntaxes need pydicom's decoder plugins, e.g. pip install "
                         "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg") from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or pixels.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8:
            return percentile_scaled(pixels)
        return pixels.astype(np.float32)
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, dataset), np.float32)
    centre, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if centre is not None and width is not None and width > 1:
        # DICOM's linear window (PS3.3 C.11.2.1.2).
        scaled = np.clip(((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0, 0.0, 255.0)
    else:
        scaled = percentile_scaled(values)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.astype(np.float32)


def dicom_patient_id(path: str | os.PathLike) -> str:
    """The file's PatientID ("" when absent or the file is not DICOM)."""
    if not is_dicom_file(path):
        return ""
    try:
        pydicom = _pydicom()
    except ImportError:  # the file itself is then reported as unreadable
        return ""
    # pydicom reads local files itself; a remote one is fetched whole (one slice, well under 1 MB).
    source = os.fspath(path)
    try:
        if filesystem.is_remote(source):
            source = io.BytesIO(filesystem.read_bytes(source))
        dataset = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # an unreadable file is reported by the image check, not here
        return ""
    return str(dataset.get("PatientID", "") or "").strip()
