"""Evaluation metrics computed from softmax probabilities.

The counting is scikit-learn's (confusion matrix, precision/recall/F1, ROC AUC, log loss); this
module validates the input, adds the expected calibration error, and applies the conventions below.
No TensorFlow here. Every value in the report is a plain ``int``/``float``/``None`` for JSON.

Conventions for degenerate classes (documented here because they change the averages):

* precision of a class that is never predicted, and recall of a class with no support, are 0.0;
  F1 is 0.0 whenever precision + recall is 0.
* ``macro_f1`` and ``balanced_accuracy`` average over the classes present in ``y_true`` only, so
  a small evaluation split that happens to lack a class is not penalised for it. Such classes are
  listed under ``absent_classes``.
* ROC AUC is undefined for a class absent from ``y_true`` or making up all of it; that class gets
  ``None`` in ``roc_auc_per_class`` and ``roc_auc_ovr`` is the mean over the remaining classes
  (``None`` if none remain).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics

ECE_BINS = 15
_SUM_TOLERANCE = 1e-3


def _validate(
    y_true, probabilities, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fail loudly on malformed input instead of returning silently wrong numbers."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be 2-D [N, K], got shape {probs.shape}")
    n, k = probs.shape
    if n == 0:
        raise ValueError("need at least one sample")
    if k < 2:
        raise ValueError(f"need at least two classes, got K={k}")
    if class_names is not None:
        if len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names for {k} probability columns")
        if len(set(class_names)) != k:
            raise ValueError(f"class names must be unique: {list(class_names)}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities contain NaN or inf")
    if probs.min() < 0.0 or probs.max() > 1.0 + 1e-6:
        raise ValueError("probabilities must lie in [0, 1]")
    sums = probs.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > _SUM_TOLERANCE):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(f"probability rows must sum to 1 (found a row summing to {worst:.4f})")

    labels = np.asarray(y_true)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"y_true must be 1-D of length {n}, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("y_true must hold integer class indices")
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"y_true must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"y_true values must be in [0, {k}), got [{labels.min()}, {labels.max()}]")
    return labels, probs


def binary_auc(is_positive, scores) -> float | None:
    """ROC AUC of one class against the rest; None when one side is empty (undefined)."""
    positive = np.asarray(is_positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return float(metrics.roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def calibration_bins(y_true, probabilities, n_bins: int = ECE_BINS) -> dict:
    """Equal-width bins over max-probability confidence, shared by ``ece`` and the plot.

    Bin ``i`` covers ``(edges[i], edges[i + 1]]`` (the first also includes 0). Empty bins report
    accuracy/confidence 0.0 and carry no weight.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    labels, probs = _validate(y_true, probabilities)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(index, minlength=n_bins)
    safe = np.maximum(counts, 1)
    accuracy = np.bincount(index, weights=correct, minlength=n_bins) / safe
    mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / safe
    return {
        "edges": edges,
        "counts": counts,
        "accuracy": np.where(counts > 0, accuracy, 0.0),
        "confidence": np.where(counts > 0, mean_confidence, 0.0),
    }


def expected_calibration_error(y_true, probabilities, n_bins: int = ECE_BINS) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the fraction of samples in the bin."""
    bins = calibration_bins(y_true, probabilities, n_bins)
    weights = bins["counts"] / bins["counts"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"] - bins["confidence"])))


def log_loss(y_true, probabilities) -> float:
    """Mean negative log-likelihood of the true class (scikit-learn clips at float64 eps, so a
    confident miss stays finite)."""
    labels, probs = _validate(y_true, probabilities)
    # float32 softmax rows sum to 1 within ~1e-7, not within scikit-learn's float64 tolerance;
    # renormalising in float64 silences its warning without changing the loss.
    probs = np.asarray(probs, np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return float(metrics.log_loss(labels, probs, labels=np.arange(probs.shape[1])))


def classification_report(y_true, probabilities, class_names: Sequence[str]) -> dict:
    """One JSON-ready summary of a classifier's predictions; see the module docstring for
    how classes without support or predictions are treated."""
    class_names = [str(name) for name in class_names]
    labels, probs = _validate(y_true, probabilities, class_names)
    k = len(class_names)
    predicted = probs.argmax(axis=1)
    every_class = np.arange(k)
    matrix = metrics.confusion_matrix(labels, predicted, labels=every_class)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, predicted, labels=every_class, zero_division=0.0)
    present = support > 0
    true_positive = np.diag(matrix)

    auc_per_class = {
        name: binary_auc(labels == index, probs[:, index]) for index, name in enumerate(class_names)
    }
    defined_auc = [value for value in auc_per_class.values() if value is not None]

    return {
        "n": int(labels.size),
        "accuracy": float(true_positive.sum() / labels.size),
        "macro_f1": float(f1[present].mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "roc_auc_ovr": float(np.mean(defined_auc)) if defined_auc else None,
        "roc_auc_per_class": auc_per_class,
        "ece": expected_calibration_error(labels, probs),
        "log_loss": log_loss(labels, probs),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "absent_classes": [name for i, name in enumerate(class_names) if not present[i]],
        "class_names": class_names,
        "confusion_matrix": matrix.tolist(),
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(report: dict) -> str:
    """Fixed-width text table for logs and the console."""
    per_class = report["per_class"]
    auc_per_class = report.get("roc_auc_per_class", {})
    width = max([len("class")] + [len(name) for name in per_class])
    header = (
        f"{'class':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'auc':>9}  "
        f"{'support':>7}"
    )
    lines = [header, "-" * len(header)]
    for name, row in per_class.items():
        lines.append(
            f"{name:<{width}}  {_fmt(row['precision']):>9}  {_fmt(row['recall']):>9}  "
            f"{_fmt(row['f1']):>9}  {_fmt(auc_per_class.get(name)):>9}  {row['support']:>7d}"
        )
    lines.append("-" * len(header))
    summary = [
        ("samples", str(report["n"])),
        ("accuracy", _fmt(report["accuracy"])),
        ("balanced accuracy", _fmt(report["balanced_accuracy"])),
        ("macro F1", _fmt(report["macro_f1"])),
        ("ROC AUC (macro OvR)", _fmt(report["roc_auc_ovr"])),
        ("ECE", _fmt(report["ece"])),
        ("log loss", _fmt(report["log_loss"])),
    ]
    if "ood_flagged" in report:
        summary.append(("flagged out of distribution", f"{report['ood_flagged'] * 100:.1f} %"))
    label_width = max(len(label) for label, _ in summary)
    lines.extend(f"{label:<{label_width}}  {value}" for label, value in summary)
    if report.get("absent_classes"):
        lines.append(f"absent from y_true: {', '.join(report['absent_classes'])}")
    return "\n".join(lines)
