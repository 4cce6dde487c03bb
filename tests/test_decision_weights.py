"""Choosing a decision weight out of fold (evaluation/decision_weights, scripts/decision_weights.py)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.evaluation.cross_validation import cv_report, read_run_predictions
from braintumor_tf.evaluation.decision_weights import choose_weight, nested_choice

ROOT = Path(__file__).resolve().parents[1]


def _rows(seed=0, folds=4, per_fold=200):
    """Out-of-fold rows of a model that leans to notumor: a fifth of the tumour slices get
    notumor slightly above their true class; notumor slices are called confidently."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(folds):
        for i in range(per_fold):
            label = int(rng.integers(4))
            p = np.full(4, 0.05)
            if label != 2 and rng.random() < 0.2:
                p[label], p[2] = 0.40, 0.50
            else:
                p[label] = 0.85
            p /= p.sum()
            rows.append({"path": f"f{fold}_{i}.png", "source": "synthetic",
                         "subject": f"S{fold}_{i // 4}", "unit": f"{fold}_{i // 4}",
                         "fold": str(fold), "label": CLASS_NAMES[label],
                         "predicted": CLASS_NAMES[int(p.argmax())],
                         **{name: f"{value:.4f}" for name, value in zip(CLASS_NAMES, p, strict=True)}})
    return rows


def test_a_weight_is_chosen_on_other_folds_and_recovers_leaning_answers():
    rows = _rows()
    assert choose_weight(rows, "notumor") < 0.8  # 0.5/0.4 needs a weight under 0.8 to flip
    out, summary = nested_choice(rows, "notumor")
    assert set(summary["per_fold"]) == {"0", "1", "2", "3"}
    assert all(w < 0.8 for w in summary["per_fold"].values())
    before, after = cv_report(rows, samples=50), cv_report(out, samples=50)
    assert after["metrics"]["tumour_called_notumor"]["value"] == 0.0
    assert before["metrics"]["tumour_called_notumor"]["value"] > 0.15
    assert after["metrics"]["accuracy"]["value"] > before["metrics"]["accuracy"]["value"] + 0.1
    assert [row["path"] for row in out] == [row["path"] for row in rows]
    # a model with nothing to correct keeps weight 1 (ties go to the smallest change)
    honest = [{**row, "notumor": "0.0100"} if row["label"] != "notumor" else row for row in rows]
    assert choose_weight(honest, "notumor") == 1.0
    with pytest.raises(ValueError, match="unknown class"):
        choose_weight(rows, "tumour")
    with pytest.raises(ValueError, match="two folds"):
        nested_choice([row for row in rows if row["fold"] == "0"], "notumor")


def test_the_script_writes_fold_csvs_that_compare_reads(tmp_path):
    source = tmp_path / "cv"
    source.mkdir()
    rows = _rows(seed=1, folds=3, per_fold=80)
    for fold in ("0", "1", "2"):
        with open(source / f"fold{fold}_tta-mirror.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(row for row in rows if row["fold"] == fold)
    out = tmp_path / "weighted"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "decision_weights.py"),
                           "--cv", str(source), "--tta", "mirror", "--out", str(out)],
                          capture_output=True, text=True, check=True)
    assert "on all folds (for the release)" in done.stdout
    summary = json.loads((out / "decision_weights.json").read_text())
    assert summary["release"] < 0.8 and summary["tta"] == "mirror"
    again = read_run_predictions(out, "mirror")
    assert len(again) == len(rows) and all(r["predicted"] != "notumor" or r["label"] == "notumor"
                                           for r in again)
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "decision_weights.py"),
                              "--cv", str(tmp_path / "nothing"), "--out", str(out)],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no out-of-fold predictions" in missing.stderr


def _two_recipes(seed=0, folds=4, per_fold=150):
    """Two recipes on the same images and folds: A is sure and right on source "x" and leans
    wrong on "y"; B the other way round, less sure. Averaged, each covers the other's source."""
    rng = np.random.default_rng(seed)
    rows_a, rows_b = [], []
    for fold in range(folds):
        for i in range(per_fold):
            label, source = int(rng.integers(4)), "x" if i % 2 else "y"
            wrong = (label + 1) % 4
            good, bad = np.full(4, 0.02), np.full(4, 0.1)
            good[label] = 0.94
            bad[wrong], bad[label] = 0.45, 0.35
            a, b = (good, bad) if source == "x" else (bad, good)
            base = {"path": f"s{fold}_{i}.png", "source": source, "subject": f"S{fold}_{i // 3}",
                    "unit": f"{fold}_{i // 3}", "fold": str(fold), "label": CLASS_NAMES[label]}
            for rows, p in ((rows_a, a), (rows_b, b)):
                rows.append({**base, "predicted": CLASS_NAMES[int(p.argmax())],
                             **{n: f"{v:.4f}" for n, v in zip(CLASS_NAMES, p, strict=True)}})
    return rows_a, rows_b


def test_two_recipes_are_mixed_out_of_fold_and_the_mixture_beats_both():
    from braintumor_tf.evaluation.decision_weights import nested_mixture

    rows_a, rows_b = _two_recipes()
    mixed, summary = nested_mixture(rows_a, rows_b, "notumor")
    assert 0 < summary["release"]["share_a"] < 1
    assert all(0 < c["share_a"] < 1 for c in summary["per_fold"].values())
    accuracy = {name: np.mean([row["predicted"] == row["label"] for row in rows])
                for name, rows in (("a", rows_a), ("b", rows_b), ("mixed", mixed))}
    assert accuracy["mixed"] > max(accuracy["a"], accuracy["b"]) + 0.2
    shuffled = [{**row, "fold": str((int(row["fold"]) + 1) % 4)} for row in rows_a]
    with pytest.raises(ValueError, match="split the folds differently"):
        nested_mixture(shuffled, rows_b, "notumor")
