"""Turn ``evaluate --out``'s predictions.csv on one fold's held-out slices into an out-of-fold CSV,
so that ``braintumor-tf compare`` pairs two models on the same patients with intervals.

Why: a model built from fold k's networks (a release pair, a student distilled on fold k's
training patients) is measured honestly only on fold k's held-out slices, and two such models
are compared fairly only paired by patient. ``evaluate`` scores a folder; the fold CSV
(``docs/cv/<run>/fold<k>.csv``) knows each slice's patient, source and duplicate group. The
folder may hold links to the fold's files under any names: rows are matched by the file they
resolve to.

    python scripts/held_out_csv.py --make-folder runs/fold4_by_source \
        --fold-csv docs/cv/classifier_cv5_release/fold4.csv
    BRAINTUMOR_TF_FOLLOW_LINKS_OUT=1 braintumor-tf evaluate --model MODEL \
        --data runs/fold4_by_source --out runs/edge_eval
    python scripts/held_out_csv.py --predictions runs/edge_eval/predictions.csv \
        --fold-csv docs/cv/classifier_cv5_release/fold4.csv --out docs/cv/edge/fold4_edge.csv
    braintumor-tf compare docs/cv/edge/fold4_release.csv docs/cv/edge/fold4_edge.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path


def _resolved(path: str, base: Path) -> str:
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = base / candidate
    return os.path.realpath(candidate)


def held_out_rows(predictions: Path, fold_csv: Path, class_names) -> list[dict]:
    """The fold CSV's rows with the predictions' classes and probabilities, in the fold's order.
    Raises when a held-out slice has no prediction or a prediction matches no held-out slice."""
    with open(fold_csv, newline="") as handle:
        fold_rows = list(csv.DictReader(handle))
    with open(predictions, newline="") as handle:
        scored = list(csv.DictReader(handle))
    # The fold CSV's paths are relative to the folder training ran in, the predictions' to the
    # folder evaluate ran in: both are tried from the working directory.
    by_file = {_resolved(row["path"], Path.cwd()): row for row in scored}
    missing = [row["path"] for row in fold_rows
               if _resolved(row["path"], Path.cwd()) not in by_file]
    if missing:
        raise ValueError(f"{len(missing)} of {len(fold_rows)} held-out slices have no prediction "
                         f"in {predictions}, e.g. {missing[0]} (run from the folder the fold "
                         "CSV's paths are relative to)")
    if len(by_file) != len(fold_rows):
        raise ValueError(f"{predictions} scores {len(by_file)} files, the fold {len(fold_rows)}: "
                         "evaluate exactly the fold's held-out slices")
    out = []
    for row in fold_rows:
        prediction = by_file[_resolved(row["path"], Path.cwd())]
        if prediction["label"] != row["label"]:
            raise ValueError(f"{row['path']}: label {row['label']} in the fold CSV but "
                             f"{prediction['label']} in {predictions}")
        out.append({**{key: row[key] for key in ("path", "source", "subject", "unit", "fold",
                                                 "label")},
                    "predicted": prediction["predicted"],
                    **{name: f"{float(prediction[name]):.4f}" for name in class_names}})
    return out


def make_folder(fold_csvs, folder: Path, limit: int | None = None, seed: int = 0) -> int:
    """``<folder>/<source>/<class>/`` links to the slices of the fold CSVs (a random ``limit``
    of them, e.g. calibration images of the training folds): the layout ``evaluate`` reports
    per source. Returns the number of links."""
    import random

    rows = []
    for fold_csv in fold_csvs:
        with open(fold_csv, newline="") as handle:
            rows += list(csv.DictReader(handle))
    if limit is not None:
        random.Random(seed).shuffle(rows)
        rows = rows[:limit]
    for row in rows:
        target = Path(_resolved(row["path"], Path.cwd()))
        link = folder / row["source"] / row["label"] / "_".join(target.parts[-3:])
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            os.symlink(target, link)
    return len(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=Path, help="evaluate --out's predictions.csv")
    parser.add_argument("--fold-csv", type=Path, action="append", required=True,
                        help="the fold's out-of-fold CSV (its patients, sources and groups); "
                             "repeatable with --make-folder")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--make-folder", type=Path,
                        help="instead: write <folder>/<source>/<class>/ links to the slices")
    parser.add_argument("--limit", type=int, default=None,
                        help="with --make-folder: a random sample of this many slices")
    args = parser.parse_args(argv)
    if args.make_folder is not None:
        count = make_folder(args.fold_csv, args.make_folder, args.limit)
        print(f"{args.make_folder}: {count} links (evaluate follows links out of a data root with "
              "BRAINTUMOR_TF_FOLLOW_LINKS_OUT=1)")
        return 0
    if args.predictions is None or args.out is None or len(args.fold_csv) != 1:
        parser.error("give --predictions, one --fold-csv and --out (or --make-folder)")
    args.fold_csv = args.fold_csv[0]
    from braintumor_tf.data.discover import CLASS_NAMES

    for needed in (args.predictions, args.fold_csv):
        if not needed.is_file():
            sys.exit(f"Error: {needed} not found")
    try:
        rows = held_out_rows(args.predictions, args.fold_csv, CLASS_NAMES)
    except ValueError as error:
        sys.exit(f"Error: {error}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{args.out}: {len(rows)} held-out slices, "
          f"accuracy {sum(r['predicted'] == r['label'] for r in rows) / len(rows):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
