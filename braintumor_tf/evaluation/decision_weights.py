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


MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _paired_arrays(rows_a: Sequence[dict], rows_b: Sequence[dict]):
    """Both runs' probabilities on the same images (same fold split: every image held out from
    both recipes' fold models at once), in ``rows_b``'s order."""
    by_path = {row["path"]: row for row in rows_a}
    missing = [row["path"] for row in rows_b if row["path"] not in by_path]
    if missing or len(by_path) != len(rows_b):
        raise ValueError(f"the two runs scored different images ({len(missing)} of B's not in A)")
    paired = [by_path[row["path"]] for row in rows_b]
    if any(a["fold"] != b["fold"] for a, b in zip(paired, rows_b, strict=True)):
        raise ValueError("the two runs split the folds differently: mix only runs of one split")
    return _arrays(paired)[0], _arrays(rows_b)[0], _arrays(rows_b)[1]


def _mixture_accuracy(a, b, labels, share_a: float, index: int, weight: float) -> float:
    return float(np.mean(weighted(share_a * a + (1 - share_a) * b, index, weight).argmax(1)
                         == labels))


def choose_mixture(a, b, labels, class_name: str, mix_grid=MIX_GRID,
                   weight_grid=DEFAULT_GRID) -> tuple[float, float]:
    """(share of A, class weight) with the best accuracy; ties go to the least change (A's share
    nearest 0, then the weight nearest 1)."""
    index = CLASS_NAMES.index(class_name)
    scores = {(s, w): _mixture_accuracy(a, b, labels, s, index, w)
              for s in mix_grid for w in weight_grid}
    best = max(scores.values())
    return min((key for key, score in scores.items() if score >= best - 1e-12),
               key=lambda key: (key[0], abs(np.log(key[1]))))


def nested_mixture(rows_a: Sequence[dict], rows_b: Sequence[dict], class_name: str,
                   mix_grid=MIX_GRID, weight_grid=DEFAULT_GRID) -> tuple[list[dict], dict]:
    """Two recipes' out-of-fold answers averaged (share s of A, 1 - s of B) with a class weight,
    both chosen for each fold on the other folds; the rows re-predicted so, and the choices."""
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown class {class_name!r}; classes are {list(CLASS_NAMES)}")
    a, b, labels = _paired_arrays(rows_a, rows_b)
    folds = np.array([row["fold"] for row in rows_b])
    index = CLASS_NAMES.index(class_name)
    chosen, out = {}, []
    for fold in sorted(set(folds.tolist()), key=int):
        other = folds != fold
        share, weight = choose_mixture(a[other], b[other], labels[other], class_name,
                                       mix_grid, weight_grid)
        chosen[fold] = {"share_a": share, "weight": weight}
        mine = np.flatnonzero(~other)
        probabilities = weighted(share * a[mine] + (1 - share) * b[mine], index, weight)
        for row_index, p in zip(mine, probabilities, strict=True):
            row = rows_b[row_index]
            out.append({**row, "predicted": CLASS_NAMES[int(p.argmax())],
                        **{name: f"{value:.4f}" for name, value in zip(CLASS_NAMES, p, strict=True)}})
    share, weight = choose_mixture(a, b, labels, class_name, mix_grid, weight_grid)
    return out, {"class": class_name, "per_fold": chosen,
                 "release": {"share_a": share, "weight": weight}}
