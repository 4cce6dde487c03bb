"""Segmentation's out-of-fold table and its statistics for the cross-validation report.

Per slice: Dice and HD95 at the slice's own size and the tumour's share of the slice; per
subject, sums of them, so a bootstrap over subjects is a weighted sum (evaluation/
cross_validation.py).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.evaluation.segmentation import SIZE_BINS

MISSED = 0.1  # a slice below this Dice is a missed tumour
# Per unit and source: slices, Dice sum, slices below 0.1, HD95 sum, slices with an HD95; then
# slices, Dice sum and slices below 0.1 for each size bin.
_BASE, _PER_BIN = 5, 3


def write_segmentation_out_of_fold(rows: Sequence[dict], predictions_csv: Path, truth: str,
                                   out_path: Path) -> None:
    with open_csv(predictions_csv) as handle:
        scored = {row["path"]: row for row in csv.DictReader(handle)}
    columns = ["path", "source", "subject", "unit", "fold", "dice", "hd95", "tumour_fraction"]
    temporary = out_path.with_name(out_path.name + ".tmp")
    with open_csv(temporary, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            found = scored.get(row["path"])
            if found is None or not found.get(f"dice_{truth}"):
                continue  # no truth for this slice (e.g. an annotation-less image)
            writer.writerow([row["path"], row["source"], row["subject"], row["unit"], row["fold"],
                             found[f"dice_{truth}"], found.get(f"hd95_{truth}", ""),
                             found[f"tumour_fraction_{truth}"]])
    temporary.replace(out_path)


class SegmentationStats:
    def __init__(self, rows: Sequence[dict], sources: Sequence[str] | None = None):
        self.sources = sorted({row["source"] for row in rows}) if sources is None else list(sources)
        self.units = sorted({row["unit"] for row in rows})
        index = {unit: i for i, unit in enumerate(self.units)}
        source_index = {name: i for i, name in enumerate(self.sources)}
        width = _BASE + _PER_BIN * len(SIZE_BINS)
        stats = np.zeros((len(self.units), len(self.sources), width))
        for row in rows:
            dice = float(row["dice"])
            entry = stats[index[row["unit"]], source_index[row["source"]]]
            entry[0] += 1
            entry[1] += dice
            entry[2] += dice < MISSED
            if row.get("hd95") not in (None, ""):
                entry[3] += float(row["hd95"])
                entry[4] += 1
            fraction = float(row["tumour_fraction"])
            for bin_index, (_, low, high) in enumerate(SIZE_BINS):
                if fraction > 0 and low <= fraction < high:
                    base = _BASE + _PER_BIN * bin_index
                    entry[base] += 1
                    entry[base + 1] += dice
                    entry[base + 2] += dice < MISSED
        self.width = width
        self.stats = stats.reshape(len(self.units), -1)

    def metrics(self, summed: np.ndarray) -> dict[str, np.ndarray]:
        per_source = summed.reshape(*summed.shape[:-1], len(self.sources), self.width)
        overall = per_source.sum(axis=-2)
        with np.errstate(invalid="ignore", divide="ignore"):
            found = {"mean_dice": overall[..., 1] / overall[..., 0],
                     "fraction_dice_below_0_1": overall[..., 2] / overall[..., 0],
                     "mean_hd95": overall[..., 3] / overall[..., 4]}
            for bin_index, (name, _, _) in enumerate(SIZE_BINS):
                base = _BASE + _PER_BIN * bin_index
                found[f"dice/{name}"] = overall[..., base + 1] / overall[..., base]
                found[f"below_0.1/{name}"] = overall[..., base + 2] / overall[..., base]
            if len(self.sources) > 1:
                for index, source in enumerate(self.sources):
                    entry = per_source[..., index, :]
                    found[f"dice/{source}"] = entry[..., 1] / entry[..., 0]
        return found

    def counts(self) -> dict[str, int]:
        per_source = self.stats.sum(axis=0).reshape(len(self.sources), self.width)
        return {"images": int(per_source[:, 0].sum()),
                **{f"images/{s}": int(per_source[i, 0]) for i, s in enumerate(self.sources)},
                **{f"images/{name}": int(per_source[:, _BASE + _PER_BIN * k].sum())
                   for k, (name, _, _) in enumerate(SIZE_BINS)}}
