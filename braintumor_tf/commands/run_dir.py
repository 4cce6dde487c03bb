"""The run-directory contract shared by every training pipeline: same config to resume,
summary.json marks a finished run; with several workers, the chief owns it."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from braintumor_tf.config import Config, load_config, save_config
from braintumor_tf.log import log, logger
from braintumor_tf.plots import plot_learning_rate
from braintumor_tf.training.schedules import schedule_values

# Written when a run splits its data; stale once the config changes.
SPLIT_FILES = ("split_manifest.csv", "split.json", "subjects.json", "bad_files.csv", "excluded.csv")


def has_trained(run_dir: Path) -> bool:
    """True once a run has finished an epoch (a backup, a best checkpoint or a history row)."""
    history = run_dir / "history.csv"
    rows = history.read_text().strip().splitlines() if history.is_file() else []
    return (run_dir / "backup").exists() or (run_dir / "best.keras").exists() or len(rows) > 1


def check_resumable(config: Config, run_dir: Path) -> None:
    """Same config: resume. Different config: an error if the run trained, otherwise (a start that
    failed, e.g. on an empty data folder) start over, dropping its split."""
    if not _config_differences(config, run_dir):
        return
    log(f"{run_dir} holds a start that never trained; starting over with the new config")
    for name in SPLIT_FILES:
        (run_dir / name).unlink(missing_ok=True)


def _config_differences(config: Config, run_dir: Path) -> list[str]:
    """How ``config`` differs from the run's config.yaml; raises when the run already trained."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return []
    try:
        saved_tree, wanted_tree = load_config(saved).to_dict(), config.to_dict()
        if _same_stage_checkpoint(saved_tree["train"].get("initial_weights"),
                                  wanted_tree["train"].get("initial_weights")):
            wanted_tree["train"]["initial_weights"] = saved_tree["train"]["initial_weights"]
        differences = _differences(saved_tree, wanted_tree)
    except ValueError:
        differences = ["(its config.yaml no longer loads)"]
    if differences and has_trained(run_dir):
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise ValueError(
            f"{run_dir} holds a run with a different config ({shown}); resume it with the same "
            "settings (--set KEY=VALUE) or choose a new --out directory")
    return differences


def _same_stage_checkpoint(saved, wanted) -> bool:
    """A staged run's stage k starts from ``<run>/stages/<k-1>/best.keras``, stored as a full path:
    the same stage of the same layout after the run directory was moved or copied is no change."""
    if not saved or not wanted or saved == wanted:
        return False
    saved_parts, wanted_parts = Path(saved).parts, Path(wanted).parts
    return (len(saved_parts) >= 3 and saved_parts[-3:] == wanted_parts[-3:]
            and saved_parts[-3] == "stages" and saved_parts[-1] == "best.keras")


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``key: saved -> wanted`` for every leaf that differs, dotted as --set takes them."""
    found = []
    for key in sorted(set(saved) | set(wanted)):
        old, new = saved.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} in the run, {new!r} now")
    return found


def start_run(config: Config, run_dir: str | Path) -> tuple[Path, dict | None]:
    """(run_dir, summary of an already finished run or None); writes config.yaml for a new one.

    A worker other than the chief of a multi-worker run gets a temporary directory instead
    (``_start_worker_run``): the chief owns ``run_dir``.
    """
    from braintumor_tf.training.distribute import worker_role

    role = worker_role(config.train.distribute)
    if role is not None and not role.is_chief:
        return _start_worker_run(config, Path(run_dir), role)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resumable(config, run_dir)
    summary = read_summary(run_dir / "summary.json")
    if summary is not None:
        log(f"{run_dir} already holds a finished run (summary.json); choose a new --out to train "
            "again")
        if (run_dir / "backup").exists():  # killed between summary.json and the backup's removal
            shutil.rmtree(run_dir / "backup", ignore_errors=True)
            log(f"removed {run_dir / 'backup'}, left behind when the run was stopped just after "
                "it finished")
        return run_dir, summary
    # Atomic: the other workers read it at the same time (_start_worker_run).
    save_config(config, run_dir / "config.yaml.partial")
    os.replace(run_dir / "config.yaml.partial", run_dir / "config.yaml")
    return run_dir, None


def read_summary(path: Path, move_aside: bool = True) -> dict | None:
    """A run's ``summary.json`` (the mark of a finished run), None when there is none. A damaged
    one (empty, cut short, not a JSON object) is not a finished run: it is moved aside to
    ``summary.json.damaged`` with a warning (``move_aside``), and finishing the run again (its
    checkpoints are still there) writes it anew instead of every start failing on it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(summary, dict) else "not a JSON object"
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError too
        summary, problem = None, ("empty" if _is_empty(path) else
                                  f"not readable JSON: {str(error).splitlines()[0][:120]}")
    if problem is None:
        return summary
    if move_aside:
        damaged = path.with_name(path.name + ".damaged")
        os.replace(path, damaged)
        logger.warning(f"{path} is damaged ({problem}); moved to {damaged.name}: the run is "
                       "finished again from its checkpoints, which writes a new one")
    else:
        logger.warning(f"{path} is damaged ({problem}); ignored")
    return None


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0 or not path.read_bytes().strip(b"\0 \t\r\n")
    except OSError:
        return False


