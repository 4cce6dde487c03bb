"""A careless or unlucky run ends with one clear line and nothing broken left behind."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from braintumor_tf.commands.run_dir import check_resumable, start_run
from braintumor_tf.commands.train import train
from braintumor_tf.config import load_config, save_config
from braintumor_tf.custom_objects import load_model
from braintumor_tf.training.callbacks import TrainingDiverged

TINY = ["data.phantom_images_per_class=12", "data.phantom_image_size=32", "data.image_size=32",
        "model.stem_filters=8", "model.block_filters=[8, 16]", "model.block_kernel_sizes=[3, 3]",
        "model.block_downsample=[true, false]", "model.dense_units=0", "train.batch_size=8",
        "train.precision=float32", "train.verbose=0", "train.epochs=3"]


@pytest.mark.usefixtures("float32_policy")
def test_divergence_stops_at_the_first_non_finite_loss(tmp_path):
    config = load_config(None, [*TINY, "optimizer.learning_rate=1e6", "schedule.name=constant"])
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch \d+, step \d+.*learning_rate"):
        train(config, run_dir)
    assert not (run_dir / "model.keras").exists() and not (run_dir / "summary.json").exists()
    if (run_dir / "best.keras").exists():  # only from an epoch that ended finite
        weights = load_model(run_dir / "best.keras").get_weights()
        assert all(np.all(np.isfinite(w)) for w in weights)


def test_a_start_that_never_trained_does_not_lock_its_directory(tmp_path):
    run_dir = tmp_path / "run"
    first = load_config(None, ["data.root=/no/such/folder"])
    start_run(first, run_dir)  # as a start that then failed on its data
    (run_dir / "split_manifest.csv").write_text("path,label,class_name,group,split\n")
    second = load_config(None, ["train.epochs=1"])
    check_resumable(second, run_dir)  # no error: nothing was trained
    assert not (run_dir / "split_manifest.csv").exists()  # the stale split is gone
    save_config(second, run_dir / "config.yaml")
    (run_dir / "history.csv").write_text("epoch,loss\n0,1.0\n")
    # The error names what differs, in the form --set takes.
    default_epochs = first.train.epochs
    with pytest.raises(ValueError, match=r"holds a run with a different config \(data\.root: None "
                       r"in the run, '/no/such/folder' now; train\.epochs: 1 in the run, "
                       rf"{default_epochs} now\)"):
        check_resumable(first, run_dir)


def test_a_moved_staged_run_still_resumes_but_other_starting_weights_do_not(tmp_path):
    """Stage k's config holds the full path of stage k-1's checkpoint; copying the run elsewhere
    must not lock it, while a genuinely different starting checkpoint still does."""
    old_stage = tmp_path / "old" / "stages" / "2_whole"
    moved_stage = tmp_path / "moved" / "stages" / "2_whole"
    saved = load_config(None, [f"train.initial_weights={old_stage.parent / '1_crops' / 'best.keras'}"])
    moved_stage.mkdir(parents=True)
    save_config(saved, moved_stage / "config.yaml")
    (moved_stage / "history.csv").write_text("epoch,loss\n0,1.0\n")
    moved = saved.replace(**{"train.initial_weights":
                             str(moved_stage.parent / "1_crops" / "best.keras")})
    check_resumable(moved, moved_stage)  # no error
    for other in (tmp_path / "moved" / "stages" / "0_other" / "best.keras",
                  tmp_path / "pretrained" / "encoder.keras"):
        with pytest.raises(ValueError, match=r"different config \(train\.initial_weights"):
            check_resumable(saved.replace(**{"train.initial_weights": str(other)}), moved_stage)


def test_predict_with_an_unexported_savedmodel_says_what_to_run(tmp_path):
    from click.testing import CliRunner

    from braintumor_tf.cli import main

    image = tmp_path / "scan.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "segmenter"), str(image)])
    assert result.exit_code != 0
    assert "export it first, e.g. braintumor-tf export --run RUN_DIR --out" in result.output


def test_a_release_folder_without_its_savedmodel_names_what_loads_and_what_to_run(tmp_path):
    """savedmodels/segmenter/ on a fresh checkout: the .keras and .tflite files, no version."""
    from click.testing import CliRunner

    from braintumor_tf.cli import main

    release = tmp_path / "segmenter"
    release.mkdir()
    for name in ("segmenter.keras", "segmenter_dynamic.tflite", "MODEL_CARD.md"):
        (release / name).write_bytes(b"x")
    image = tmp_path / "scan.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = CliRunner().invoke(main, ["predict", "--model", str(release), str(image)])
    assert result.exit_code != 0
    assert f"{release} holds no exported model version" in result.output
    assert f"--model {release / 'segmenter.keras'} loads as it is" in result.output
    assert (f"braintumor-tf export --model {release / 'segmenter.keras'} --out {release}"
            in result.output)


def test_a_release_folder_without_a_keras_model_says_the_run_must_be_trained_first(tmp_path):
    """The ResNet50 release commits its .tflite only (the Keras model is 130 MB)."""
    from click.testing import CliRunner

    from braintumor_tf.cli import main

    release = tmp_path / "segmenter"
    release.mkdir()
    for name in ("segmenter_dynamic.tflite", "MODEL_CARD.md"):
        (release / name).write_bytes(b"x")
    image = tmp_path / "scan.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = CliRunner().invoke(main, ["predict", "--model", str(release), str(image)])
    assert result.exit_code != 0
    output = " ".join(result.output.split())
    assert f"--model {release / 'segmenter_dynamic.tflite'} loads as it is" in output
    assert f"braintumor-tf export --run RUN_DIR --out {release}" in output
    assert f"made by the command in {release / 'MODEL_CARD.md'} (Training)" in output


def test_native_noise_is_dropped_and_real_errors_pass_through():
    """Lines written straight to file descriptor 2 (as TensorFlow's C++ does) are filtered."""
    script = (
        "import os\n"
        "from braintumor_tf.log import native_stderr_without\n"
        "with native_stderr_without('mentions attribute Truncate'):\n"
        "    os.write(2, b'E0000 graph.cc NodeDef mentions attribute Truncate which is not\\n')\n"
        "    os.write(2, b'E0000 a real converter error\\n')\n"
        "os.write(2, b'after\\n')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert result.stderr == "E0000 a real converter error\nafter\n"


def test_the_export_hint_repeats_the_released_files_averaging(tmp_path):
    """A SavedModel made from the committed .keras must average and threshold as the released
    .tflite does."""
    from click.testing import CliRunner

    from braintumor_tf.cli import main

    release = tmp_path / "segmenter"
    release.mkdir()
    (release / "segmenter.keras").write_bytes(b"x")
    (release / "segmenter_dynamic.tflite").write_bytes(b"x")
    (release / "segmenter_dynamic.json").write_text(
        '{"file": "segmenter_dynamic.tflite", "test_time_augmentation": "mirror", "threshold": 0.7}')
    (release / "tflite_parity.json").write_text('{"task": "segmentation", "threshold": 0.5}')
    image = tmp_path / "scan.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = CliRunner().invoke(main, ["predict", "--model", str(release), str(image)])
    assert result.exit_code != 0
    assert (f"braintumor-tf export --model {release / 'segmenter.keras'} --out {release} --tta mirror"
            " --threshold 0.7" in " ".join(result.output.split()))


def test_a_user_threshold_is_for_segmenters_and_lies_inside_zero_one():
    from braintumor_tf.export.runtimes import checked_threshold

    assert checked_threshold("0.7", "segmentation") == 0.7
    for threshold, task, message in [(0.7, "classification", "segmenters only"),
                                     (0.0, "segmentation", "strictly between"),
                                     (1.0, "segmentation", "strictly between")]:
        with pytest.raises(ValueError, match=message):
            checked_threshold(threshold, task)
