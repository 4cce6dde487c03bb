import json
import math

import numpy as np
import pytest

from braintumor_tf.training.metrics import (
    binary_auc,
    calibration_bins,
    classification_report,
    expected_calibration_error,
    format_report,
    log_loss,
)

NAMES3 = ["a", "b", "c"]


def _rows_for(predicted, k, top=0.8):
    """Probability rows whose argmax is `predicted`, rest spread evenly."""
    rest = (1.0 - top) / (k - 1)
    probs = np.full((len(predicted), k), rest)
    probs[np.arange(len(predicted)), predicted] = top
    return probs


@pytest.fixture
def toy():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
    return y_true, _rows_for(y_pred, 3)


def test_hand_computed_counts_and_scores(toy):
    y_true, probs = toy
    report = classification_report(y_true, probs, NAMES3)
    assert report["n"] == 10
    assert report["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    per = report["per_class"]
    assert per["a"]["precision"] == pytest.approx(2 / 3)
    assert per["a"]["recall"] == pytest.approx(1 / 2)
    assert per["a"]["f1"] == pytest.approx(4 / 7)
    assert per["b"]["precision"] == pytest.approx(1 / 2)
    assert per["b"]["recall"] == pytest.approx(2 / 3)
    assert per["b"]["f1"] == pytest.approx(4 / 7)
    assert per["c"]["precision"] == pytest.approx(2 / 3)
    assert per["c"]["recall"] == pytest.approx(2 / 3)
    assert per["c"]["f1"] == pytest.approx(2 / 3)
    assert [per[n]["support"] for n in NAMES3] == [4, 3, 3]
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["macro_f1"] == pytest.approx(38 / 63)
    assert report["balanced_accuracy"] == pytest.approx(11 / 18)
    # Every sample has confidence 0.8 and 60 % are right.
    assert report["ece"] == pytest.approx(0.2)
    assert report["log_loss"] == pytest.approx(-(6 * math.log(0.8) + 4 * math.log(0.1)) / 10)
    assert report["absent_classes"] == []


def test_report_is_plain_json(toy):
    report = classification_report(*toy, NAMES3)
    assert json.loads(json.dumps(report)) == report
    assert type(report["accuracy"]) is float
    assert type(report["per_class"]["a"]["support"]) is int
    assert all(type(v) is int for row in report["confusion_matrix"] for v in row)


def test_format_report_lists_classes_and_summary(toy):
    text = format_report(classification_report(*toy, NAMES3))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "auc", "support"]
    assert any(line.startswith("a ") and line.rstrip().endswith("4") for line in lines)
    for label in ("accuracy", "macro F1", "ROC AUC", "ECE", "0.6000"):
        assert label in text


def test_auc_perfect_ranking():
    y_true = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    probs = _rows_for(y_true, 4, top=0.7)
    report = classification_report(y_true, probs, ["g", "m", "n", "p"])
    assert report["roc_auc_ovr"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in report["roc_auc_per_class"].values())


def test_auc_constant_scores_is_half():
    y_true = np.array([0, 1, 2, 3, 3, 2])
    probs = np.full((6, 4), 0.25)
    report = classification_report(y_true, probs, ["g", "m", "n", "p"])
    assert report["roc_auc_ovr"] == pytest.approx(0.5)