def keras_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ``.keras`` file (zeroed, cut short, overwritten), or None;
    checked as a zip archive (names and CRCs), without TensorFlow."""
    try:
        with zipfile.ZipFile(path) as archive:
            missing = {"config.json", "model.weights.h5"} - set(archive.namelist())
            if missing:
                return f"not a Keras model archive: no {', '.join(sorted(missing))}"
            corrupt = archive.testzip()
            if corrupt is not None:
                return f"{corrupt} inside it is corrupt"
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError) as error:
        if _is_empty(path):
            return "empty or all zeros"
        return f"not a readable .keras file ({str(error).splitlines()[0][:120] or type(error).__name__})"
    return None


def recover_best_checkpoint(run_dir: Path) -> None:
    """A damaged ``best.keras`` in a run to resume is moved aside to ``best.keras.damaged`` with a
    warning, instead of every rerun failing on it: with ``backup/`` the run resumes from the backup
    (the best checkpoint is chosen again among the epochs still to train; with none left, the
    backup's last-epoch weights are the model), without one it trains again from epoch 1."""
    best = Path(run_dir) / "best.keras"
    if not best.exists():
        return
    problem = keras_file_problem(best)
    if problem is None:
        return
    damaged = best.with_name(best.name + ".damaged")
    os.replace(best, damaged)
    if (Path(run_dir) / "backup").is_dir():
        plan = (f"resuming from {Path(run_dir) / 'backup'}: the best checkpoint is chosen again "
                "among the epochs still to train, and with none left the last epoch's weights "
                "are the model")
    else:
        plan = "no backup to resume from: training again from epoch 1"
    logger.warning(f"{best} is damaged ({problem}); moved to {damaged.name}; {plan}")


def setup_training(config: Config):
    """Distribution strategy, seed and dtype policy, in that order, for either task: a
    MultiWorkerMirroredStrategy must exist before any other TensorFlow op runs."""
    import keras

    from braintumor_tf.training.distribute import make_strategy
    from braintumor_tf.training.precision import apply_precision

    strategy = make_strategy(config.train.distribute)
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    policy = apply_precision(config.train.precision)
    log(f"precision policy {policy}; strategy {type(strategy).__name__} with "
        f"{strategy.num_replicas_in_sync} replica(s)")
    return policy, strategy


# In a worker's temporary directory: which chief run directory it follows.
WORKER_FILE = ".worker.json"
# What a worker copies from the chief's run directory before it trains: the split, and what
# a resumed fit reads (the backup it restores, the history and best checkpoint the callbacks
# continue), so every worker resumes at the same epoch with the same weights.
RESUME_FILES = ("history.csv", "best.keras")


def _start_worker_run(config: Config, run_dir: Path, role) -> tuple[Path, dict | None]:
    """A non-chief worker's start: the chief's run directory is only read (finished? same
    config?); this worker writes to a temporary directory, removed when it finishes (or at the
    next start, after a kill)."""
    followed = _worker_tree(run_dir)
    if followed is not None:  # a stage of a run this worker already follows
        worker_root, chief_root = followed
        chief_dir, worker_dir = chief_root / run_dir.relative_to(worker_root), run_dir
    else:
        chief_dir = run_dir.absolute()
        digest = hashlib.sha256(os.fsencode(chief_dir)).hexdigest()[:12]  # any name
        worker_dir = Path(tempfile.gettempdir()) / f"braintumor_tf-{role.task_type}{role.index}-{digest}"
    # The chief owns its directory: a damaged summary.json there is the chief's to move aside.
    chief_summary = read_summary(chief_dir / "summary.json", move_aside=False)
    if chief_summary is not None:
        log(f"{chief_dir} already holds a finished run (summary.json)")
        if followed is None:
            return chief_dir, chief_summary
        worker_dir.mkdir(parents=True, exist_ok=True)
        if (chief_dir / "best.keras").is_file():  # a finished stage: the next one starts from it
            shutil.copy2(chief_dir / "best.keras", worker_dir / "best.keras")
        return worker_dir, chief_summary
    _config_differences(config, chief_dir)  # refuses as the chief does, before the cluster forms
    if followed is None:
        shutil.rmtree(worker_dir, ignore_errors=True)
        worker_dir.mkdir(parents=True)
        (worker_dir / WORKER_FILE).write_text(json.dumps(
            {"chief_run_dir": str(chief_dir), "task": f"{role.task_type} {role.index}"}))
        atexit.register(shutil.rmtree, worker_dir, True)
    worker_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, worker_dir / "config.yaml")
    log(f"{role.task_type} {role.index} of {role.workers} workers: the chief writes {chief_dir}; "
        f"this worker's files go to {worker_dir} (removed at the end)")
    return worker_dir, None


def _worker_tree(path: Path | None) -> tuple[Path, Path] | None:
    """(worker root, chief run directory) when ``path`` is inside a worker's temporary directory."""
    if path is None:
        return None
    for folder in (Path(path), *Path(path).parents):
        if (folder / WORKER_FILE).is_file():
            return folder, Path(json.loads((folder / WORKER_FILE).read_text())["chief_run_dir"])
    return None


