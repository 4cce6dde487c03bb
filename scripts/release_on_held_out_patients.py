"""A released classifier's predictions on the patients its own split held out, written like a
cross-validation run's out-of-fold CSV, so ``braintumor-tf compare`` pairs it with a CV run on
the same images of the same patients (neither model saw them).

Why: a release trained on a 70/15/15 split cannot be scored out of fold on every patient, but on
its test patients it can, in every rendering they have (pkdarabi's included), and a new recipe's
out-of-fold answers on those images are a fair paired yardstick.

Run (release 2 against the release CV):
    python scripts/release_on_held_out_patients.py --model savedmodels/classifier/2 \
        --config classification_release --data ../shared/data/classification \
        --images runs/cv5_release/folds.csv --out docs/cv/classifier_release2_test_patients.csv
    braintumor-tf compare docs/cv/classifier_release2_test_patients.csv \
        docs/cv/classifier_cv5_release --tta-b mirror

``--images``: a CSV with path, label, subject, unit and source columns listing every image to
consider (a CV run's folds.csv, or its out-of-fold CSVs); those whose subject is in the release's
test split are scored. The split is made again from ``--config`` and ``--data``, and its size is
printed to check against the release's model card.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the release (SavedModel, .keras, ...)")
    parser.add_argument("--config", required=True, help="the config the release trained with")
    parser.add_argument("--data", required=True, help="the data roots it trained on (comma list)")
    parser.add_argument("--images", required=True, nargs="+",
                        help="CSV(s) of candidate images with path,label,subject,unit,source")
    parser.add_argument("--split", default="test", help="which side of the release's split")
    parser.add_argument("--out", required=True, help="CSV to write (out-of-fold format)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    for root in args.data.split(","):
        if not Path(root).is_dir():
            print(f"data folder not found: {root} (this script measures on the real data; "
                  "see ../shared/data/README.md)", file=sys.stderr)
            return 2

    import braintumor_tf
    from braintumor_tf.config import load_config
    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.data.run_split import split_by_subject
    from braintumor_tf.tasks.classification import ClassificationTask

    config = load_config(args.config, [f"data.root={args.data}"])
    with tempfile.TemporaryDirectory() as scratch:
        records, roots = ClassificationTask().discover(config, Path(scratch))
        result, _ = split_by_subject(config, Path(scratch), records, roots)
    held_out = {str(subject) for subject, side in zip(result.subjects, result.splits, strict=True)
                if side == args.split}
    images_in_split = sum(side == args.split for side in result.splits)
    print(f"the release's {args.split} split, made again: {images_in_split} images of "
          f"{len(held_out)} subjects")

    rows = []
    for path in args.images:
        with open(path, newline="") as handle:
            rows += [row for row in csv.DictReader(handle) if row["subject"] in held_out]
    rows = list({row["path"]: row for row in rows}.values())
    if not rows:
        print("no listed image belongs to a held-out subject", file=sys.stderr)
        return 1
    sources = sorted({row["source"] for row in rows})
    print(f"scoring {len(rows)} images of those subjects ({', '.join(sources)})")

    model = braintumor_tf.load(args.model)
    columns = ["path", "source", "subject", "unit", "fold", "label", "predicted", *CLASS_NAMES]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for start in range(0, len(rows), args.batch):
            batch = rows[start:start + args.batch]
            for row, record in zip(batch, model.predict([r["path"] for r in batch]), strict=True):
                if record["error"]:
                    raise SystemExit(f"could not score {row['path']}: {record['error']}")
                label = row["label"]
                label = CLASS_NAMES[int(label)] if label.isdigit() else label
                probabilities = record["probabilities"]
                writer.writerow([row["path"], row["source"], row["subject"], row["unit"],
                                 args.split, label, record["class_name"],
                                 *(f"{probabilities[name]:.4f}" for name in CLASS_NAMES)])
            print(f"  {min(start + args.batch, len(rows))}/{len(rows)}", flush=True)
    temporary.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
