"""Training on several workers (MultiWorkerMirroredStrategy through TF_CONFIG): worker processes on
127.0.0.1, tiny synthetic data; docs/DISTRIBUTED.md."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from support import ENV, TINY_DETERMINISTIC

from braintumor_tf.commands import run_dir as run_dir_module
from braintumor_tf.config import CONFIG_DIR, load_config, save_config
from braintumor_tf.faults import ENVIRONMENT_VARIABLE
from braintumor_tf.training import keras_multiworker
from braintumor_tf.training.distribute import (
    make_strategy,
    prepare_model,
    synchronize_batch_norm,
    worker_role,
)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _tf_configs(count: int = 2) -> list[str]:
    workers = [f"127.0.0.1:{port}" for port in _free_ports(count)]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            for index in range(count)]


def _start_workers(command: list[str], extra_env: dict[int, dict] | None = None,
                   cwd: Path | None = None) -> list[subprocess.Popen]:
    processes = []
    for index, tf_config in enumerate(_tf_configs()):
        env = {**ENV, "TF_CONFIG": tf_config, **(extra_env or {}).get(index, {})}
        processes.append(subprocess.Popen(["nice", "-n", "10", sys.executable, *command], env=env,
                                          cwd=cwd, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))
    return processes


def _finish(processes: list[subprocess.Popen], timeout: float = 900) -> list[tuple[int, str]]:
    results = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        results.append((process.returncode, output))
    return results


# ----------------------------------------------------------------------------- which role


def test_tf_config_decides_who_trains_and_who_owns_the_run():
    two = _tf_configs(2)
    assert worker_role("auto", "") is None
    assert worker_role("auto", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"index": 0}}') is None
    chief, other = worker_role("auto", two[0]), worker_role("auto", two[1])
    assert chief.is_chief and chief.workers == 2 and chief.index == 0
    assert not other.is_chief and other.index == 1
    # A cluster with a chief job: the chief owns the run, worker 0 does not.
    with_chief = {"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]}}
    assert worker_role("auto", json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})).is_chief
    role = worker_role("auto", json.dumps({**with_chief, "task": {"type": "worker", "index": 0}}))
    assert not role.is_chief and role.workers == 3
    # Asked for on one machine, TF_CONFIG is not read.
    assert worker_role("mirrored", two[1]) is None and worker_role("default", two[1]) is None
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        worker_role("multi_worker", "")
    with pytest.raises(ValueError, match="ps"):
        worker_role("auto", json.dumps({"cluster": {"worker": ["h:1", "h:2"], "ps": ["h:3"]},
                                        "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="not in its cluster"):
        worker_role("auto", json.dumps({"cluster": {"worker": ["h:1", "h:2"]},
                                        "task": {"type": "worker", "index": 2}}))


def test_the_keras_check_fails_loudly_when_the_replaced_methods_change(monkeypatch):
    keras_multiworker.check_keras()  # the installed Keras is the one the overrides were written for
    from keras.src.backend.tensorflow import trainer

    def changed(self, iterator=None, data_batch=None):  # what a Keras fix would look like
        return None

    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build", changed)
    with pytest.raises(RuntimeError) as refused:
        keras_multiworker.check_keras()
    message = str(refused.value)
    assert f"Keras {keras.__version__}" in message
    assert "TensorFlowTrainer._maybe_symbolic_build" in message and "reduce_per_replica" not in message
    # The start-up path: make_strategy refuses before it would create the cluster.
    cluster = _tf_configs(2)[0]
    with pytest.raises(RuntimeError, match=keras.__version__):
        make_strategy("auto", tf_config=cluster)
    monkeypatch.undo()
    monkeypatch.setattr(trainer, "reduce_per_replica", lambda values, strategy, reduction: values)
    with pytest.raises(RuntimeError, match="reduce_per_replica"):
        keras_multiworker.check_keras()


def test_synchronized_batch_norm_is_chosen_by_the_strategy_down_to_a_nested_encoder(float32_policy):
    from braintumor_tf.models.unet import build_unet

    def batch_norms(model):
        return [layer for layer in model._flatten_layers(include_self=False)
                if isinstance(layer, keras.layers.BatchNormalization)]

    model = build_unet(64, 1, "mobilenetv2", "none", (8, 8, 4, 4, 4))
    nested = [layer for layer in batch_norms(model) if layer not in model.layers]
    assert nested  # the encoder's BatchNormalization layers live inside a nested model
    prepare_model(model, make_strategy("default"))  # one process: left as built
    assert not any(layer.synchronized for layer in batch_norms(model))
    assert synchronize_batch_norm(model) == len(batch_norms(model))
    assert all(layer.synchronized for layer in batch_norms(model))


# ----------------------------------------------------------------------------- the run directory


def _tiny_config(**overrides):
    return load_config(CONFIG_DIR / "classification.yaml",
                       [f"{key}={value}" for key, value in overrides.items()])


def test_a_non_chief_worker_writes_to_a_temporary_directory_and_only_reads_the_chief_run(
        tmp_path, monkeypatch):
    chief_dir = tmp_path / "run"
    config = _tiny_config(**{"train.epochs": 2})
    chief_config, worker_config = _tf_configs(2)

    monkeypatch.setenv("TF_CONFIG", chief_config)
    assert run_dir_module.start_run(config, chief_dir) == (chief_dir, None)
    assert (chief_dir / "config.yaml").is_file()

    monkeypatch.setenv("TF_CONFIG", worker_config)
    worker_dir, finished = run_dir_module.start_run(config, chief_dir)
    assert finished is None and worker_dir != chief_dir and not worker_dir.is_relative_to(chief_dir)
    assert (worker_dir / "config.yaml").is_file()
    assert json.loads((worker_dir / run_dir_module.WORKER_FILE).read_text())["chief_run_dir"] == str(
        chief_dir.absolute())
    assert sorted(path.name for path in chief_dir.iterdir()) == ["config.yaml"]  # untouched
    # A stage of the run lands inside the worker's directory and follows the chief's stage.
    stage_dir, _ = run_dir_module.start_run(config, worker_dir / "stages" / "a")
    assert stage_dir == worker_dir / "stages" / "a"
    assert run_dir_module._chief_path(stage_dir, run_dir_module._worker_tree(stage_dir)) == (
        chief_dir.absolute() / "stages" / "a")

    # Refused like the chief refuses: the chief's run trained with another config.
    (chief_dir / "history.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ValueError, match="different config"):
        run_dir_module.start_run(_tiny_config(**{"train.epochs": 3}), chief_dir)
    # A finished chief run: its summary, nothing to train.
    (chief_dir / "summary.json").write_text(json.dumps({"epochs": 2}))
    assert run_dir_module.start_run(config, chief_dir)[1] == {"epochs": 2}
    # Left behind by a killed worker: cleared at the next start.
    (chief_dir / "summary.json").unlink()
    (worker_dir / "stale").write_text("")
    again, _ = run_dir_module.start_run(config, chief_dir)
    assert again == worker_dir and not (worker_dir / "stale").exists()
    import shutil

    shutil.rmtree(worker_dir)


def test_one_machine_ignores_tf_config_for_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_configs(2)[1])
    config = _tiny_config(**{"train.distribute": "default"})
    assert run_dir_module.start_run(config, tmp_path / "run") == (tmp_path / "run", None)


def test_config_yaml_is_replaced_atomically_so_a_worker_never_reads_half_of_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir_module.start_run(_tiny_config(), run_dir)
    assert not (run_dir / "config.yaml.partial").exists()
    saved = (run_dir / "config.yaml").read_text()
    save_config(_tiny_config(), tmp_path / "expected.yaml")
    assert saved == (tmp_path / "expected.yaml").read_text()


# ----------------------------------------------------------------------------- two processes

LOOPBACK_WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from braintumor_tf.training.distribute import barrier, make_strategy, prepare_model, worker_role
    strategy = make_strategy("auto")  # from TF_CONFIG, before any other TensorFlow op
    import keras, tensorflow as tf
    from braintumor_tf.models.classifier import build_residual_cnn
    out, index = sys.argv[1], worker_role().index
    keras.utils.set_random_seed(0)
    labels = np.arange(40) % 2
    x = np.random.default_rng(0).normal(60, 10, (40, 16, 16, 1)).astype("float32")
    x[labels == 1, :, :8] += 120
    y = keras.utils.to_categorical(labels, 2)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # global batch; last one 8
    with strategy.scope():
        model = prepare_model(build_residual_cnn(16, 1, 2, 4, 1, (8,), (3,), (True,), dropout=0.0),
                              strategy)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy",
                      metrics=["accuracy"])
    np.savez(f"{out}/initial{index}.npz", *model.get_weights())
    model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    np.savez(f"{out}/step{index}.npz", *model.get_weights())
    history = model.fit(dataset, epochs=2, validation_data=dataset, verbose=0).history
    np.savez(f"{out}/final{index}.npz", *model.get_weights())
    predictions = model.predict(dataset, verbose=0)
    json.dump({"history": history, "replicas": strategy.num_replicas_in_sync,
               "barrier": barrier(strategy), "predictions": predictions.shape[0],
               "evaluate": model.evaluate(dataset, verbose=0)}, open(f"{out}/worker{index}.json", "w"))
""")


