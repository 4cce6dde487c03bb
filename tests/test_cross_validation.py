"""Patient-level K-fold cross-validation: folds, labels tables, sources, the bootstrap report,
paired comparisons, and one CV run through the CLI as a user types it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from support import run_python, write_png

from braintumor_tf.data.discover import CLASS_NAMES, ImageRecord
from braintumor_tf.data.labels_csv import records_from_labels, source_name
from braintumor_tf.data.splits import group_folds
from braintumor_tf.evaluation.cross_validation import compare, cv_report

# ---- folds -------------------------------------------------------------------------------------


def test_folds_keep_groups_whole_and_balance_classes():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(120), rng.integers(1, 9, size=120))
    labels = (np.arange(120) % 4)[groups]  # a group is one patient: one class
    folds = group_folds(labels, groups, 5, seed=3)
    for group in np.unique(groups):
        assert len(set(folds[groups == group])) == 1
    for label in range(4):
        share = np.bincount(folds[labels == label], minlength=5) / np.sum(labels == label)
        assert np.all(np.abs(share - 0.2) < 0.08), share
    np.testing.assert_array_equal(folds, group_folds(labels, groups, 5, seed=3))
    assert not np.array_equal(folds, group_folds(labels, groups, 5, seed=4))


@pytest.mark.parametrize("folds, message", [(1, "folds must be"), (2.5, "folds must be"),
                                            (7, "at least 7 subjects")])
def test_bad_fold_counts_are_refused(folds, message):
    with pytest.raises(ValueError, match=message):
        group_folds([0, 1, 0, 1], [0, 1, 2, 3], folds, seed=0)


# ---- labels tables and sources -----------------------------------------------------------------


def _image(path, value=100):
    return write_png(path, np.full((12, 12), value, np.uint8))


def test_labels_table_paths_resolve_from_a_parent_folder(tmp_path):
    # ../shared/data's table sits in segmentation/ but names paths from the data set's top.
    _image(tmp_path / "data/segmentation/set/train/a.png")
    _image(tmp_path / "data/segmentation/set/test/b.png")
    table = tmp_path / "data/segmentation/classes.csv"
    table.write_text("path,class\nsegmentation/set/train/a.png,glioma\n"
                     "segmentation/set/test/b.png,pituitary_tumor\n")
    records = records_from_labels(table)
    assert [CLASS_NAMES[r.label] for r in records] == ["glioma", "pituitary"]
    assert all(Path(r.path).is_file() for r in records)
    assert {source_name(r) for r in records} == {"set"}


def test_labels_table_errors_name_the_problem(tmp_path):
    _image(tmp_path / "x.png")
    bad_class = tmp_path / "bad_class.csv"
    bad_class.write_text("path,class\nx.png,astrocytoma\n")
    with pytest.raises(ValueError, match="line 2: unknown class 'astrocytoma'"):
        records_from_labels(bad_class)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,class\nx.png,glioma\nnot_there.png,glioma\n")
    with pytest.raises(FileNotFoundError, match="1 listed image"):
        records_from_labels(missing)
    no_columns = tmp_path / "columns.csv"
    no_columns.write_text("file,label\nx.png,glioma\n")
    with pytest.raises(ValueError, match="needs columns path and class"):
        records_from_labels(no_columns)


def test_source_is_the_top_folder_under_the_root(tmp_path):
    root = tmp_path / "classification"
    assert source_name(ImageRecord(str(root / "nick/Training/glioma/1.jpg"), 0, str(root))) == "nick"
    # class folders straight under the root: the root is the source
    assert source_name(ImageRecord(str(root / "glioma/1.jpg"), 0, str(root))) == "classification"


# ---- report and comparison ---------------------------------------------------------------------


def _oof_rows(correct_by_unit: dict[int, list[bool]], source="s", label="glioma") -> list[dict]:
    rows = []
    for unit, outcomes in correct_by_unit.items():
        for index, correct in enumerate(outcomes):
            rows.append({"path": f"{source}/{unit}_{index}.png", "source": source,
                         "subject": f"S{unit}", "unit": str(unit), "fold": "0", "label": label,
                         "predicted": label if correct else "notumor"})
    return rows


def test_report_intervals_resample_subjects_not_images():
    rng = np.random.default_rng(1)
    # 40 patients of 10 slices each, a patient all right or all wrong: the effective sample is 40.
    by_patient = {unit: [bool(rng.random() < 0.7)] * 10 for unit in range(40)}
    report = cv_report(_oof_rows(by_patient), seed=0, samples=1000)
    accuracy = report["metrics"]["accuracy"]
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    width = accuracy["high"] - accuracy["low"]
    # An image-level bootstrap of 400 images would give ~0.09; 40 patients give ~0.28.
    assert width > 0.2, accuracy
    assert report["metrics"]["tumour_called_notumor"]["value"] == pytest.approx(
        1 - accuracy["value"])
    assert report["images"] == 400 and report["units"] == 40


def test_report_gives_every_source_its_own_numbers():
    rows = (_oof_rows({u: [True, True] for u in range(10)}, source="upright")
            + _oof_rows({u: [False, True] for u in range(10, 20)}, source="turned"))
    report = cv_report(rows, samples=200)
    assert report["metrics"]["accuracy/upright"]["value"] == 1.0
    assert report["metrics"]["accuracy/turned"]["value"] == 0.5
    assert report["metrics"]["tumour_called_notumor/turned"]["value"] == 0.5
    assert report["images/turned"] == 20


def test_paired_comparison_sees_a_small_consistent_gain():
    rng = np.random.default_rng(2)
    units = range(60)
    base = {u: list(rng.random(20) < rng.uniform(0.3, 0.95)) for u in units}
    # B fixes one more slice in every patient: a small gain that the patients' spread (0.3-0.95)
    # would hide if the two runs were given separate intervals.
    better = {u: [True] + outcomes[1:] if not outcomes[0] else outcomes[:1] + [True] + outcomes[2:]
              for u, outcomes in base.items()}
    result = compare(_oof_rows(base), _oof_rows(better), samples=1000)
    delta = result["difference_b_minus_a"]["accuracy"]
    assert delta["value"] > 0 and delta["low"] > 0 and delta["verdict"] == "B higher"
    same = compare(_oof_rows(base), _oof_rows(base), samples=200)["difference_b_minus_a"]["accuracy"]
    assert same["value"] == same["low"] == same["high"] == 0.0
    assert same["verdict"] == "no difference shown"


def test_comparing_runs_of_other_images_or_labels_is_refused():
    rows = _oof_rows({0: [True]})
    other = [{**rows[0], "path": "elsewhere.png"}]
    with pytest.raises(ValueError, match="share no scored images"):
        compare(rows, other)
    relabelled = [{**rows[0], "label": "meningioma"}]
    with pytest.raises(ValueError, match="label glioma in A but meningioma in B"):
        compare(rows, relabelled)


# ---- a cross-validation run through the CLI ---------------------------------------------------


def _slice(rng, label: int, size: int = 32) -> np.ndarray:
    """A bright block in the class's quadrant on a textured background: separable, not trivial."""
    image = rng.uniform(0, 60, (size, size))
    half = size // 2
    top, left = (label // 2) * half, (label % 2) * half
    shift = rng.integers(2, 6)
    image[top + shift:top + half - 2, left + shift:left + half - 2] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def patient_data(tmp_path_factory):
    """16 patients x 5 slices in class folders (source "scans"), plus one slice per patient of 8
    more patients in a labels table (source "export"), and subjects.csv for all."""
    root = tmp_path_factory.mktemp("cv")
    rng = np.random.default_rng(0)
    subjects = ["path,subject"]
    for patient in range(16):
        label = patient % 4
        for index in range(5):
            path = f"data/scans/{CLASS_NAMES[label]}/p{patient}_{index}.png"
            write_png(root / path, _slice(rng, label))
            subjects.append(f"{path},P{patient}")
    table = ["path,class"]
    for patient in range(16, 24):
        label = patient % 4
        path = f"export/p{patient}.png"
        write_png(root / path, _slice(rng, label))
        table.append(f"{path},{CLASS_NAMES[label]}")
        subjects.append(f"{path},P{patient}")
    (root / "subjects.csv").write_text("\n".join(subjects) + "\n")
    (root / "export_classes.csv").write_text("\n".join(table) + "\n")
    return root


TINY_CV = ["--set", "data.image_size=32", "--set", "model.stem_filters=8", "--set",
           "model.stem_stride=2", "--set", "model.stem_kernel_size=2",
           "--set", "model.block_filters=[16, 32]", "--set", "model.block_kernel_sizes=[3, 3]",
           "--set", "model.block_downsample=[true, false]", "--set", "model.dense_units=32",
           "--set", "train.batch_size=8", "--set", "train.epochs=30", "--set", "train.verbose=0",
           "--set", "train.precision=float32", "--set", "optimizer.learning_rate=0.003",
           "--set", "data.augment.rotation=0", "--set", "data.augment.zoom=0",
           "--set", "data.augment.horizontal_flip=false", "--set", "data.cache=false"]


@pytest.fixture(scope="module")
def cv_run(patient_data):
    run_dir = patient_data / "run"
    run_python("-m", "braintumor_tf.train", "--data", str(patient_data / "data"),
               "--labels", str(patient_data / "export_classes.csv"),
               "--subjects", str(patient_data / "subjects.csv"), "--folds", "2",
               "--set", "data.train_sources=[scans]", "--publish", str(patient_data / "published"),
               "--set", "train.held_out_tta=[mirror]", "--run", str(run_dir), *TINY_CV)
    return run_dir


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_image_is_held_out_once_by_a_model_that_never_saw_its_patient(cv_run):
    folds = _csv_rows(cv_run / "folds.csv")
    assert len(folds) == 88
    fold_of_subject: dict[str, set] = {}
    for row in folds:
        fold_of_subject.setdefault(row["subject"], set()).add(row["fold"])
    assert all(len(found) == 1 for found in fold_of_subject.values())
    out_of_fold = _csv_rows(cv_run / "out_of_fold.csv")
    assert sorted(r["path"] for r in out_of_fold) == sorted(r["path"] for r in folds)
    for fold in ("0", "1"):
        held_out = {r["path"] for r in folds if r["fold"] == fold}
        manifest = _csv_rows(cv_run / f"folds/fold{fold}/split_manifest.csv")
        trained = {r["path"] for r in manifest if r["split"] == "train"}
        assert trained and not trained & held_out
        summary = json.loads((cv_run / f"folds/fold{fold}/summary.json").read_text())
        # data.train_sources=[scans]: the table's images are scored, never trained on
        assert summary["train_images"] == sum(r["source"] == "scans" and r["fold"] != fold
                                              for r in folds)
    assert {r["fold"] for r in out_of_fold} == {"0", "1"}


def test_cv_report_learns_the_task_and_reports_each_source(cv_run, patient_data):
    report = json.loads((cv_run / "cv_report.json").read_text())
    # A bright block in one quadrant per class: learnt (chance is 0.25), also on the export.
    assert report["metrics"]["accuracy"]["value"] >= 0.8, report["metrics"]["accuracy"]
    assert report["metrics"]["accuracy/export"]["value"] >= 0.6
    assert {"accuracy/scans", "accuracy/export"} <= set(report["metrics"])
    assert "95 % interval" in (cv_run / "cv_report.md").read_text()
    published = sorted(p.name for p in (patient_data / "published").glob("*.csv"))
    assert published == ["fold0.csv", "fold0_tta-mirror.csv", "fold1.csv", "fold1_tta-mirror.csv"]
    # Mirroring moves the bright block to another quadrant, i.e. another class here: the
    # averaging chosen out of fold would be refused, as it should.
    mirrored = json.loads((cv_run / "cv_report_tta-mirror.json").read_text())
    assert mirrored["metrics"]["accuracy"]["value"] < report["metrics"]["accuracy"]["value"]


def test_rerunning_a_finished_cv_trains_nothing(cv_run, patient_data):
    before = (cv_run / "out_of_fold.csv").stat().st_mtime_ns
    result = run_python("-m", "braintumor_tf.train", "--data", str(patient_data / "data"),
                        "--labels", str(patient_data / "export_classes.csv"),
                        "--subjects", str(patient_data / "subjects.csv"), "--folds", "2",
                        "--set", "data.train_sources=[scans]", "--set", "train.held_out_tta=[mirror]",
                        "--run", str(cv_run), *TINY_CV)
    assert "already holds a finished run" in result.stderr + result.stdout
    assert (cv_run / "out_of_fold.csv").stat().st_mtime_ns == before


def test_compare_command_pairs_two_runs(cv_run, tmp_path):
    result = run_python("-m", "braintumor_tf", "compare", str(cv_run), str(cv_run),
                        "--json", str(tmp_path / "c.json"))
    comparison = json.loads((tmp_path / "c.json").read_text())
    assert comparison["images"] == 88
    assert comparison["difference_b_minus_a"]["accuracy"]["value"] == 0.0
    assert "B − A" in result.stdout


def test_segmentation_report_bins_sizes_and_counts_missed_slices():
    rows = []
    for unit in range(12):
        small_dice = 0.05 if unit < 3 else 0.6  # 3 of 12 small tumours missed
        rows.append({"path": f"{unit}_s.png", "source": "seg", "subject": f"S{unit}",
                     "unit": str(unit), "fold": "0", "dice": str(small_dice), "hd95": "10",
                     "tumour_fraction": "0.005"})
        rows.append({"path": f"{unit}_l.png", "source": "seg", "subject": f"S{unit}",
                     "unit": str(unit), "fold": "0", "dice": "0.9", "hd95": "",
                     "tumour_fraction": "0.05"})
    report = cv_report(rows, seed=0, samples=300)
    assert report["task"] == "segmentation" and report["images"] == 24
    metrics = report["metrics"]
    assert metrics["fraction_dice_below_0_1"]["value"] == pytest.approx(3 / 24)
    assert metrics["below_0.1/small"]["value"] == pytest.approx(3 / 12)
    assert metrics["dice/large"]["value"] == pytest.approx(0.9)
    assert metrics["mean_hd95"]["value"] == pytest.approx(10.0)  # slices without HD95 left out
    assert metrics["mean_dice"]["low"] < metrics["mean_dice"]["value"] < metrics["mean_dice"]["high"]
    better = [{**row, "dice": "0.9"} if row["dice"] == "0.05" else row for row in rows]
    delta = compare(rows, better, samples=300)["difference_b_minus_a"]
    assert delta["fraction_dice_below_0_1"]["value"] == pytest.approx(-3 / 24)
    assert delta["mean_dice"]["value"] > 0


def test_the_release_of_a_cv_run_is_the_fold_ensemble(cv_run, patient_data):
    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.data.decode import read_image

    ensemble = load_model(cv_run / "model.keras")
    members = [load_model(cv_run / f"folds/fold{k}/model.keras") for k in range(2)]
    paths = sorted((patient_data / "data/scans").rglob("*.png"))[:6]
    pixels = np.stack([read_image(p, 1, 32) for p in paths])
    want = np.mean([m.predict(pixels, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(pixels, verbose=0), want, atol=1e-5)
    assert (cv_run / "ood_guard.npz").is_file()  # fitted on the last fold's model's features
    # its temperature: from the out-of-fold answers, not from validation images it trained on
    import json

    from braintumor_tf.config import load_config
    from braintumor_tf.evaluation.cross_validation import out_of_fold_rows
    from braintumor_tf.evaluation.guard_fit import out_of_fold_arrays
    from braintumor_tf.models.guard import Guard, fit_temperature

    held_out_tta = load_config(cv_run / "config.yaml").train.held_out_tta
    rows = out_of_fold_rows(cv_run, held_out_tta[0] if held_out_tta else "none")
    report = json.loads((cv_run / "ood_guard.json").read_text())
    assert report["temperature_from"] == f"out-of-fold predictions of {len(rows)} images"
    assert Guard.load(cv_run / "ood_guard.npz").temperature == pytest.approx(
        fit_temperature(*out_of_fold_arrays(rows)), rel=1e-6)
    assert {r["split"] for r in _csv_rows(cv_run / "split_manifest.csv")} == {"train", "val"}


def test_the_fold_ensemble_exports_for_serving_with_its_spec(cv_run, tmp_path):
    """What a CV release ships: the ensemble as a SavedModel version and a LiteRT file, each
    describing itself, answering as the ensemble does, guard included."""
    from braintumor_tf.api import load
    from braintumor_tf.spec import read_spec

    result = run_python("-m", "braintumor_tf", "export", "--run", str(cv_run), "--out",
                        str(tmp_path / "classifier"), "--version", "3", "--tflite", "float16",
                        "--tta", "mirror", "--parity-split", "val")
    assert "TFLite float16" in result.stdout + result.stderr
    saved = tmp_path / "classifier" / "3"
    lite = tmp_path / "classifier" / "classifier_float16.tflite"
    for exported in (saved, lite):
        spec = read_spec(exported)
        assert (spec.task, spec.averaging, spec.image_size) == ("classification", "mirror", 32)
        assert spec.ood_threshold is not None
    paths = sorted(str(p) for p in (cv_run.parent / "data/scans").rglob("*.png"))[:12]
    served, edge = load(saved).predict(paths), load(lite).predict(paths)
    assert [r["class_name"] for r in served] == [r["class_name"] for r in edge]
    assert all(r["in_distribution"] is not None for r in served)
    parity = json.loads((tmp_path / "classifier" / "tflite_parity.json").read_text())
    assert parity["variants"]["float16"]["agreement"] >= 0.99


@pytest.mark.slow
def test_a_staged_recipe_cross_validates_stage_by_stage(patient_data, tmp_path):
    run_dir = tmp_path / "staged"
    stages = "train.stages=[{name: low, data.image_size: 32}, {name: more, train.epochs: 2}]"
    run_python("-m", "braintumor_tf.train", "--data", str(patient_data / "data"),
               "--subjects", str(patient_data / "subjects.csv"), "--folds", "2",
               "--run", str(run_dir), *TINY_CV, "--set", stages)
    for fold in ("0", "1"):
        first, second = (run_dir / f"folds/fold{fold}/stages/{name}" for name in ("1_low", "2_more"))
        # the second stage starts from the first one's last weights, on the same fold split
        config = (second / "config.yaml").read_text()
        assert str(first / "model.keras") in config
        assert (first / "split_manifest.csv").read_bytes() == (second / "split_manifest.csv").read_bytes()
        assert len((second / "history.csv").read_text().splitlines()) == 3
    out_of_fold = _csv_rows(run_dir / "out_of_fold.csv")
    assert len(out_of_fold) == 80 and (run_dir / "model.keras").is_file()


def test_shifts_out_of_fold_score_each_fold_model_on_its_own_held_out_images(cv_run, tmp_path):
    result = run_python("-m", "braintumor_tf", "evaluate", "--cv", str(cv_run),
                        "--shifts", "flip_left_right,sixteen_bit", "--json", str(tmp_path / "s.json"))
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["models"] == 2 and report["n"] == 88
    out_of_fold = json.loads((cv_run / "cv_report.json").read_text())["metrics"]["accuracy"]["value"]
    assert report["unshifted"]["accuracy"] == pytest.approx(out_of_fold)
    # A mirrored slice puts the block in another quadrant: another class for this task.
    assert report["shifts"]["flip_left_right"]["agreement"] < 0.9
    assert report["shifts"]["sixteen_bit"]["agreement"] > 0.9
    assert (cv_run / "shifts_out_of_fold.md").is_file() and "| sixteen_bit |" in result.stdout


def test_cross_validation_refuses_a_multi_worker_cluster(tmp_path, monkeypatch):
    from braintumor_tf.commands.cross_validate import train_folds
    from braintumor_tf.config import load_config

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="trains on one machine"):
        train_folds(load_config(None, ["data.folds=2"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_published_folder_gives_plain_or_averaged_predictions_never_both(tmp_path):
    from braintumor_tf.evaluation.cross_validation import read_run_predictions

    plain = _oof_rows({0: [True, True]})
    averaged = _oof_rows({0: [False, False]})
    for name, rows in (("fold0.csv", plain), ("fold0_tta-mirror.csv", averaged)):
        with open(tmp_path / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    assert [r["predicted"] for r in read_run_predictions(tmp_path)] == ["glioma", "glioma"]
    assert [r["predicted"] for r in read_run_predictions(tmp_path, "mirror")] == ["notumor"] * 2
    with pytest.raises(FileNotFoundError, match="with dihedral averaging"):
        read_run_predictions(tmp_path, "dihedral")
