"""scripts/keras_from_savedmodel.py: a fold ensemble's .keras rebuilt from its SavedModel alone
(how release 3's classifier.keras was recovered after its run folder was lost)."""

import importlib.util
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from braintumor_tf.config import load_config
from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.export.savedmodel import export_classifier
from braintumor_tf.models.ensemble import fold_ensemble
from braintumor_tf.models.guard import (
    Guard,
    feature_layer_names,
    features_and_probabilities,
    with_guard,
)
from braintumor_tf.tasks import get_task

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("float32_policy")]
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "keras_from_savedmodel.py"


def _script():
    loader = importlib.util.spec_from_file_location("keras_from_savedmodel", SCRIPT)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def _exported_ensemble(tmp_path: Path):
    """Two randomly initialised members of the default network, a made-up guard, mirror
    averaging and a notumor weight, exported as the release's SavedModel is."""
    config = load_config("classification")
    task = get_task("classification")
    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        members.append(task.deployable(config, task.build_model(config)))
    ensemble = fold_ensemble(members, name="residual_cnn_ensemble2")
    layers = feature_layer_names(ensemble)
    dims = [int(t.shape[-1]) for t in features_and_probabilities(ensemble, layers).outputs[:-1]]
    rng = np.random.default_rng(0)
    precisions = []
    for dim in dims:
        a = rng.normal(size=(dim, dim)).astype(np.float32)
        precisions.append(a @ a.T / dim + np.eye(dim, dtype=np.float32))
    guard = Guard(layers, [rng.normal(size=(4, d)).astype(np.float32) for d in dims], precisions,
                  [float(s) for s in rng.uniform(50, 500, len(dims))], 1.3, 0.8,
                  class_weights=[1.0, 1.0, 0.5, 1.0])
    spec = task.model_spec(config, ensemble).replace(
        averaging="mirror", temperature=0.8, ood_threshold=1.3, class_weights=(1.0, 1.0, 0.5, 1.0))
    saved = export_classifier(with_guard(ensemble, guard, tta="mirror"), tmp_path / "sm" / "1",
                              CLASS_NAMES, "mirror", spec)
    return saved, guard


def _check_folder(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for index, name in enumerate(CLASS_NAMES):
        (root / name).mkdir(parents=True)
        for k in range(2):
            image = cv2.GaussianBlur(rng.uniform(0, 255, (150 + 20 * k, 130)), (0, 0), 6)
            cv2.imwrite(str(root / name / f"{index}_{k}.png"), image.astype(np.uint8))
    return root


def test_the_rebuilt_keras_file_answers_like_the_savedmodel_and_keeps_its_guard(tmp_path):
    saved, guard = _exported_ensemble(tmp_path)
    check = _check_folder(tmp_path / "check")
    out = tmp_path / "release" / "classifier.keras"
    assert _script().main(["--savedmodel", str(saved), "--config", "classification",
                           "--folds", "2", "--check", str(check), "--images", "8",
                           "--out", str(out)]) == 0
    rebuilt = Guard.load(out.with_name("ood_guard.npz"))
    for mine, theirs in zip(rebuilt.means + rebuilt.precisions, guard.means + guard.precisions,
                            strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)
    np.testing.assert_allclose(rebuilt.scales, guard.scales, rtol=1e-6)
    assert rebuilt.class_weights == guard.class_weights
    pixels = np.random.default_rng(5).uniform(0, 255, (3, 224, 224, 1)).astype(np.float32)
    served = load_runtime(saved).predict_with_scores(pixels)
    keras_file = load_runtime(out).predict_with_scores(pixels)
    np.testing.assert_allclose(keras_file[0], served[0], atol=1e-5)
    np.testing.assert_allclose(keras_file[1], served[1], rtol=1e-4)


def test_another_architecture_is_refused_and_nothing_is_written(tmp_path):
    saved, _ = _exported_ensemble(tmp_path)
    check = _check_folder(tmp_path / "check")
    out = tmp_path / "release" / "classifier.keras"
    try:
        code = _script().main(["--savedmodel", str(saved), "--config", "classification",
                               "--folds", "3", "--check", str(check), "--images", "8",
                               "--out", str(out)])
    except (SystemExit, ValueError) as error:
        code = getattr(error, "code", 1) or 1
    assert code != 0
    assert not out.exists()