def _arrays(path: Path) -> list[np.ndarray]:
    stored = np.load(path)
    return [stored[f"arr_{index}"] for index in range(len(stored.files))]


def test_two_worker_processes_train_as_one_on_the_global_batch(tmp_path, float32_policy):
    from braintumor_tf.models.classifier import build_residual_cnn

    results = _finish(_start_workers(["-c", LOOPBACK_WORKER, str(tmp_path)]), timeout=600)
    for code, output in results:
        assert code == 0, output[-4000:]
    reports = [json.loads((tmp_path / f"worker{index}.json").read_text()) for index in range(2)]
    assert [report["replicas"] for report in reports] == [2, 2]
    assert [report["barrier"] for report in reports] == [2, 2]
    assert reports[0]["history"] == reports[1]["history"]  # logged numbers: means over replicas
    assert reports[0]["history"]["loss"][-1] < reports[0]["history"]["loss"][0]
    assert [report["predictions"] for report in reports] == [40, 40]  # gathered from both workers
    # Identical weights, BatchNormalization's moving statistics included (synchronized).
    for name in ("initial", "step", "final"):
        for mine, theirs in zip(_arrays(tmp_path / f"{name}0.npz"), _arrays(tmp_path / f"{name}1.npz"),
                                strict=True):
            np.testing.assert_array_equal(mine, theirs, err_msg=name)

    # One distributed step equals one single-process step on the whole global batch.
    keras.utils.set_random_seed(0)
    labels = np.arange(40) % 2
    x = np.random.default_rng(0).normal(60, 10, (40, 16, 16, 1)).astype("float32")
    x[labels == 1, :, :8] += 120
    y = keras.utils.to_categorical(labels, 2)
    single = build_residual_cnn(16, 1, 2, 4, 1, (8,), (3,), (True,), dropout=0.0)
    single.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    single.set_weights(_arrays(tmp_path / "initial0.npz"))
    single.fit(x[:16], y[:16], batch_size=16, epochs=1, shuffle=False, verbose=0)
    moved = max(float(np.abs(after - before).max()) for after, before in zip(
        _arrays(tmp_path / "step0.npz"), _arrays(tmp_path / "initial0.npz"), strict=True))
    assert moved > 1e-3
    for distributed, expected in zip(_arrays(tmp_path / "step0.npz"), single.get_weights(), strict=True):
        np.testing.assert_allclose(distributed, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the train command

TINY_CLASSIFIER = TINY_DETERMINISTIC


def _train_on_two_workers(run_dir: Path, *overrides: str, kill: dict[int, str] | None = None):
    extra = {index: {ENVIRONMENT_VARIABLE: point} for index, point in (kill or {}).items()}
    return _start_workers(["-m", "braintumor_tf.train", "--run", str(run_dir), *overrides],
                          extra_env=extra, cwd=run_dir.parent)


def _printed_summary(output: str) -> dict:
    """The summary JSON the command prints last (a worker's: its temporary directory is gone)."""
    start = output.rindex("\n{\n") + 1
    return json.loads(output[start:output.index("\n}\n", start) + 2])


def _history(run_dir: Path) -> list[tuple]:
    with open(run_dir / "history.csv", newline="") as handle:
        return [(int(row["epoch"]), row["loss"], row["val_loss"], row["val_accuracy"])
                for row in csv.DictReader(handle)]


def _check_two_worker_run(run_dir: Path, results) -> dict:
    for code, output in results:
        assert code == 0, output[-5000:]
    chief = json.loads((run_dir / "summary.json").read_text())
    worker = _printed_summary(results[1][1])
    assert chief["workers"] == worker["workers"] == 2 and chief["replicas"] == 2
    assert worker["weights_sha256"] == chief["weights_sha256"]  # identical final weights
    assert worker["chief_run_dir"] == str(run_dir.absolute())
    assert not Path(worker["worker_dir"]).exists()  # the worker's temporary directory is removed
    return chief


@pytest.mark.slow
def test_the_train_command_on_two_workers_and_a_worker_killed_then_all_restarted(tmp_path):
    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.export.validation_data import load_pixels, manifest_rows

    reference_dir = tmp_path / "uninterrupted"
    chief = _check_two_worker_run(reference_dir, _finish(_train_on_two_workers(
        reference_dir, *TINY_CLASSIFIER)))
    reference_history = _history(reference_dir)
    assert [row[0] for row in reference_history] == [0, 1, 2]
    # train.batch_size is the global batch: steps per epoch as on one machine.
    assert chief["steps_per_epoch"] == -(-chief["train_images"] // 16) == 5
    # The chief's model loads and evaluates; the learning-rate schedule counted global steps.
    best_epoch = int(np.argmax([float(row[3]) for row in reference_history]))
    best = load_model(reference_dir / "best.keras", compile=True)
    assert int(best.optimizer.iterations.numpy()) == 5 * (best_epoch + 1)
    model = load_model(reference_dir / "model.keras", compile=True)
    pixels, labels = load_pixels(manifest_rows(reference_dir, "test"), 48, 1, 100)
    loss, accuracy = model.evaluate(pixels, keras.utils.to_categorical(labels, 4), verbose=0)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0 and len(labels) == chief["test_images"]
    assert chief["test"]["n"] == chief["test_images"]

    # 5 steps per epoch: batch 8 is in the middle of epoch 2, after epoch 1's backup.
    for killed_index, point in ((1, "train_batch:8"), (0, "train_batch:7")):
        run_dir = tmp_path / f"killed-worker{killed_index}"
        processes = _train_on_two_workers(run_dir, *TINY_CLASSIFIER, kill={killed_index: point})
        killed, survivor = processes[killed_index], processes[1 - killed_index]
        assert killed.wait(timeout=900) == -signal.SIGKILL
        try:  # the cluster's heartbeat fails the survivor; else it is stopped as a pod would be
            survivor.wait(timeout=120)
        except subprocess.TimeoutExpired:
            survivor.kill()
        _finish(processes)
        assert survivor.returncode != 0
        assert (run_dir / "backup").is_dir() and not (run_dir / "summary.json").exists()
        assert [row[0] for row in _history(run_dir)] == [0]

        resumed = _check_two_worker_run(run_dir, _finish(_train_on_two_workers(run_dir, *TINY_CLASSIFIER)))
        assert resumed["weights_sha256"] == chief["weights_sha256"], f"worker {killed_index} killed"
        assert _history(run_dir) == reference_history


@pytest.mark.slow
def test_one_step_on_two_workers_equals_one_step_of_one_process_on_the_global_batch(tmp_path):
    from braintumor_tf.custom_objects import load_model

    one_step = [*TINY_CLASSIFIER, "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1",
                "--set", "model.dropout=0.0", "--set", "optimizer.name=sgd",
                "--set", "optimizer.learning_rate=0.05", "--set", "schedule.name=constant"]
    _check_two_worker_run(tmp_path / "two", _finish(_train_on_two_workers(tmp_path / "two", *one_step)))
    single = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "braintumor_tf.train", "--run",
                             str(tmp_path / "one"), *one_step], capture_output=True, text=True,
                            env={key: value for key, value in ENV.items() if key != "TF_CONFIG"},
                            timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    two, one = (load_model(tmp_path / name / "best.keras", compile=True) for name in ("two", "one"))
    assert int(two.optimizer.iterations.numpy()) == int(one.optimizer.iterations.numpy()) == 1
    for distributed, expected in zip(two.get_weights(), one.get_weights(), strict=True):
        np.testing.assert_allclose(distributed, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.slow
def test_a_segmenter_trains_on_two_workers(tmp_path):
    run_dir = tmp_path / "seg"
    overrides = ["--config", str(CONFIG_DIR / "segmentation.yaml"),
                 "--set", "data.phantom_images_per_class=8", "--set", "data.phantom_image_size=64",
                 "--set", "data.image_size=64", "--set", "segmentation.encoder=mobilenetv2",
                 "--set", "segmentation.decoder_filters=[16, 8, 8, 4, 4]",
                 "--set", "train.batch_size=8", "--set", "train.precision=float32",
                 "--set", "train.verbose=0", "--set", "train.epochs=1"]
    chief = _check_two_worker_run(run_dir, _finish(_train_on_two_workers(run_dir, *overrides)))
    assert chief["task"] == "segmentation" and (run_dir / "model.keras").is_file()
    assert 0.0 <= chief["test"]["vs_masks"]["mean_dice"] <= 1.0
