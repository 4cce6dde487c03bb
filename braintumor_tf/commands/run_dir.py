"""The run-directory contract shared by every training pipeline: same config to resume,
summary.json marks a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from braintumor_tf.config import Config, load_config, save_config
from braintumor_tf.log import log
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
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    try:
        saved_tree, wanted_tree = load_config(saved).to_dict(), config.to_dict()
        if _same_stage_checkpoint(saved_tree["train"].get("initial_weights"),
                                  wanted_tree["train"].get("initial_weights")):
            wanted_tree["train"]["initial_weights"] = saved_tree["train"]["initial_weights"]
        differences = _differences(saved_tree, wanted_tree)
    except ValueError:
        differences = ["(its config.yaml no longer loads)"]
    if not differences:
        return
    if has_trained(run_dir):
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise ValueError(
            f"{run_dir} holds a run with a different config ({shown}); resume it with the same "
            "settings (--set KEY=VALUE) or choose a new --out directory")
    log(f"{run_dir} holds a start that never trained; starting over with the new config")
    for name in SPLIT_FILES:
        (run_dir / name).unlink(missing_ok=True)


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
    """(run_dir, summary of an already finished run or None); writes config.yaml for a new one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resumable(config, run_dir)
    if (run_dir / "summary.json").exists():
        log(f"{run_dir} already holds a finished run (summary.json); choose a new --out to train "
            "again")
        return run_dir, json.loads((run_dir / "summary.json").read_text())
    save_config(config, run_dir / "config.yaml")
    return run_dir, None


def setup_training(config: Config):
    """Seed, dtype policy and distribution strategy, in that order, for either task."""
    import keras

    from braintumor_tf.training.distribute import make_strategy
    from braintumor_tf.training.precision import apply_precision

    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    policy = apply_precision(config.train.precision)
    strategy = make_strategy(config.train.distribute)
    log(f"precision policy {policy}; strategy {type(strategy).__name__} with "
        f"{strategy.num_replicas_in_sync} replica(s)")
    return policy, strategy


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
