"""NIfTI volumes predicted slice by slice: the axial axis, the per-volume rule, mask volumes."""

import json

import keras
import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")
from support import bright_segmenter  # noqa: E402

from braintumor_tf.commands.predict import predict  # noqa: E402
from braintumor_tf.inference.volumes import axial_axis, read_volume, volume_class  # noqa: E402

pytestmark = pytest.mark.usefixtures("float32_policy")
SIZE = 32


def _volume(tmp_path, name="scan.nii.gz"):
    """Depth along array axis 0, which this affine maps to superior: a bright cube inside."""
    data = np.full((12, 40, 36), 100.0, np.float32)
    data[4:8, 10:20, 12:24] = 3000.0
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    path = tmp_path / name
    nibabel.save(nibabel.Nifti1Image(data, affine), str(path))
    return path, data, affine


def test_axial_axis_and_scaling(tmp_path):
    path, data, affine = _volume(tmp_path)
    assert axial_axis(affine) == 0 and axial_axis(np.eye(4)) == 2
    _, slices, axis = read_volume(path)
    assert axis == 0 and slices.shape == (12, 40, 36)
    assert slices.max() == 255 and slices[0].max() == 0  # one stretch for the whole volume
    assert read_volume(path, axis=2)[1].shape == (36, 12, 40)
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        (tmp_path / "bad.nii").write_bytes(b"nonsense")
        read_volume(tmp_path / "bad.nii")


def test_volume_rule():
    def slice_record(name, inside=True):
        return {"class_name": name, "in_distribution": inside}

    two_gliomas = [slice_record("glioma")] * 2 + [slice_record("notumor")] * 10
    assert volume_class(two_gliomas)["class_name"] == "notumor"
    three = two_gliomas + [slice_record("glioma"), slice_record("pituitary"),
                           slice_record("pituitary", inside=False)] * 1
    answer = volume_class(three)
    assert answer["class_name"] == "glioma" and answer["tumour_slices"] == {"glioma": 3,
                                                                            "pituitary": 1}
    assert answer["slices"] == 15 and answer["slices_counted"] == 14
    flagged = [slice_record("meningioma", inside=False)] * 5
    nothing = volume_class(flagged)  # no slice counted: no answer, not notumor
    assert nothing["class_name"] is None and "5 out of distribution" in nothing["reason"]
    blank = [{**slice_record("notumor"), "slice_problem": "blank"}] * 4
    assert volume_class(blank)["class_name"] is None
    assert volume_class(blank + [slice_record("notumor")])["class_name"] == "notumor"


def test_blank_and_noise_slices_are_told_from_scan_like_ones():
    from support import base_image

    from braintumor_tf.inference.volumes import slice_problem

    rng = np.random.default_rng(0)
    assert slice_problem(np.zeros((40, 36))) == "blank"
    assert slice_problem(np.full((40, 36), 255.0)) == "blank"
    assert slice_problem(rng.uniform(0, 255, (64, 64))) == "noise-like"
    assert slice_problem(np.clip(rng.normal(128, 50, (64, 64)), 0, 255)) == "noise-like"
    for seed in range(5):
        assert slice_problem(base_image(seed, 64).astype(np.float32)) is None
        assert slice_problem(base_image(seed, 160).astype(np.float32)) is None


def _tiny_classifier(path):
    """A classifier without a guard: it answers something for any pixels."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1), name="pixels")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(4, activation="softmax", dtype="float32")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def test_a_volume_of_zeros_nan_or_noise_gets_no_class_and_a_failing_exit(tmp_path):
    from click.testing import CliRunner

    from braintumor_tf.cli import PREDICT_SOME_FAILED, main

    model = _tiny_classifier(tmp_path / "clf.keras")
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    hostile = {"zeros.nii.gz": np.zeros((40, 36, 10), np.float32),
               "nan.nii.gz": np.full((40, 36, 10), np.nan, np.float32),
               "noise.nii.gz": rng.uniform(0, 1000, (40, 36, 10)).astype(np.float32)}
    for name, data in hostile.items():
        nibabel.save(nibabel.Nifti1Image(data, affine), str(tmp_path / name))
    records = predict([tmp_path / name for name in hostile], model_path=model)
    for record in records:
        assert record["volume"]["class_name"] is None, record["path"]
        assert "no slice of this volume looks like a brain MRI slice" in record["error"]
        assert record["volume"]["slices_counted"] == 0
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "--model", str(model),
                                  *[str(tmp_path / name) for name in hostile]])
    assert result.exit_code == 1, result.output
    assert "nothing predicted" in result.output and "notumor" not in result.output
    good, _, _ = _volume(tmp_path)
    result = runner.invoke(main, ["predict", "--model", str(model), str(good),
                                  str(tmp_path / "zeros.nii.gz")])
    assert result.exit_code == PREDICT_SOME_FAILED, result.output


def test_segmenter_writes_a_mask_volume_and_classifier_answers_per_volume(tmp_path):
    path, data, affine = _volume(tmp_path)
    model = bright_segmenter(tmp_path / "seg.keras", SIZE)
    [record] = predict([path], model_path=model, masks_dir=tmp_path / "masks",
                       json_path=tmp_path / "out.json")
    mask_image = nibabel.load(record["mask"])
    mask = np.asarray(mask_image.dataobj)
    assert mask.shape == data.shape and mask.dtype == np.uint8
    np.testing.assert_allclose(mask_image.affine, affine)
    assert set(np.flatnonzero(mask.reshape(12, -1).sum(axis=1))) == {4, 5, 6, 7}
    cube = mask[4:8, 10:20, 12:24]
    assert cube.mean() > 0.9 and mask.sum() < 1.3 * cube.size
    assert record["slices_with_tumour"] == 4
    assert json.loads((tmp_path / "out.json").read_text())[0]["kind"] == "volume"

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1), name="pixels")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(4, activation="softmax", dtype="float32")(x)
    keras.Model(inputs, outputs).save(tmp_path / "clf.keras")
    [answer] = predict([path], model_path=tmp_path / "clf.keras", axis=2)
    assert answer["axis"] == 2 and len(answer["slices"]) == 36
    assert answer["volume"]["class_name"] in ("glioma", "meningioma", "notumor", "pituitary")
    assert answer["slices"][5]["path"].endswith("scan.nii.gz[5]")
    with pytest.raises(ValueError, match="--json, not --csv"):
        predict([path], model_path=tmp_path / "clf.keras", csv_path=tmp_path / "x.csv")
