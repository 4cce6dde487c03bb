"""The model spec (braintumor_tf.spec): what a model file says about itself, in every form."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import shutil

import keras
import numpy as np
import pytest
from test_guard import SIZE, _random_guard, _tiny

from braintumor_tf.config import DEFAULT_SEGMENTATION_THRESHOLD
from braintumor_tf.spec import (
    AVERAGING_MODES,
    SPEC_VERSION,
    ModelSpec,
    Preprocessing,
    read_spec,
    spec_for,
    task_facts,
    write_keras_spec,
)

NAMES = ("glioma", "meningioma", "notumor", "pituitary")


def test_task_facts_agree_with_what_each_spec_accepts():
    """The facts runtimes and exports read instead of comparing task names: a segmenter's spec
    holds exactly its fixed class and a threshold, a classifier's a guard but no threshold."""
    segmenter = spec_for("segmentation", ("tumour",), 64, 1, threshold=0.6)
    facts = task_facts("segmentation")
    assert facts.per_pixel and facts.thresholded and not facts.guarded
    assert segmenter.class_names == facts.fixed_class_names
    with pytest.raises(ValueError, match="classes are"):
        segmenter.replace(class_names=("lesion",))
    with pytest.raises(ValueError, match="only classifiers carry"):
        segmenter.replace(temperature=1.0, ood_threshold=2.0)
    classifier = task_facts("classification")
    assert classifier.guarded and not classifier.thresholded and classifier.fixed_class_names is None
    assert {classifier.output_key, facts.output_key} == {"probabilities", "mask_probability"}
    with pytest.raises(ValueError, match="task must be one of"):
        task_facts("detection")


def test_spec_round_trips_and_names_what_is_wrong():
    spec = spec_for("classification", NAMES, 224, 1, intensity="percentile", averaging="mirror",
                    training_data={"root": "data", "folds": 5})
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec and again.preprocessing.in_graph_intensity == "percentile"
    assert again.spec_version == 1 and again.package_version  # readable by version-1 readers
    weighted = spec.replace(temperature=0.5, ood_threshold=1.0, class_weights=(1, 1, 0.4, 1))
    record = weighted.to_dict()
    assert record["spec_version"] == 2 and record["class_weights"] == [1.0, 1.0, 0.4, 1.0]
    assert ModelSpec.from_dict(record).class_weights == (1.0, 1.0, 0.4, 1.0)
    with pytest.raises(ValueError, match="one positive number per class"):
        weighted.replace(class_weights=(1, 1, 0.4))
    with pytest.raises(ValueError, match="one positive number per class"):
        weighted.replace(class_weights=(1, 1, 0, 1))
    with pytest.raises(ValueError, match="fit the guard first"):
        spec.replace(class_weights=(1, 1, 0.4, 1))
    with pytest.raises(ValueError, match="task must be one of"):
        spec.replace(task="detection")
    with pytest.raises(ValueError, match="threshold applies to segmenters only"):
        spec.replace(threshold=0.5)
    with pytest.raises(ValueError, match="give both or neither"):
        spec.replace(temperature=1.5)
    with pytest.raises(ValueError, match="averaging must be one of"):
        spec.replace(averaging="rotate")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        spec_for("segmentation", ("tumour",), 160, 1, threshold=1.5)
    with pytest.raises(ValueError, match="in_graph_intensity"):
        Preprocessing(in_graph_intensity="zscore")
    newer = {**spec.to_dict(), "spec_version": SPEC_VERSION + 1}
    with pytest.raises(ValueError, match="newer braintumor_tf"):
        ModelSpec.from_dict(newer, "x.keras")
    with pytest.raises(ValueError, match="unknown spec field"):
        ModelSpec.from_dict({**spec.to_dict(), "colour": "blue"})


def test_averaging_modes_are_the_models_tta_modes():
    from braintumor_tf.models.tta import TTA_MODES

    assert AVERAGING_MODES == TTA_MODES


