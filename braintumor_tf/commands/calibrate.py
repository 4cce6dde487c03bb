"""``braintumor-tf calibrate``: fit the out-of-distribution guard and temperature of a run."""

from __future__ import annotations

from pathlib import Path

from braintumor_tf.evaluation.cross_validation import out_of_fold_rows
from braintumor_tf.evaluation.guard_fit import calibrate_classifier
from braintumor_tf.export.validation_data import manifest_rows


def calibrate(run_dir, validation_quantile: float = 0.975, class_weights=None,
              tta: str = "none") -> dict:
    """Refit from the run's own train and validation splits (training does it at its end). A
    cross-validation run's temperature comes from its out-of-fold predictions with ``tta``
    averaging (the averaging its export will use)."""
    run_dir = Path(run_dir)
    keras_path = run_dir / "model.keras"
    if not keras_path.is_file():
        raise FileNotFoundError(f"no model.keras in run directory {run_dir}")
    return calibrate_classifier(keras_path, manifest_rows(run_dir, "train"),
                                manifest_rows(run_dir, "val"), validation_quantile,
                                class_weights, out_of_fold_rows(run_dir, tta))

