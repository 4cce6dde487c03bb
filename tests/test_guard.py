"""The out-of-distribution guard and temperature scaling (models.guard)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import pytest

from braintumor_tf.data.non_mri import KINDS, non_mri_images
from braintumor_tf.data.phantoms import generate_phantoms
from braintumor_tf.models.classifier import build_residual_cnn
from braintumor_tf.models.guard import (
    DistributionGuard,
    Guard,
    feature_layer_names,
    features_and_probabilities,
    fit_guard,
    fit_temperature,
    guard_scores,
    scale_probabilities,
    with_guard,
)

pytestmark = pytest.mark.usefixtures("float32_policy")
SIZE = 64


def _tiny(seed=0):
    keras.utils.set_random_seed(seed)
    return build_residual_cnn(SIZE, 1, 4, 16, 2, [16, 32, 32], [3, 3, 3], [True, True, False],
                              dense_units=32, dropout=0.1)


def _random_guard(model, seed=0):
    rng = np.random.default_rng(seed)
    names = feature_layer_names(model)
    extractor = features_and_probabilities(model, names)
    dims = [int(t.shape[-1]) for t in extractor.outputs[:-1]]
    means, precisions = [], []
    for dim in dims:
        root = rng.normal(size=(dim, dim)).astype(np.float32) / dim
        means.append(rng.normal(size=(4, dim)).astype(np.float32))
        precisions.append(root @ root.T + np.eye(dim, dtype=np.float32))
    return Guard(names, means, precisions, [float(x) for x in rng.uniform(1, 50, len(dims))],
                 threshold=3.0, temperature=1.7)


def _tiny_wider():
    return build_residual_cnn(SIZE, 1, 4, 16, 2, [16, 32, 48], [3, 3, 3], [True, True, False],
                              dense_units=32, dropout=0.1)


def test_with_guard_matches_numpy_and_round_trips(tmp_path):
    model = _tiny()
    guard = _random_guard(model)
    guarded = with_guard(model, guard)
    pixels = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 1)).astype(np.float32)
    out = guarded(pixels)
    *features, _ = features_and_probabilities(model, guard.feature_layers)(pixels)
    assert len(features) == 3  # the stem's resolution and two downsampled ones
    np.testing.assert_allclose(out["ood_score"], guard_scores(
        [np.asarray(f, np.float64) for f in features], guard), rtol=1e-4)
    np.testing.assert_allclose(out["probabilities"], scale_probabilities(
        np.asarray(model(pixels), np.float64), 1.7), atol=1e-5)
    guarded.save(tmp_path / "guarded.keras")
    reloaded = keras.models.load_model(tmp_path / "guarded.keras", compile=False)
    np.testing.assert_allclose(reloaded(pixels)["ood_score"], out["ood_score"], rtol=1e-5)
    layer = reloaded.get_layer("distribution_guard")
    assert (layer.temperature, layer.threshold) == (1.7, 3.0)
    guard.save(tmp_path / "g.npz")
    again = Guard.load(tmp_path / "g.npz")
    np.testing.assert_array_equal(again.precisions[2], guard.precisions[2])
    assert (again.threshold, again.feature_layers, again.scales) == (
        3.0, guard.feature_layers, guard.scales)
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not an OOD guard file"):
        Guard.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="fitted for another model"):
        with_guard(_tiny_wider(), guard)
    with pytest.raises(ValueError, match="temperature and threshold must be > 0"):
        DistributionGuard(4, [8], [1.0], temperature=0.0)


def test_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 4)) * 2
    calibrated = scale_probabilities(np.exp(logits), 1.0)
    labels = np.array([rng.choice(4, p=p) for p in calibrated])
    overconfident = scale_probabilities(calibrated, 1 / 3)  # logits x 3
    assert fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(calibrated, labels) == pytest.approx(1.0, rel=0.1)


def test_fitted_guard_flags_what_is_not_mri():
    """A small classifier trained on phantom slices: its guard lets held-out phantoms through
    and refuses blank frames, noise, photographs, charts, text and CT-like slices."""
    images, _, labels = generate_phantoms(60, SIZE, seed=3)
    pixels = images[..., None].astype(np.float32)
    train, val = slice(0, 160), slice(160, 240)
    model = _tiny()
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    history = model.fit(pixels[train], np.eye(4)[labels[train]], batch_size=16, epochs=6,
                        verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    guard, report, val_probabilities = fit_guard(model, pixels[train], labels[train],
                                                 pixels[val], labels[val])
    assert report["val_flagged"] <= 0.05 and val_probabilities.shape == (80, 4)
    guarded = with_guard(model, guard)
    held_out, _, _ = generate_phantoms(10, SIZE, seed=99)
    scores = np.asarray(guarded(held_out[..., None].astype(np.float32))["ood_score"])
    assert np.mean(scores > guard.threshold) <= 0.15
    probes = non_mri_images(10, SIZE, seed=0)
    for kind in KINDS:
        scores = np.asarray(guarded(probes[kind][..., None].astype(np.float32))["ood_score"])
        assert np.mean(scores > guard.threshold) >= 0.9, kind


def test_fit_guard_refuses_bad_input():
    model = _tiny()
    pixels = np.zeros((8, SIZE, SIZE, 1), np.float32)
    with pytest.raises(ValueError, match="every class"):
        fit_guard(model, pixels, np.zeros(8, int), pixels, np.zeros(8, int))
    with pytest.raises(ValueError, match="validation_quantile"):
        fit_guard(model, pixels, np.arange(8) % 4, pixels, np.arange(8) % 4, 1.0)
    with pytest.raises(ValueError, match="unknown kinds"):
        non_mri_images(1, 64, kinds=("x-ray",))


def test_guard_travels_into_every_runtime_and_export(tmp_path):
    """Keras (guard beside the file), SavedModel and TFLite give the same OOD scores, and
    predict/evaluate report them."""
    from braintumor_tf.api import load
    from braintumor_tf.commands.export import export_model
    from braintumor_tf.export.runtimes import load_runtime

    model = _tiny()
    model_path = tmp_path / "run" / "model.keras"
    model_path.parent.mkdir()
    model.save(model_path)
    guard = _random_guard(model)
    guard.threshold = 40.0
    guard.save(model_path.parent / "ood_guard.npz")
    pixels = np.random.default_rng(2).uniform(0, 255, (6, SIZE, SIZE, 1)).astype(np.float32)
    keras_runtime = load_runtime(model_path)
    probabilities, scores = keras_runtime.predict_with_scores(pixels)
    assert keras_runtime.ood_threshold == 40.0 and scores.shape == (6,)
    np.testing.assert_allclose(probabilities, scale_probabilities(np.asarray(model(pixels)), 1.7),
                               atol=1e-5)
    summary = export_model(tmp_path / "classifier", model_path=model_path,
                           tflite_variants="float32")
    from braintumor_tf.spec import read_spec

    for exported in (summary["savedmodel"], summary["tflite"]["float32"]):
        runtime = load_runtime(exported)
        got_probabilities, got_scores = runtime.predict_with_scores(pixels)
        assert runtime.ood_threshold == 40.0
        # Every exported form describes itself, guard included (a legacy .keras: read off it).
        spec = read_spec(exported)
        assert (spec.task, spec.ood_threshold, spec.temperature, spec.image_size) == (
            "classification", 40.0, pytest.approx(1.7), SIZE)
        assert runtime.spec == spec
        np.testing.assert_allclose(got_scores, scores, rtol=1e-4)
        np.testing.assert_allclose(got_probabilities, probabilities, atol=1e-5)
    import tensorflow as tf

    served = tf.saved_model.load(summary["savedmodel"]).signatures["predict_pixels"](
        pixels=tf.constant(pixels))
    np.testing.assert_array_equal(served["in_distribution"].numpy(), scores <= 40.0)
    records = load(model_path).predict(list(pixels))
    assert [r["in_distribution"] for r in records] == list(scores <= 40.0)
    assert all(r["ood_score"] == pytest.approx(s, rel=1e-4)
               for r, s in zip(records, scores, strict=True))
    (tmp_path / "run" / "ood_guard.npz").unlink()
    assert load_runtime(model_path).predict_with_scores(pixels)[1] is None


def _reweighted(probabilities, temperature, weights):
    return scale_probabilities(probabilities * np.asarray(weights), temperature)


def test_class_weights_move_decisions_the_same_way_in_every_form(tmp_path):
    """A notumor weight below 1 (calibrate --class-weight) is a prior shift inside the graph:
    Keras, SavedModel and LiteRT return the same reweighted probabilities, so slices the model
    was unsure of stop being called tumour-free, and every form's spec names the weights."""
    from braintumor_tf.commands.export import export_model
    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.evaluation.guard_fit import class_weight_vector
    from braintumor_tf.export.runtimes import load_runtime
    from braintumor_tf.spec import read_spec

    model = _tiny()
    model_path = tmp_path / "run" / "model.keras"
    model_path.parent.mkdir()
    model.save(model_path)
    pixels = np.random.default_rng(2).uniform(0, 255, (32, SIZE, SIZE, 1)).astype(np.float32)
    plain = np.asarray(model(pixels), np.float64)
    unweighted = scale_probabilities(plain, 1.7)
    top = CLASS_NAMES[int(unweighted[0].argmax())]  # the class this model calls slice 0
    weights = class_weight_vector({top: 1e-3})
    assert weights.count(1.0) == 3 and weights[CLASS_NAMES.index(top)] == 1e-3
    guard = _random_guard(model)
    guard.threshold, guard.class_weights = 40.0, weights
    guard.save(model_path.parent / "ood_guard.npz")
    assert Guard.load(model_path.parent / "ood_guard.npz").class_weights == weights
    expected = _reweighted(plain, 1.7, weights)
    keras_probabilities, _ = load_runtime(model_path).predict_with_scores(pixels)
    np.testing.assert_allclose(keras_probabilities, expected, atol=1e-5)
    assert CLASS_NAMES[int(np.argmax(keras_probabilities[0]))] != top  # the decision moved
    summary = export_model(tmp_path / "classifier", model_path=model_path,
                           tflite_variants="float32")
    for exported in (summary["savedmodel"], summary["tflite"]["float32"]):
        got, _ = load_runtime(exported).predict_with_scores(pixels)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert read_spec(exported).class_weights == tuple(weights)
    with pytest.raises(ValueError, match="unknown class"):
        class_weight_vector({"no_tumour": 0.5})
    with pytest.raises(ValueError, match="class_weights must be 4 positive numbers"):
        DistributionGuard(4, [8], [1.0], class_weights=[1, 1, -1, 1])