@pytest.mark.usefixtures("float32_policy")
def test_a_copied_keras_file_answers_as_it_did_beside_its_run(tmp_path):
    """Guard, temperature, averaging and class names travel inside the .keras file: a copy with
    nothing beside it gives the same probabilities and OOD scores as the model + guard +
    averaging built by hand, and a stray guard file beside it is not read."""
    from braintumor_tf.export.runtimes import load_runtime
    from braintumor_tf.models.guard import with_guard

    model = _tiny()
    guard = _random_guard(model)
    guard.threshold = 40.0
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    guard.save(run / "g.npz")
    spec = spec_for("classification", NAMES, SIZE, 1, averaging="mirror").replace(
        temperature=guard.temperature, ood_threshold=guard.threshold)
    write_keras_spec(run / "model.keras", spec, guard=(run / "g.npz").read_bytes())
    assert keras.models.load_model(run / "model.keras", compile=False).count_params() \
        == model.count_params()  # Keras ignores the entries it does not know
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(run / "model.keras", elsewhere / "classifier.keras")
    other = _random_guard(model, seed=5)
    other.save(elsewhere / "ood_guard.npz")  # beside the copy: must be ignored
    pixels = np.random.default_rng(3).uniform(0, 255, (5, SIZE, SIZE, 1)).astype(np.float32)
    expected = with_guard(model, guard, "mirror")(pixels)
    runtime = load_runtime(elsewhere / "classifier.keras")
    probabilities, scores = runtime.predict_with_scores(pixels)
    assert runtime.spec == spec and runtime.averaging == "mirror"
    assert runtime.class_names == NAMES and runtime.ood_threshold == 40.0
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    np.testing.assert_allclose(scores, expected["ood_score"], rtol=1e-4)
    plain = load_runtime(elsewhere / "classifier.keras", tta="none")  # the caller may override
    assert plain.averaging == "none"
    assert not np.allclose(plain.predict(pixels), probabilities, atol=1e-5)
    with pytest.raises(ValueError, match="differ from the model's own"):
        load_runtime(elsewhere / "classifier.keras", class_names=("a", "b", "c", "d"))
    # Removing the embedded guard: the spec says there is none, and nothing beside is read.
    write_keras_spec(elsewhere / "classifier.keras", spec.replace(temperature=None,
                     ood_threshold=None), guard=None)
    assert load_runtime(elsewhere / "classifier.keras").predict_with_scores(pixels)[1] is None


@pytest.mark.usefixtures("float32_policy")
def test_a_segmenters_threshold_comes_from_its_spec_not_a_config_beside_it(tmp_path):
    from braintumor_tf.export.runtimes import load_runtime

    inputs = keras.Input((32, 32, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same",
                                                    activation="sigmoid")(inputs))
    model.save(tmp_path / "seg.keras")
    assert load_runtime(tmp_path / "seg.keras").threshold == DEFAULT_SEGMENTATION_THRESHOLD
    write_keras_spec(tmp_path / "seg.keras", spec_for("segmentation", ("tumour",), 32, 1,
                                                      threshold=0.3))
    (tmp_path / "config.yaml").write_text("segmentation:\n  threshold: 0.7\n")
    runtime = load_runtime(tmp_path / "seg.keras")
    assert (runtime.task, runtime.threshold, runtime.class_names) == (
        "segmentation", 0.3, ("tumour",))


def test_spec_readers_refuse_damaged_records(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"")
    path.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_spec(path)
    path.with_suffix(".json").write_text('{"spec": {"task": "classification"}}')
    with pytest.raises(ValueError, match="spec_version missing"):
        read_spec(path)
    (tmp_path / "not.keras").write_text("plain text")
    with pytest.raises(ValueError, match="not a .keras archive"):
        write_keras_spec(tmp_path / "not.keras", spec_for("classification", NAMES, 64, 1))
    assert read_spec(tmp_path) is None  # a folder without assets.extra: a pre-spec export
