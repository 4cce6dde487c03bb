"""Choose the tf.distribute strategy the training step runs under."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# Said before anything trains instead of a PerReplica conversion error deep inside fit.
MULTI_WORKER_UNSUPPORTED = (
    "multi-worker training (TF_CONFIG names a cluster, or train.distribute: multi_worker) does not "
    "work with this Keras: keras.Model.fit fails under tf.distribute.MultiWorkerMirroredStrategy "
    "in Keras 3 (keras-team/keras#20585; `python scripts/multiworker_check.py` shows it). Use "
    "several GPUs of one machine (train.distribute: mirrored), or unset TF_CONFIG; "
    "docs/DISTRIBUTED.md")


def make_strategy(name: str = "auto", tf_config: str | None = None) -> tf.distribute.Strategy:
    """``auto``: multi-worker when TF_CONFIG names a cluster (refused with the reason, see
    MULTI_WORKER_UNSUPPORTED), mirrored over 2+ GPUs, else default.

    ``mirrored`` on a machine without GPUs mirrors over the logical CPU devices, which is how
    the tests exercise the distributed code path on a CPU.
    """
    if name not in STRATEGIES:
        raise ValueError(f"distribute must be one of {STRATEGIES}, got {name!r}")
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG")
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        if tf_config and json.loads(tf_config).get("cluster"):
            name = "multi_worker"
        elif len(gpus) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        raise ValueError(MULTI_WORKER_UNSUPPORTED)
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if not devices:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)
