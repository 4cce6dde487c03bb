"""Renderings of one slice: the in-model percentile stretch, the rendering augmentation and the
shifts of ``evaluate --shifts`` / ``--labels``."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from support import base_image, run_python, write_png

from braintumor_tf.config import load_config
from braintumor_tf.custom_objects import load_model
from braintumor_tf.data.augment import make_batch_regulariser
from braintumor_tf.data.decode import decode_bytes
from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.data.intensity import percentile_scaled
from braintumor_tf.evaluation.shifts import SHIFT_NAMES, SHIFTS, select_shifts, shifted_pixels
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.export.tflite import convert_to_tflite
from braintumor_tf.models.classifier import build_classifier
from braintumor_tf.models.layers import PercentileStretch

# ---- the percentile stretch inside the model ---------------------------------------------------


def test_stretch_equals_the_decoder_stretch_of_16_bit_files():
    rng = np.random.default_rng(0)
    images = (rng.random((3, 24, 24, 1)) ** 2 * 180 + 10).astype(np.float32)
    images[2] = 42.0  # flat: nothing to stretch
    stretched = np.asarray(PercentileStretch()(images))
    for image, got in zip(images, stretched, strict=True):
        np.testing.assert_allclose(got, percentile_scaled(image), atol=1e-3)
    assert stretched[2].max() == 0.0
    assert stretched[0].min() == 0.0 and stretched[0].max() == 255.0


def test_8_bit_slice_and_its_16_bit_copy_reach_the_network_alike():
    slice_ = base_image(3, 48)
    ok, png16 = cv2.imencode(".png", slice_.astype(np.uint16) * 257)
    eight = decode_bytes(cv2.imencode(".png", slice_)[1].tobytes(), 1, 32)
    sixteen = decode_bytes(png16.tobytes(), 1, 32)
    assert np.abs(eight - sixteen).max() > 5  # the decoder alone treats them differently
    layer = PercentileStretch()
    difference = np.abs(np.asarray(layer(eight[None])) - np.asarray(layer(sixteen[None])))
    # Only pixels at the clipped extremes differ (the 16-bit file was clipped before resizing).
    assert difference.mean() < 0.5 and difference.max() < 8.0


def test_stretch_validates_and_round_trips():
    with pytest.raises(ValueError, match="low < high"):
        PercentileStretch(low=50, high=10)
    layer = PercentileStretch(low=1.0, high=99.0, name="p")
    clone = PercentileStretch.from_config(layer.get_config())
    assert (clone.low, clone.high, clone.name) == (1.0, 99.0, "p")


@pytest.mark.usefixtures("float32_policy")
def test_percentile_classifier_saves_and_converts_to_litert(tmp_path):
    config = load_config(None, ["model.intensity=percentile", "model.block_filters=[8, 16]",
                                "model.block_kernel_sizes=[3, 3]", "model.stem_filters=8",
                                "model.block_downsample=[true, false]", "model.dense_units=16"])
    model = build_classifier(config.model, 32, 1)
    assert model.get_layer("percentile_stretch") is not None
    pixels = np.random.default_rng(1).uniform(0, 120, (4, 32, 32, 1)).astype(np.float32)
    want = model.predict(pixels, verbose=0)
    # A linear change of contrast is undone by the stretch: the same answer.
    np.testing.assert_allclose(model.predict(pixels * 1.8 + 20, verbose=0), want, atol=1e-4)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(load_model(tmp_path / "m.keras").predict(pixels, verbose=0), want,
                               atol=1e-6)
    convert_to_tflite(model, tmp_path / "m.tflite")
    got = load_runtime(tmp_path / "m.tflite", class_names=CLASS_NAMES).predict(pixels)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_mixed_precision_keeps_the_stretch_in_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = PercentileStretch()
        out = layer(np.linspace(0, 255, 64, dtype=np.float32).reshape(1, 8, 8, 1))
        assert layer.compute_dtype == "float32" and out.dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


# ---- rendering augmentation -------------------------------------------------------------------


def _batch():
    images = np.stack([base_image(seed, 32) for seed in range(8)])[..., None].astype(np.float32)
    return images, np.eye(4, dtype=np.float32)[np.arange(8) % 4]


def test_quarter_turns_cover_all_four_orientations_and_keep_pixels():
    images, labels = _batch()
    regularise = make_batch_regulariser({"rotate90": True}, seed=0)
    seen = set()
    for step in range(6):
        turned, same_labels = regularise(tf.constant(images), tf.constant(labels),
                                         tf.constant([step, 1], tf.int64))
        np.testing.assert_array_equal(same_labels, labels)
        for original, result in zip(images, turned.numpy(), strict=True):
            matches = [k for k in range(4) if np.array_equal(np.rot90(original, k), result)]
            assert matches, "not a quarter turn of the input"
            seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_window_resample_and_jpeg_change_pixels_within_range_reproducibly():
    images, labels = _batch()
    settings = {"window": 0.2, "resample": 1.0, "jpeg": 1.0}
    regularise = make_batch_regulariser(settings, seed=3)
    seed = tf.constant([5, 9], tf.int64)
    first = regularise(tf.constant(images), tf.constant(labels), seed)[0].numpy()
    again = regularise(tf.constant(images), tf.constant(labels), seed)[0].numpy()
    np.testing.assert_array_equal(first, again)
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 255
    assert np.abs(first - images).mean() > 2.0
    # each kind alone moves the pixels
    for name, value in settings.items():
        alone = make_batch_regulariser({name: value}, seed=3)(
            tf.constant(images), tf.constant(labels), seed)[0].numpy()
        assert np.abs(alone - images).mean() > 0.5, name
    with pytest.raises(ValueError, match="augment.window"):
        load_config(None, ["data.augment.window=0.6"])


# ---- shifts -------------------------------------------------------------------------------------


def test_every_shift_gives_a_decodable_file_that_differs_where_it_should():
    original = np.stack([base_image(7, 40)] * 3, axis=-1).astype(np.float32)
    original[:8, :12] = 0  # an asymmetric corner, so every turn and flip is visible
    for shift in SHIFTS:
        pixels = shifted_pixels(original, shift, channels=1, image_size=None)
        if shift.geometry is not None:
            np.testing.assert_allclose(pixels[..., 0], shift.geometry(original[..., 0]), atol=1)
        elif shift.name == "sixteen_bit":  # stretched by its own percentiles, as 16-bit files are
            np.testing.assert_allclose(pixels[..., 0], percentile_scaled(original[..., 0]), atol=1)
        else:
            assert np.abs(pixels[..., 0] - original[..., 0]).mean() > 0.1, shift.name
    assert select_shifts("rotate90,jpeg_30")[1].name == "jpeg_30"
    assert len(select_shifts("all")) == len(SHIFT_NAMES)
    with pytest.raises(ValueError, match="unknown shift"):
        select_shifts("rotate45")


@pytest.fixture(scope="module")
def labelled_table(tmp_path_factory):
    """Two sources: class folders under data/ and a labels table of other slices."""
    root = tmp_path_factory.mktemp("shifts")
    rows = ["path,class"]
    for index in range(8):
        label = CLASS_NAMES[index % 4]
        write_png(root / f"data/setA/{label}/{index}.png", base_image(index, 40))
        write_png(root / f"tables/images/{index}.png", base_image(100 + index, 48))
        rows.append(f"images/{index}.png,{label}")
    (root / "tables/classes.csv").write_text("\n".join(rows) + "\n")
    model = build_classifier(load_config(None, [
        "model.intensity=percentile", "model.block_filters=[8]", "model.block_kernel_sizes=[3]",
        "model.stem_filters=0", "model.block_downsample=[true]", "model.dense_units=8"]).model, 32, 1)
    model.save(root / "model.keras")
    return root


def test_evaluate_scores_a_labels_table_per_source_and_under_shifts(labelled_table):
    root = labelled_table
    run_python("-m", "braintumor_tf", "evaluate", "--model", str(root / "model.keras"),
               "--data", str(root / "data"), "--labels", str(root / "tables/classes.csv"),
               "--shifts", "rotate90,sixteen_bit,jpeg_30", "--json", str(root / "report.json"),
               "--out", str(root / "out"))
    report = json.loads((root / "report.json").read_text())
    assert report["n"] == 16
    # a table's source is the deepest folder its images share
    assert set(report["per_source"]) == {"setA", "images"}
    assert report["per_source"]["images"]["n"] == 8
    shifts = report["shifts"]["shifts"]
    assert list(shifts) == ["rotate90", "sixteen_bit", "jpeg_30"]
    # The stretch inside the model makes the 16-bit copy the same input: the same answers.
    assert shifts["sixteen_bit"]["agreement"] == 1.0
    assert set(shifts["rotate90"]["per_source"]) == {"setA", "images"}
    assert "| sixteen_bit |" in (root / "out/shifts.md").read_text()


def test_evaluate_refuses_unknown_shifts_and_missing_tables(labelled_table):
    root = labelled_table
    result = run_python("-m", "braintumor_tf", "evaluate", "--model", str(root / "model.keras"),
                        "--data", str(root / "data"), "--shifts", "rotate45", check=False)
    assert result.returncode != 0 and "unknown shift(s) rotate45" in result.stderr
    result = run_python("-m", "braintumor_tf", "evaluate", "--model", str(root / "model.keras"),
                        "--labels", str(root / "nope.csv"), check=False)
    assert result.returncode != 0 and "labels file not found" in result.stderr


def test_stretch_with_open_image_size_matches_the_fixed_one():
    images = (np.random.default_rng(4).random((2, 32, 32, 1)) * 200).astype(np.float32)
    fixed = np.asarray(PercentileStretch()(images))
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, PercentileStretch()(inputs))
    np.testing.assert_allclose(model.predict(images, verbose=0), fixed, atol=1e-4)


@pytest.mark.usefixtures("float32_policy")
def test_segmenter_takes_the_stretch_on_crops_and_whole_images():
    from braintumor_tf.models.unet import build_unet

    crops = build_unet(64, 1, "mobilenetv2", "none", (16, 16, 8, 8, 8), any_size=True,
                       intensity="percentile")
    whole = build_unet(64, 1, "mobilenetv2", "none", (16, 16, 8, 8, 8), intensity="percentile")
    whole.set_weights(crops.get_weights())
    pixels = (np.random.default_rng(5).random((1, 64, 64, 1)) * 90).astype(np.float32)
    np.testing.assert_allclose(crops.predict(pixels, verbose=0), whole.predict(pixels, verbose=0),
                               atol=1e-5)
    # the stretch undoes a linear intensity change: the same mask
    np.testing.assert_allclose(whole.predict(pixels * 2 + 10, verbose=0),
                               whole.predict(pixels, verbose=0), atol=1e-4)
    with pytest.raises(ValueError, match="intensity must be"):
        build_unet(64, 1, "mobilenetv2", "none", intensity="zscore")


@pytest.mark.usefixtures("float32_policy")
def test_segmenter_shifts_move_the_truth_and_score_intensity_changes(tmp_path):
    from support import bright_segmenter, disc_images

    images, masks = disc_images(6, 48, seed=2)
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        write_png(tmp_path / f"images/{index}.png", image[..., 0].astype(np.uint8))
        write_png(tmp_path / f"masks/{index}.png", (mask[..., 0] * 255).astype(np.uint8))
    model = bright_segmenter(tmp_path / "bright.keras", 48)
    run_python("-m", "braintumor_tf", "evaluate", "--model", model, "--data",
               str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
               "--shifts", "rotate90,flip_up_down,window_wide,gamma_1.6",
               "--json", str(tmp_path / "seg.json"))
    report = json.loads((tmp_path / "seg.json").read_text())["shifts"]
    assert report["unshifted"]["mean_dice"] > 0.9
    # Turned and flipped slices are scored against turned and flipped truth: still right.
    for name in ("rotate90", "flip_up_down"):
        assert abs(report["shifts"][name]["dice_change"]) < 0.02, name
    # A wide window leaves discs at 30 + 200 * 190/255 ~ 179: still bright enough; gamma 1.6 turns
    # 200 into ~172. Both change the answer a little at most; neither is an error.
    assert set(report["shifts"]) == {"rotate90", "flip_up_down", "window_wide", "gamma_1.6"}
    assert all(entry["n"] == 6 for entry in report["shifts"].values())