def test_cross_check_warns_where_the_classifier_disagrees():
    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.inference.classification import class_record
    from braintumor_tf.inference.segmentation import cross_check, describe, segment_record

    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 1
    masks = [segment_record(f"{name}.png", mask=mask, mask_file=f"{name}_mask.png")
             for name in ("sure", "unguarded", "unsure", "not_mri", "glioma")]
    masks.append(segment_record("glioma_empty.png", mask=np.zeros((8, 8), np.uint8),
                                mask_file="glioma_empty_mask.png"))
    masks.append(segment_record("broken.png", error="cannot read file"))
    sure_none = [0.02, 0.02, 0.94, 0.02]
    classes = [class_record("sure.png", CLASS_NAMES, sure_none, ood_score=1,
                            in_distribution=True),
               class_record("unguarded.png", CLASS_NAMES, sure_none),
               class_record("unsure.png", CLASS_NAMES, [0.2, 0.2, 0.5, 0.1]),
               class_record("not_mri.png", CLASS_NAMES, sure_none, ood_score=9,
                            in_distribution=False),
               class_record("glioma.png", CLASS_NAMES, [0.9, 0.05, 0.03, 0.02]),
               class_record("glioma_empty.png", CLASS_NAMES, [0.9, 0.05, 0.03, 0.02]),
               class_record("broken.png", CLASS_NAMES, error="cannot read file")]
    sure, unguarded, unsure, not_mri, glioma, empty, broken = cross_check(masks, classes)
    # "may be false positives" only from a confident classifier its guard lets through.
    assert "notumor (0.94, in distribution)" in sure["warning"]
    assert "4 mask pixels may be false positives" in sure["warning"]
    for other in (unguarded, unsure):  # no guard, or not confident: a disagreement, stated
        assert "disagree" in other["warning"] and "false positives" not in other["warning"]
    assert "no tumour pixels" in empty["warning"] and glioma["warning"] is None
    assert "not an MRI slice" in not_mri["warning"]
    assert broken["warning"] is None and "classifier" not in broken
    assert glioma["classifier"]["class_name"] == "glioma"
    assert "WARNING" in describe(sure) and "WARNING" not in describe(glioma)


