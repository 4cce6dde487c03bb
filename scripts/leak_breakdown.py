"""Accuracy on a folder's images, broken down by where a run's group-aware split put them.

    braintumor-tf evaluate --model RUN/model.keras --data FOLDER [--data FOLDER] --out RUN/original_testing
    python scripts/leak_breakdown.py RUN

Shows how much an evaluation folder (e.g. a dataset's own Testing split) overlaps the run's
training split, and how the model does on the overlapping vs the unseen images.
"""

from __future__ import annotations

import collections
import csv
import sys
from pathlib import Path


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run = Path(sys.argv[1])
    predictions = run / "original_testing" / "predictions.csv"
    if not predictions.exists():
        raise SystemExit(f"error: {predictions} not found; run the evaluate command above first")
    with open(run / "split_manifest.csv", newline="") as handle:
        split_of = {row["path"]: row["split"] for row in csv.DictReader(handle)}
    counts = collections.defaultdict(lambda: [0, 0])
    with open(predictions, newline="") as handle:
        for row in csv.DictReader(handle):
            where = split_of.get(row["path"], "not in the run")
            counts[where][0] += row["label"] == row["predicted"]
            counts[where][1] += 1
    print("| where the run's split put the image | n | accuracy |\n|---|---:|---:|")
    for where, (correct, total) in sorted(counts.items()):
        print(f"| {where} | {total} | {correct / total:.3f} |")


if __name__ == "__main__":
    main()