def _chief_path(path: Path, tree: tuple[Path, Path]) -> Path:
    worker_root, chief_root = tree
    return chief_root / Path(path).relative_to(worker_root)


def prepare_run_data(task, config: Config, run_dir: Path, data_dir: Path | None, strategy):
    """``task.prepare_data``, run by the chief only when there are several workers: the others
    wait for its split and take it (and its backup, to resume), so every worker shards the same
    data set. The images are read where the chief found them (a shared or object store)."""
    from braintumor_tf.training.distribute import barrier, is_multi_worker

    if not is_multi_worker(strategy):
        return task.prepare_data(config, run_dir, data_dir)
    tree = _worker_tree(run_dir)
    if tree is None:  # the chief
        data = task.prepare_data(config, run_dir, data_dir)
        barrier(strategy)  # split written
        barrier(strategy)  # the others have copied it: the run directory may change again
        return data
    barrier(strategy)
    chief_dir = _chief_path(run_dir, tree)
    for name in (*SPLIT_FILES, *RESUME_FILES):
        if (chief_dir / name).is_file():
            shutil.copy2(chief_dir / name, run_dir / name)
    if (chief_dir / "backup").is_dir():
        shutil.rmtree(run_dir / "backup", ignore_errors=True)
        shutil.copytree(chief_dir / "backup", run_dir / "backup")
    barrier(strategy)
    if data_dir is None:
        data_dir = chief_dir
    elif _worker_tree(data_dir) is not None:
        data_dir = _chief_path(data_dir, tree)
    return task.prepare_data(config, run_dir, data_dir)


def end_worker_fit(model, strategy, run_dir: Path, summary: dict) -> dict | None:
    """After fit under several workers: the trained weights' digest goes into the summary (every
    worker's must be equal). A non-chief worker stops here (the chief scores and exports) and
    gets its summary back, its temporary directory removed; None: carry on."""
    from braintumor_tf.training.distribute import barrier, is_multi_worker, worker_count

    if not is_multi_worker(strategy):
        return None
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    summary.update(workers=worker_count(strategy), replicas=strategy.num_replicas_in_sync,
                   weights_sha256=digest.hexdigest())
    tree = _worker_tree(run_dir)
    if tree is None:
        return None
    summary.update(chief_run_dir=str(_chief_path(run_dir, tree)), worker_dir=str(run_dir))
    if Path(run_dir) == tree[0]:
        shutil.rmtree(run_dir, ignore_errors=True)
    log(f"trained; waiting while the chief scores and exports into {summary['chief_run_dir']}")
    # Ends together with the chief: a chief that fails now fails this worker too (the cluster's
    # heartbeat aborts the wait), so a restart policy restarts both and the run resumes.
    barrier(strategy)
    return summary


def release_workers(strategy, run_dir: Path) -> None:
    """The chief's end of a multi-worker run, once summary.json is written: the other workers,
    waiting in ``end_worker_fit``, may exit."""
    from braintumor_tf.training.distribute import barrier, is_multi_worker

    if is_multi_worker(strategy) and _worker_tree(run_dir) is None:
        barrier(strategy)


def write_learning_rate_plot(schedule, total_steps: int, steps_per_epoch: int, run_dir: Path) -> None:
    values = (schedule_values(schedule, total_steps) if not isinstance(schedule, float)
              else np.full(total_steps, schedule))
    plot_learning_rate(values, run_dir / "learning_rate.png", steps_per_epoch=steps_per_epoch)


def load_initial_weights(model, path) -> None:
    """Copy weights from a ``.keras`` model or a ``.weights.h5`` file into a freshly built ``model``.

    Layer by layer, so the error names the first layer whose shapes differ instead of Keras'
    bare count mismatch. A resumed run is unaffected: the backup restored by ``fit`` comes later.
    """

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"train.initial_weights: no such file {str(path)!r}")
    if path.name.endswith(".weights.h5"):
        model.load_weights(path)
        log(f"initial weights loaded from {path}")
        return
    if path.suffix != ".keras":
        raise ValueError("train.initial_weights must be a .keras model or a .weights.h5 file, "
                         f"got {str(path)!r}")
    from braintumor_tf.custom_objects import load_model

    source = load_model(path, compile=False)
    target_weights, source_weights = model.weights, source.weights
    if len(target_weights) != len(source_weights):
        raise ValueError(f"train.initial_weights {str(path)!r} holds {len(source_weights)} weight "
                         f"tensors but the configured model has {len(target_weights)}: "
                         "not the same architecture")
    for target, weight in zip(target_weights, source_weights, strict=True):
        if tuple(target.shape) != tuple(weight.shape):
            raise ValueError(f"train.initial_weights {str(path)!r}: weight {weight.path} has shape "
                             f"{tuple(weight.shape)}, the configured model's {target.path} has "
                             f"{tuple(target.shape)}")
    for target, weight in zip(target_weights, source_weights, strict=True):
        target.assign(weight)
    log(f"initial weights loaded from {path}")
