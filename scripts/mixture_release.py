"""Build a classifier from two recipes' fold-k networks, mixed in the share chosen out of fold.

Why: the cross-validation scores each image with one fold network per recipe, the one that never
saw its patient. The model that reproduces those numbers exactly is that pair of networks mixed
as the CV mixed them, so a release built this way is measured, not extrapolated; and fold k's
slices, held out from both networks, stay a held-out check of the built file. The OOD guard is
the one fitted for recipe B's fold-k network (its features, fitted on the other folds'
training slices, threshold on fold k's); the temperature is fitted on the mixed out-of-fold
answers.

Release 4 (docs/RESULTS.md, "Release 4: the two recipes mixed, both with the stretch"):
    python scripts/decision_weights.py --cv docs/cv/classifier_cv5_release \
        --mix docs/cv/classifier_cv5_release2_stretch --tta mirror \
        --out docs/cv/classifier_cv5_mixture_stretch
    python scripts/mixture_release.py --fold 4 --share-a 0.3 --class-weight notumor=0.5 \
        --model-a runs/cv5_release2_stretch/folds/fold4/model.keras \
        --cv-a docs/cv/classifier_cv5_release2_stretch \
        --model-b-ensemble RELEASE3/classifier.keras --config-b classification_cv \
        --guard-b RELEASE3/ood_guard.npz --cv-b docs/cv/classifier_cv5_release \
        --out runs/release4_pair/classifier.keras
    braintumor-tf evaluate --model runs/release4_pair/classifier.keras --data FOLD4_BY_SOURCE \
        --shifts sixteen_bit,rotate90,rotate180,gamma_0.6,gamma_1.6,resample_640,jpeg_30,noise
RELEASE3 is release 3's folder (its .keras rebuilt from savedmodels/classifier/3 by
scripts/keras_from_savedmodel.py). The same pair without the stretch in recipe A
(--mix docs/cv/classifier_cv5_release2, share 0.4) was not released: its 16-bit copies agree on
98.6 %, the Must is 99 %.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _member_of_ensemble(ensemble, fold: int, config, task):
    """Fold ``fold``'s network out of a flat fold ensemble (its layers are ``fold<k>_<name>``)."""
    member = task.deployable(config, task.build_model(config))
    own = [layer for layer in member.layers if layer.weights]
    theirs = {layer.name: layer for layer in ensemble.layers
              if layer.name.startswith(f"fold{fold}_") and layer.weights}
    if len(own) != len(theirs):
        raise SystemExit(f"fold {fold} of the ensemble has {len(theirs)} weighted layers, the "
                         f"config's network {len(own)}: not the same architecture")
    for layer in own:
        source = theirs.get(f"fold{fold}_{layer.name}")
        if source is None:
            raise SystemExit(f"layer {layer.name} has no fold{fold}_ twin in the ensemble")
        layer.set_weights(source.get_weights())
    return member


def _mixed_rows(cv_a: str, cv_b: str, share_a: float, tta: str) -> list[dict]:
    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.evaluation.cross_validation import read_run_predictions

    rows_a = {row["path"]: row for row in read_run_predictions(cv_a, tta)}
    mixed = []
    for row in read_run_predictions(cv_b, tta):
        other = rows_a[row["path"]]
        mixed.append({**row, **{name: str(share_a * float(other[name])
                                          + (1 - share_a) * float(row[name]))
                                for name in CLASS_NAMES}})
    return mixed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--share-a", type=float, required=True)
    parser.add_argument("--class-weight", default=None, help="e.g. notumor=0.5")
    parser.add_argument("--model-a", required=True, help="recipe A's fold-k model.keras")
    parser.add_argument("--cv-a", required=True, help="recipe A's out-of-fold predictions")
    parser.add_argument("--model-b-ensemble", required=True,
                        help="recipe B's fold ensemble (.keras), whose fold-k network is taken")
    parser.add_argument("--config-b", default="classification_cv")
    parser.add_argument("--guard-b", required=True, help="the guard fitted for B's fold-k network")
    parser.add_argument("--cv-b", required=True)
    parser.add_argument("--tta", default="mirror")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from braintumor_tf.config import load_config
    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.evaluation.guard_fit import (
        class_weight_vector,
        embed_guard,
        out_of_fold_arrays,
    )
    from braintumor_tf.models.ensemble import fold_ensemble
    from braintumor_tf.models.guard import (
        Guard,
        feature_layer_names,
        fit_temperature,
        scale_probabilities,
    )
    from braintumor_tf.spec import read_spec, write_keras_spec
    from braintumor_tf.tasks import get_task
    from braintumor_tf.training.metrics import expected_calibration_error

    if not 0 <= args.share_a <= 1:
        raise SystemExit(f"--share-a must be in [0, 1], got {args.share_a}")
    weights = None
    if args.class_weight:
        name, _, value = args.class_weight.partition("=")
        weights = class_weight_vector({name: float(value)})
    config = load_config(args.config_b)
    task = get_task(config.task)
    member_b = _member_of_ensemble(load_model(args.model_b_ensemble, compile=False), args.fold,
                                   config, task)
    member_a = load_model(args.model_a, compile=False)
    mixed = fold_ensemble([member_a, member_b], name="residual_cnn_two_recipes",
                          weights=[args.share_a, 1 - args.share_a])
    layers = feature_layer_names(mixed)
    fitted = Guard.load(args.guard_b)
    if [name.split("_", 1)[1] for name in layers] != \
            [name.split("_", 1)[1] for name in fitted.feature_layers]:
        raise SystemExit(f"the guard reads {fitted.feature_layers}, the mixture {layers}")
    probabilities, labels = out_of_fold_arrays(_mixed_rows(args.cv_a, args.cv_b, args.share_a,
                                                           args.tta), weights)
    temperature = fit_temperature(probabilities, labels)
    guard = Guard(layers, fitted.means, fitted.precisions, fitted.scales, fitted.threshold,
                  temperature, fitted.validation_quantile, weights)
    spec = read_spec(args.model_b_ensemble)
    training = {**spec.training_data, "fold_held_out": args.fold,
                "recipes": {"a": str(args.cv_a), "b": str(args.cv_b), "share_a": args.share_a}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    mixed.save(args.out)
    write_keras_spec(args.out, spec.replace(training_data=training))
    guard_file = guard.save(args.out.with_name("ood_guard.npz"))
    embed_guard(args.out, mixed, guard_file.read_bytes(), guard.threshold, temperature, weights)
    report = {"feature_layers": layers, "threshold": guard.threshold, "temperature": temperature,
              "class_weights": weights, "share_a": args.share_a, "fold": args.fold,
              "temperature_from": f"mixed out-of-fold answers of {len(labels)} images",
              "out_of_fold_ece_before": expected_calibration_error(labels, probabilities),
              "out_of_fold_ece_after": expected_calibration_error(
                  labels, scale_probabilities(probabilities, temperature)),
              "guard_from": str(args.guard_b)}
    args.out.with_name("ood_guard.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({mixed.count_params():,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
