"""scripts/held_out_csv.py: evaluate's predictions on a fold's held-out slices, as a CSV that
``compare`` pairs by patient."""

import csv
import os
import subprocess
import sys
from pathlib import Path

from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.evaluation.cross_validation import read_run_predictions

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "held_out_csv.py"


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _setup(tmp_path):
    """Three held-out files, scored by evaluate through links with other names, in another order."""
    data = tmp_path / "data"
    data.mkdir()
    fold_rows, predictions = [], []
    for index, label in enumerate(["glioma", "notumor", "pituitary"]):
        (data / f"slice{index}.png").write_bytes(b"png")
        fold_rows.append({"path": f"data/slice{index}.png", "source": "a" if index else "b",
                          "subject": f"S{index}", "unit": str(index), "fold": "4",
                          "label": label, "predicted": label,
                          **{name: "0.25" for name in CLASS_NAMES}})
        link = tmp_path / "by_source" / label / f"renamed_{index}.png"
        link.parent.mkdir(parents=True)
        os.symlink(data / f"slice{index}.png", link)
        probabilities = [0.1, 0.1, 0.1, 0.1]
        probabilities[CLASS_NAMES.index("notumor")] = 0.7  # the model calls everything notumor
        predictions.append({"path": str(link.relative_to(tmp_path)), "label": label,
                            "predicted": "notumor",
                            **dict(zip(CLASS_NAMES, map(str, probabilities), strict=True))})
    _write(tmp_path / "fold4.csv", fold_rows)
    _write(tmp_path / "predictions.csv", predictions[::-1])
    return tmp_path / "predictions.csv", tmp_path / "fold4.csv"


def _run(tmp_path, predictions, fold_csv):
    return subprocess.run([sys.executable, str(SCRIPT), "--predictions", str(predictions),
                           "--fold-csv", str(fold_csv), "--out", str(tmp_path / "out.csv")],
                          cwd=tmp_path, capture_output=True, text=True)


def test_predictions_join_the_fold_rows_by_the_file_they_link_to(tmp_path):
    predictions, fold_csv = _setup(tmp_path)
    result = _run(tmp_path, predictions, fold_csv)
    assert result.returncode == 0, result.stderr
    rows = read_run_predictions(tmp_path / "out.csv")
    assert [row["subject"] for row in rows] == ["S0", "S1", "S2"]  # the fold's order and patients
    assert [row["predicted"] for row in rows] == ["notumor"] * 3  # the model's answers, not the fold's
    assert [row["source"] for row in rows] == ["b", "a", "a"]
    assert "accuracy 0.3333" in result.stdout


def test_a_held_out_slice_without_a_prediction_is_refused(tmp_path):
    predictions, fold_csv = _setup(tmp_path)
    with open(predictions) as handle:
        lines = handle.readlines()
    predictions.write_text("".join(lines[:-1]))
    result = _run(tmp_path, predictions, fold_csv)
    assert result.returncode != 0 and "1 of 3 held-out slices have no prediction" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_make_folder_links_each_held_out_slice_under_its_source_and_class(tmp_path):
    _, fold_csv = _setup(tmp_path)
    result = subprocess.run([sys.executable, str(SCRIPT), "--make-folder", "folder",
                             "--fold-csv", str(fold_csv)], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    links = sorted(p.relative_to(tmp_path / "folder").parts[:2]
                   for p in (tmp_path / "folder").rglob("*.png"))
    assert links == [("a", "notumor"), ("a", "pituitary"), ("b", "glioma")]
    for link in (tmp_path / "folder").rglob("*.png"):
        assert link.is_symlink() and link.resolve().parent == (tmp_path / "data").resolve()
