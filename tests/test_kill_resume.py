"""A run killed at any point and resumed ends with the weights of an uninterrupted run
(train.deterministic), and an export killed before publishing leaves nothing behind."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from support import ENV, TINY_DETERMINISTIC, run_python

from braintumor_tf.faults import ENVIRONMENT_VARIABLE

pytestmark = pytest.mark.slow

# (point, the n-th time it is reached): mid-epoch, inside each checkpoint write of epoch 2,
# and after the last epoch while the test split is scored.
KILL_POINTS = [("train_batch", 7), ("backup_weights_written", 2), ("backup_metadata_written", 2),
               ("best_saved", 2), ("history_written", 2), ("finish", 1)]


def _train(run_dir, kill_at=None):
    env = dict(ENV)
    if kill_at:
        env[ENVIRONMENT_VARIABLE] = f"{kill_at[0]}:{kill_at[1]}"
    return subprocess.run([sys.executable, "-m", "braintumor_tf.train", "--run", str(run_dir),
                           *TINY_DETERMINISTIC], capture_output=True, text=True, env=env,
                          timeout=600)


def _weights(run_dir):
    from braintumor_tf.custom_objects import load_model

    return load_model(run_dir / "model.keras", compile=False).get_weights()


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as handle:
        return [(int(row["epoch"]), row["loss"], row["val_loss"]) for row in csv.DictReader(handle)]


def test_a_run_killed_anywhere_resumes_to_the_same_weights(tmp_path):
    reference_dir = tmp_path / "uninterrupted"
    result = _train(reference_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    reference, reference_history = _weights(reference_dir), _history(reference_dir)
    assert [epoch for epoch, _, _ in reference_history] == [0, 1, 2]
    assert not (reference_dir / "backup").exists()  # a finished run keeps no backup

    for point, count in KILL_POINTS:
        run_dir = tmp_path / f"{point}-{count}"
        killed = _train(run_dir, (point, count))
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-2000:])
        assert not (run_dir / "summary.json").exists()
        resumed = _train(run_dir)
        assert resumed.returncode == 0, (point, resumed.stderr[-3000:])
        weights = _weights(run_dir)
        assert len(weights) == len(reference)
        for got, want in zip(weights, reference, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"killed at {point}:{count}")
        # Every epoch once, with the uninterrupted run's losses.
        assert _history(run_dir) == reference_history, point


def test_an_export_killed_before_publishing_leaves_nothing_and_the_next_one_works(tmp_path):
    run_dir = tmp_path / "run"
    assert _train(run_dir).returncode == 0
    base = tmp_path / "exported"
    out = base / "1"
    env = {**ENV, ENVIRONMENT_VARIABLE: "export_written:1"}
    command = [sys.executable, "-m", "braintumor_tf.cli", "export", "--run", str(run_dir),
               "--out", str(base), "--version", "1"]
    killed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()
    leftovers = [name for name in os.listdir(out.parent) if name.startswith(".1.tmp-")]
    assert leftovers  # the killed process's partial version, not published
    run_python("-m", "braintumor_tf.cli", *command[3:])
    assert (out / "saved_model.pb").is_file()
    assert not [name for name in os.listdir(out.parent) if name.startswith(".1.tmp-")]
