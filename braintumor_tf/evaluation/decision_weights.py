"""Choosing a class's decision weight out of fold, and scoring the choice honestly.

A weight w on one class multiplies its probability before the argmax (``calibrate
--class-weight``). It is one number, but choosing it on the predictions it is then scored on
flatters it a little; so each fold's weight is chosen on the other folds' out-of-fold
predictions and applied to that fold (nested), and those rows are what ``compare`` judges. The
release takes the weight chosen on all folds.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.discover import CLASS_NAMES

DEFAULT_GRID = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)


def _arrays(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.array([[float(row[name]) for name in CLASS_NAMES] for row in rows])
    labels = np.array([CLASS_NAMES.index(row["label"]) for row in rows])
    return probabilities, labels


def weighted(probabilities: np.ndarray, class_index: int, weight: float) -> np.ndarray:
    out = np.array(probabilities, dtype=np.float64)
    out[:, class_index] *= weight
    return out / out.sum(axis=1, keepdims=True)


def accuracy_by_weight(rows: Sequence[dict], class_name: str,
                       grid: Sequence[float] = DEFAULT_GRID) -> dict[float, float]:
    probabilities, labels = _arrays(rows)
    index = CLASS_NAMES.index(class_name)
    return {float(w): float(np.mean(weighted(probabilities, index, w).argmax(1) == labels))
            for w in grid}


def choose_weight(rows: Sequence[dict], class_name: str,
                  grid: Sequence[float] = DEFAULT_GRID) -> float:
    """The most accurate weight; ties go to the one nearest 1 (the smallest change)."""
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown class {class_name!r}; classes are {list(CLASS_NAMES)}")
    if not grid or min(grid) <= 0:
        raise ValueError(f"the grid must hold positive weights, got {list(grid)!r}")
    scores = accuracy_by_weight(rows, class_name, grid)
    best = max(scores.values())
    return min((w for w, s in scores.items() if s >= best - 1e-12),
               key=lambda w: abs(np.log(w)))


def nested_choice(rows: Sequence[dict], class_name: str,
                  grid: Sequence[float] = DEFAULT_GRID) -> tuple[list[dict], dict]:
    """Rows re-predicted with each fold's weight chosen on the other folds, and what was chosen
    (per fold, and on all folds for the release)."""
    folds = sorted({row["fold"] for row in rows}, key=int)
    if len(folds) < 2:
        raise ValueError("nested choice needs out-of-fold predictions of two folds or more")
    index = CLASS_NAMES.index(class_name) if class_name in CLASS_NAMES else None
    chosen, out = {}, []
    for fold in folds:
        others = [row for row in rows if row["fold"] != fold]
        chosen[fold] = weight = choose_weight(others, class_name, grid)
        mine = [row for row in rows if row["fold"] == fold]
        probabilities = weighted(_arrays(mine)[0], index, weight)
        for row, p in zip(mine, probabilities, strict=True):
            out.append({**row, "predicted": CLASS_NAMES[int(p.argmax())],
                        **{name: f"{value:.4f}" for name, value in zip(CLASS_NAMES, p, strict=True)}})
    summary = {"class": class_name, "grid": [float(w) for w in grid],
               "per_fold": {str(k): v for k, v in chosen.items()},
               "release": choose_weight(rows, class_name, grid),
               "accuracy_by_weight": accuracy_by_weight(rows, class_name, grid)}
    return out, summary


def write_fold_csvs(rows: Sequence[dict], out_dir: Path, suffix: str = "") -> list[Path]:
    """One ``fold<k>{suffix}.csv`` per fold, as training publishes them (``compare`` reads it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    written = []
    for fold in sorted({row["fold"] for row in rows}, key=int):
        path = out_dir / f"fold{fold}{suffix}.csv"
        with open_csv(path, "w") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(row for row in rows if row["fold"] == fold)
        written.append(path)
    return written
