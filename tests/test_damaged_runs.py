"""A damaged file in a run directory never blocks the run for good: derived files are rebuilt
identically, a damaged checkpoint falls back to the backup or a clean restart with a warning, and
anything else stops with one line naming the file and what to do."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from support import ENV, TINY_DETERMINISTIC, base_image, write_image

from braintumor_tf.commands import run_dir as run_directory
from braintumor_tf.commands.run_dir import start_run
from braintumor_tf.config import load_config
from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.data.phantoms import METADATA_FILE, write_phantom_dataset

SPLIT_FILES = ("split_manifest.csv", "split.json", "subjects.json", "bad_files.csv")


def _data(root, per_class=6):
    for c, name in enumerate(CLASS_NAMES):
        for k in range(per_class):
            write_image(root / name / f"{name}_{k}.png", base_image(100 * c + k, 48))
    return root


def _damage(path, how: str):
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "cut": data[: len(data) // 2], "zeros": b"\0" * len(data),
                      "list": b"[]", "latin1": b"\xff\xfe{"}[how])


@pytest.fixture
def warned(caplog):
    """The package's warnings, whether or not an earlier test configured its logger (the CLI
    turns propagation to the root logger off)."""
    logger = logging.getLogger("braintumor_tf")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def split_run(tmp_path):
    from braintumor_tf.tasks import get_task

    data = _data(tmp_path / "data")
    config = load_config(None, [f"data.root={data}", "data.val_fraction=0.25",
                                "data.test_fraction=0.25"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    task = get_task("classification")
    rows = task.prepare_data(config, run_dir).rows
    original = {name: (run_dir / name).read_bytes() for name in SPLIT_FILES}
    return task, config, run_dir, data, rows, original


@pytest.mark.parametrize("damage", [("split.json", "empty"), ("split.json", "cut"),
                                    ("subjects.json", "cut"), ("subjects.json", "zeros"),
                                    ("subjects.json", "list"), ("split.json", "latin1"),
                                    ("both", "empty")])
def test_a_damaged_split_record_is_rebuilt_identically(split_run, damage, warned):
    task, config, run_dir, _, rows, original = split_run
    name, how = damage
    for target in (("split.json", "subjects.json") if name == "both" else (name,)):
        _damage(run_dir / target, how)
    again = task.prepare_data(config, run_dir).rows
    assert again == rows
    assert {n: (run_dir / n).read_bytes() for n in SPLIT_FILES} == original
    assert "rebuilt: splitting the data again gave this run's split_manifest.csv" in warned.text
    assert task.prepare_data(config, run_dir).rows == rows  # and reused as usual afterwards


def test_a_damaged_split_record_whose_data_changed_stops_in_one_line(split_run):
    task, config, run_dir, data, _, original = split_run
    write_image(data / "glioma" / "new.png", base_image(999, 48))
    _damage(run_dir / "split.json", "cut")
    for _ in range(2):  # and again on the next start: nothing was silently replaced
        with pytest.raises(ValueError) as caught:
            task.prepare_data(config, run_dir)
        message = str(caught.value)
        assert "\n" not in message and str(run_dir / "split.json") in message
        assert "restore the file from a copy, or train into a new --out" in message
        assert "Expecting" not in message and "Unterminated" not in message
    assert (run_dir / "split_manifest.csv").read_bytes() == original["split_manifest.csv"]
    assert not (run_dir / "split_manifest.csv.rebuilt").exists()


def test_a_truncated_phantoms_json_regenerates_the_same_images(tmp_path):
    root = write_phantom_dataset(tmp_path / "phantoms", 2, 32, 5)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    _damage(root / METADATA_FILE, "cut")
    assert write_phantom_dataset(root, 2, 32, 5) == root
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_an_empty_summary_is_not_a_finished_run_and_is_moved_aside(tmp_path, warned):
    config = load_config(None, [])
    run_dir = tmp_path / "run"
    start_run(config, run_dir)
    for how in ("empty", "cut", "list", "latin1"):
        (run_dir / "summary.json").write_text(json.dumps({"epochs": 3, "test": {"n": 12}}))
        _damage(run_dir / "summary.json", how)
        directory, finished = start_run(config, run_dir)
        assert finished is None, how
        assert not (run_dir / "summary.json").exists()
        assert (run_dir / "summary.json.damaged").exists()
        assert f"{run_dir / 'summary.json'} is damaged" in warned.text
    assert run_directory.read_summary(run_dir / "summary.json") is None  # none at all: simply not finished


def test_a_backup_left_behind_by_a_kill_after_the_summary_is_removed(tmp_path):
    config = load_config(None, [])
    run_dir = tmp_path / "run"
    start_run(config, run_dir)
    (run_dir / "summary.json").write_text(json.dumps({"epochs": 3}))
    (run_dir / "backup").mkdir()
    (run_dir / "backup" / "training_metadata.json").write_text("{}")
    _, finished = start_run(config, run_dir)
    assert finished == {"epochs": 3}
    assert not (run_dir / "backup").exists()


def test_a_damaged_best_checkpoint_is_told_from_a_whole_one_and_moved_aside(tmp_path,
                                                                          warned):
    import keras

    whole = tmp_path / "whole.keras"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(whole)
    assert run_directory.keras_file_problem(whole) is None
    data = whole.read_bytes()
    cases = {"empty": b"", "zeros": b"\0" * len(data), "cut": data[: len(data) // 2],
             "flipped": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
             "not a model": b"PK\x05\x06" + b"\0" * 18}  # an empty zip
    for name, content in cases.items():
        run_dir = tmp_path / name.replace(" ", "_")
        run_dir.mkdir()
        (run_dir / "best.keras").write_bytes(content)
        assert run_directory.keras_file_problem(run_dir / "best.keras") is not None, name
        if name == "cut":
            (run_dir / "backup").mkdir()
        run_directory.recover_best_checkpoint(run_dir)
        assert not (run_dir / "best.keras").exists(), name
        assert (run_dir / "best.keras.damaged").read_bytes() == content
    assert "resuming from" in warned.text and "training again from epoch 1" in warned.text
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "best.keras").write_bytes(data)
    run_directory.recover_best_checkpoint(tmp_path / "ok")
    assert (tmp_path / "ok" / "best.keras").read_bytes() == data


def _train(run_dir, kill_at=None):
    env = dict(ENV)
    if kill_at:
        env["BRAINTUMOR_TF_KILL_AT"] = kill_at
    result = subprocess.run([sys.executable, "-m", "braintumor_tf.train", "--run", str(run_dir),
                             *TINY_DETERMINISTIC], capture_output=True, text=True, env=env,
                            timeout=600)
    return result, result.stdout + result.stderr


def _weights(path):
    from braintumor_tf.custom_objects import load_model

    return load_model(path, compile=False).get_weights()


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for got, want in zip(a, b, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_damaged_run_files_in_tiny_runs_resume_or_rebuild(tmp_path):
    # A run killed after its last epoch (backup kept), then its best checkpoint zeroed and its
    # split records cut: it resumes from the backup and rebuilds the split identically.
    killed_dir = tmp_path / "killed"
    result, output = _train(killed_dir, "finish:1")
    assert result.returncode == -9, output[-3000:]
    manifest = (killed_dir / "split_manifest.csv").read_bytes()
    split_record = (killed_dir / "split.json").read_bytes()
    _damage(killed_dir / "best.keras", "zeros")
    _damage(killed_dir / "split.json", "cut")
    _damage(killed_dir / "subjects.json", "empty")
    result, output = _train(killed_dir)
    assert result.returncode == 0, output[-3000:]
    assert "best.keras is damaged (empty or all zeros)" in output and "resuming from" in output
    assert "rebuilt: splitting the data again gave this run's split_manifest.csv" in output
    assert (killed_dir / "split_manifest.csv").read_bytes() == manifest
    assert (killed_dir / "split.json").read_bytes() == split_record
    assert json.loads((killed_dir / "summary.json").read_text())["test"]["n"] > 0
    assert not (killed_dir / "backup").exists()
    _weights(killed_dir / "model.keras")

    # A finished run whose summary.json is emptied: scored again, same model, same figures.
    run_dir = tmp_path / "run"
    result, output = _train(run_dir)
    assert result.returncode == 0, output[-3000:]
    reference = _weights(run_dir / "model.keras")
    summary = json.loads((run_dir / "summary.json").read_text())
    _damage(run_dir / "summary.json", "empty")
    result, output = _train(run_dir)
    assert result.returncode == 0, output[-3000:]
    assert "summary.json is damaged (empty)" in output
    rebuilt = json.loads((run_dir / "summary.json").read_text())
    assert rebuilt["test"] == summary["test"]
    assert {k: v for k, v in rebuilt.items() if k != "fit_seconds"} == \
        {k: v for k, v in summary.items() if k != "fit_seconds"}
    _assert_same_weights(_weights(run_dir / "model.keras"), reference)

    # No backup left and best.keras zeroed: a clean restart, to the same weights (deterministic).
    (run_dir / "summary.json").unlink()
    _damage(run_dir / "best.keras", "zeros")
    result, output = _train(run_dir)
    assert result.returncode == 0, output[-3000:]
    assert "training again from epoch 1" in output
    _assert_same_weights(_weights(run_dir / "model.keras"), reference)