def test_auc_hand_computed_with_tie():
    # Positives score 0.9 and 0.5, negatives 0.5, 0.2, 0.1: wins 3 + 2 plus one tie -> 5.5 / 6.
    assert binary_auc([1, 1, 0, 0, 0], [0.9, 0.5, 0.5, 0.2, 0.1]) == pytest.approx(11 / 12)
    assert binary_auc([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.25)
    assert binary_auc([1, 1], [0.1, 0.2]) is None
    y_true = np.array([1, 1, 0, 0, 0])
    p1 = np.array([0.9, 0.5, 0.5, 0.2, 0.1])
    report = classification_report(y_true, np.stack([1 - p1, p1], axis=1), ["x", "y"])
    assert report["roc_auc_per_class"] == {"x": pytest.approx(11 / 12), "y": pytest.approx(11 / 12)}
    assert report["roc_auc_ovr"] == pytest.approx(11 / 12)


def test_missing_class_is_skipped_and_zeroed():
    names = ["g", "m", "n", "p"]
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = _rows_for([0, 0, 1, 1, 2, 0], 4, top=0.7)
    report = classification_report(y_true, probs, names)
    assert report["roc_auc_per_class"]["p"] is None
    defined = [report["roc_auc_per_class"][n] for n in ("g", "m", "n")]
    assert report["roc_auc_ovr"] == pytest.approx(np.mean(defined))
    assert report["per_class"]["p"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["absent_classes"] == ["p"]
    # Averages run over the three present classes only: recalls 1, 1, 0.5.
    assert report["balanced_accuracy"] == pytest.approx(2.5 / 3)
    f1_g = 2 * (2 / 3) * 1 / (2 / 3 + 1)
    assert report["macro_f1"] == pytest.approx((f1_g + 1 + 2 / 3) / 3)
    assert len(report["confusion_matrix"]) == 4
    assert "absent" in format_report(report)


def test_single_class_present_everywhere_gives_no_auc():
    y_true = np.zeros(4, dtype=int)
    probs = _rows_for([0, 0, 1, 2], 3)
    report = classification_report(y_true, probs, NAMES3)
    assert report["roc_auc_ovr"] is None
    assert set(report["roc_auc_per_class"].values()) == {None}
    assert report["per_class"]["b"]["precision"] == 0.0
    assert "n/a" in format_report(report)


def test_ece_zero_when_calibrated():
    # Bin at 0.75 holds 3 right of 4; bin at 1.0 holds 2 right of 2.
    probs = np.array([[0.75, 0.25]] * 4 + [[0.0, 1.0]] * 2)
    y_true = np.array([0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(y_true, probs) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_computed():
    # 4 samples at 0.95 (3 right) and 6 at 0.55 (3 right): 0.4 * 0.2 + 0.6 * 0.05 = 0.11.
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 6)
    y_true = np.array([0, 0, 0, 1] + [0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(y_true, probs) == pytest.approx(0.11)
    bins = calibration_bins(y_true, probs)
    assert bins["counts"].sum() == 10
    assert bins["counts"][14] == 4 and bins["counts"][8] == 6
    assert bins["accuracy"][14] == pytest.approx(0.75)
    assert bins["confidence"][8] == pytest.approx(0.55)


def test_log_loss_is_clipped():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    value = log_loss([1, 0], probs)
    eps = np.finfo(np.float64).eps
    assert np.isfinite(value)
    assert value == pytest.approx((-math.log(eps) - math.log(0.5)) / 2)


def test_report_equals_scikit_learn_on_a_fixed_example():
    """Our report is scikit-learn's numbers plus conventions; a change of either shows here."""
    from sklearn import metrics as sk

    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    report = classification_report(y_true, probs, ["g", "m", "n", "p"])
    predicted = probs.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y_true, predicted))
    assert report["macro_f1"] == pytest.approx(sk.f1_score(y_true, predicted, average="macro"))
    assert report["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y_true, predicted))
    assert report["roc_auc_ovr"] == pytest.approx(
        sk.roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    assert report["log_loss"] == pytest.approx(sk.log_loss(y_true, probs))
    assert report["confusion_matrix"] == sk.confusion_matrix(y_true, predicted).tolist()
    recall = sk.recall_score(y_true, predicted, average=None)
    assert [report["per_class"][n]["recall"] for n in "gmnp"] == pytest.approx(list(recall))


@pytest.mark.parametrize(
    ("y_true", "probs", "names"),
    [
        ([0, 1], np.array([0.5, 0.5]), ["a", "b"]),  # 1-D probabilities
        ([0, 1, 1], np.array([[0.5, 0.5]] * 2), ["a", "b"]),  # length mismatch
        ([0, 2], np.array([[0.5, 0.5]] * 2), ["a", "b"]),  # label out of range
        ([0, -1], np.array([[0.5, 0.5]] * 2), ["a", "b"]),  # negative label
        ([0, 1], np.array([[0.5, 0.5]] * 2), ["a", "b", "c"]),  # names mismatch
        ([0, 1], np.array([[0.5, 0.5]] * 2), ["a", "a"]),  # duplicate names
        ([0, 1], np.array([[1.5, -0.5]] * 2), ["a", "b"]),  # out of [0, 1]
        ([0, 1], np.array([[0.5, 0.4]] * 2), ["a", "b"]),  # rows not summing to 1
        ([0, 1], np.array([[np.nan, 0.5]] * 2), ["a", "b"]),  # NaN
        ([0.5, 1.0], np.array([[0.5, 0.5]] * 2), ["a", "b"]),  # non-integer labels
        ([], np.zeros((0, 2)), ["a", "b"]),  # empty
        ([0, 0], np.ones((2, 1)), ["a"]),  # single class
    ],
)
def test_invalid_inputs_raise(y_true, probs, names):
    with pytest.raises(ValueError):
        classification_report(y_true, probs, names)


def test_calibration_bins_rejects_zero_bins():
    with pytest.raises(ValueError):
        calibration_bins([0], np.array([[1.0, 0.0]]), n_bins=0)
