"""Release a finished training run as the classifier in savedmodels/ (TF Serving layout).

    python scripts/release_classifier.py --run runs/real --out savedmodels/classifier

Exports ``RUN/model.keras`` to the next free ``OUT/<version>/`` (never overwriting one) and
prints the run's test metrics for the model card.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from braintumor_tf.data.discover import CLASS_NAMES  # noqa: E402
from braintumor_tf.export.savedmodel import export_classifier, next_version_dir  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="finished run directory")
    parser.add_argument("--out", default="savedmodels/classifier")
    args = parser.parse_args()
    run = Path(args.run)
    model_path = run / "model.keras"
    if not model_path.exists():
        raise SystemExit(f"error: {model_path} not found: is {run} a finished run?")
    model = keras.models.load_model(model_path)
    target = next_version_dir(args.out)
    export_classifier(model, target, CLASS_NAMES)
    print(f"exported {model_path} -> {target}")
    metrics = run / "test" / "metrics.json"
    if metrics.exists():
        report = json.loads(metrics.read_text())
        print(json.dumps({k: report[k] for k in ("n", "accuracy", "macro_f1", "roc_auc_ovr", "ece")},
                         indent=2))


if __name__ == "__main__":
    main()