def test_feature_extraction_and_grad_cam_raise_no_keras_warnings():
    """Every training used to end with Keras' 'structure of inputs' UserWarning (guard fit)."""
    import warnings

    from braintumor_tf.models.gradcam import GradCAM

    model = _tiny()
    pixels = np.zeros((2, SIZE, SIZE, 1), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        features_and_probabilities(model, feature_layer_names(model))(pixels)
        GradCAM(model).heatmaps(pixels)


def test_a_segmenters_inputs_are_checked_by_the_released_classifiers_guard(
        tmp_path, monkeypatch):
    """The segmenter has no guard: predict puts the released classifier's view (and guard)
    beside each mask by default, says so when none is found, and skips it on request."""
    import json

    from click.testing import CliRunner
    from support import bright_segmenter, write_png

    from braintumor_tf.cli import main

    segmenter = bright_segmenter(tmp_path / "segmenter.keras", SIZE)
    release = tmp_path / "models" / "classifier"
    release.mkdir(parents=True)
    model = _tiny()
    model.save(release / "classifier.keras")
    guard = _random_guard(model)
    pixels = np.random.default_rng(3).uniform(0, 255, (2, SIZE, SIZE, 1)).astype(np.float32)
    scores = guard_scores([np.asarray(f, np.float64) for f in features_and_probabilities(
        model, guard.feature_layers)(pixels)[:-1]], guard)
    guard.threshold = float(np.mean(scores))  # one image inside, one out
    guard.save(release / "ood_guard.npz")
    images = [write_png(tmp_path / f"slice{i}.png", pixels[i, ..., 0].astype(np.uint8))
              for i in range(2)]
    monkeypatch.chdir(tmp_path)  # no ./savedmodels here
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nor a user cache
    runner = CliRunner()

    def predict(*options):
        out = tmp_path / "out.json"
        result = runner.invoke(main, ["predict", "--model", segmenter, *map(str, images),
                                      "--json", str(out), *options])
        assert result.exit_code == 0, result.output
        return result.output, json.loads(out.read_text())

    monkeypatch.setenv("BRAINTUMOR_TF_MODELS", str(tmp_path / "models"))
    output, records = predict()
    assert "released classifier" in output
    flags = [record["classifier"]["in_distribution"] for record in records]
    assert sorted(flags) == [False, True]
    assert "not an MRI slice" in records[flags.index(False)]["warning"]
    output, records = predict("--classifier", "none")
    assert all("classifier" not in record for record in records)
    monkeypatch.setenv("BRAINTUMOR_TF_MODELS", str(tmp_path / "empty"))
    output, records = predict()
    assert "no released classifier found" in output
    assert all("classifier" not in record for record in records)
