"""DICOM slices: values, windows, inversion, series folders, patients, and clear errors."""

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid  # noqa: E402

from braintumor_tf.commands.predict import expand_inputs  # noqa: E402
from braintumor_tf.data.decode import DecodeError, read_image  # noqa: E402
from braintumor_tf.data.discover import discover_images  # noqa: E402
from braintumor_tf.data.subjects import subjects_for  # noqa: E402


def write_dicom(path, pixels, patient="P1", slope=1.0, intercept=0.0, window=None,
                photometric="MONOCHROME2", compressed=False):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.PatientID = patient
    dataset.Modality = "MR"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if compressed:
        from pydicom.encaps import encapsulate

        dataset.PixelData = encapsulate([b"\xff\xd8 not really a JPEG \xff\xd9"])
        dataset["PixelData"].VR = "OB"
    else:
        dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)
    return path


def ramp(height=32, width=40, top=4095):
    return np.tile(np.linspace(0, top, width), (height, 1)).astype(np.uint16)


def test_window_rescale_and_inversion(tmp_path):
    pixels = ramp()
    # Stored values 0..4095, real values 2 * stored - 1000; window centre 3000 width 2000 shows
    # real 2000..4000, i.e. stored 1500..2500.
    windowed = read_image(write_dicom(tmp_path / "w.dcm", pixels, slope=2.0, intercept=-1000,
                                      window=(3000, 2000)), channels=1)[..., 0]
    real = pixels[0].astype(np.float64) * 2 - 1000
    expected = np.clip(((real - 2999.5) / 1999 + 0.5) * 255, 0, 255)
    np.testing.assert_allclose(windowed[0], expected, atol=1e-3)
    assert windowed.min() == 0 and windowed.max() == 255
    # No window: the image's own percentiles; MONOCHROME1 is the negative.
    plain = read_image(write_dicom(tmp_path / "p.dcm", pixels), channels=1)[..., 0]
    inverted = read_image(write_dicom(tmp_path / "i.dcm", pixels, photometric="MONOCHROME1"),
                          channels=1)[..., 0]
    assert plain[0, 0] == 0 and plain[0, -1] == 255 and np.all(np.diff(plain[0]) >= 0)
    np.testing.assert_allclose(inverted, 255 - plain, atol=1e-4)
    assert read_image(tmp_path / "p.dcm", channels=3, image_size=16).shape == (16, 16, 3)


def test_series_folder_without_extensions_is_found_and_split_by_patient(tmp_path):
    series = tmp_path / "glioma"
    series.mkdir()
    for patient in ("A", "B"):
        for index in range(3):
            write_dicom(series / f"{patient}{index:04d}", ramp(top=1000 + index), patient=patient)
    (series / "README").write_text("not an image")
    found = discover_images([tmp_path])
    assert len(found) == 6 and {r.label for r in found} == {0}
    assert len(expand_inputs([series])) == 6
    subjects, report = subjects_for([r.path for r in found], "auto", [tmp_path])
    assert sorted(set(subjects)) == ["dicom:A", "dicom:B"]
    assert report.images_from_dicom_patient_id == 6 and report.csv_path is None
    assert subjects_for([r.path for r in found], "none", [tmp_path])[0] is None


def test_undecodable_pixel_data_is_a_per_file_error(tmp_path):
    path = write_dicom(tmp_path / "c.dcm", ramp(), compressed=True)
    with pytest.raises(DecodeError, match="cannot decode its pixel data"):
        read_image(path, channels=1)
    broken = tmp_path / "b.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")
    with pytest.raises(DecodeError, match="b.dcm"):
        read_image(broken, channels=1)
