"""Choose one class's decision weight (``calibrate --class-weight``) on a CV's out-of-fold
predictions, with each fold's weight chosen on the other folds, and write those re-predicted
rows as fold CSVs so ``braintumor-tf compare`` judges the choice on answers it did not see.

Why: a missed tumour costs more than a second look. The release CV called 2.1 % of tumour
slices ``notumor``; a weight below 1 on ``notumor`` asks for more certainty before saying so.

Run (the classifier release, docs/RESULTS.md):
    python scripts/decision_weights.py --cv docs/cv/classifier_cv5_release --tta mirror \
        --class notumor --out docs/cv/classifier_cv5_release_notumor_weight
    braintumor-tf compare docs/cv/classifier_cv5_release docs/cv/classifier_cv5_release_notumor_weight \
        --tta-a mirror --tta-b mirror
then give the release the weight chosen on all folds:
    braintumor-tf calibrate --run runs/cv5_release --class-weight notumor=<release weight>

With --mix RUN_A, the answers of two recipes run on the same folds are averaged first (a share
of RUN_A's, the rest --cv's), the share and the weight chosen together, nested the same way:
    python scripts/decision_weights.py --cv docs/cv/classifier_cv5_release --mix \
        docs/cv/classifier_cv5_release2 --tta mirror --out docs/cv/classifier_cv5_mixture
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", required=True, help="CV run directory or folder of fold CSVs")
    parser.add_argument("--tta", default="none", help="which out-of-fold predictions (e.g. mirror)")
    parser.add_argument("--class", dest="class_name", default="notumor")
    parser.add_argument("--grid", default=None, help="comma-separated weights to try")
    parser.add_argument("--mix", default=None, help="a second CV run on the same folds to average in")
    parser.add_argument("--out", required=True, help="folder for the re-predicted fold CSVs")
    args = parser.parse_args(argv)

    from braintumor_tf.evaluation.cross_validation import read_run_predictions
    from braintumor_tf.evaluation.decision_weights import (
        DEFAULT_GRID,
        nested_choice,
        nested_mixture,
        write_fold_csvs,
    )

    grid = DEFAULT_GRID if args.grid is None else [float(w) for w in args.grid.split(",")]
    try:
        rows = read_run_predictions(args.cv, args.tta)
        if args.mix is None:
            out_rows, summary = nested_choice(rows, args.class_name, grid)
        else:
            other = read_run_predictions(args.mix, args.tta)
            out_rows, summary = nested_mixture(other, rows, args.class_name, weight_grid=grid)
            summary["share_of"] = str(args.mix)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    suffix = "" if args.tta == "none" else f"_tta-{args.tta}"
    write_fold_csvs(out_rows, out, suffix)
    summary.update(source=str(args.cv), tta=args.tta)
    (out / "decision_weights.json").write_text(json.dumps(summary, indent=2) + "\n")
    per_fold = ", ".join(f"fold {k}: {w}" for k, w in summary["per_fold"].items())
    print(f"chosen on the other folds — {per_fold}")
    print(f"on all folds (for the release): {summary['release']}")
    print(f"wrote {len(out_rows)} re-predicted rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
