"""Choose the tf.distribute strategy the training step runs under, and what a model needs to train
under it."""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in a TF_CONFIG cluster: every worker runs the same command, and the
    chief (``chief`` task 0, or ``worker`` 0 when the cluster has no chief) owns the run
    directory."""

    task_type: str
    index: int
    workers: int
    has_chief_job: bool = False

    @property
    def is_chief(self) -> bool:
        if self.has_chief_job:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.index == 0


def worker_role(distribute: str = "auto", tf_config: str | None = None) -> WorkerRole | None:
    """The role of this process when it trains as one of several workers, else None.

    ``auto``: when TF_CONFIG names more than one worker; ``multi_worker``: TF_CONFIG must name
    the cluster. Reads only the environment: no TensorFlow op runs before the strategy exists.
    """
    if distribute not in ("auto", "multi_worker"):
        return None
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG", "")
    spec = json.loads(tf_config) if tf_config.strip() else {}
    cluster, task = spec.get("cluster") or {}, spec.get("task") or {}
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise ValueError(
            f"TF_CONFIG names {', '.join(unsupported)} tasks; only chief and worker tasks are "
            "supported (MultiWorkerMirroredStrategy; ParameterServerStrategy does not train with "
            "Keras 3's fit): docs/DISTRIBUTED.md")
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    if workers < 2:
        if distribute == "multi_worker":
            raise ValueError("train.distribute: multi_worker needs TF_CONFIG naming two or more "
                             f"workers (got {workers}); docs/DISTRIBUTED.md shows one")
        return None
    task_type, index = task.get("type", "worker"), int(task.get("index", 0))
    if task_type not in cluster or not 0 <= index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task {task_type} {index} is not in its cluster "
                         f"{ {name: len(hosts) for name, hosts in cluster.items()} }")
    return WorkerRole(task_type, index, workers, has_chief_job="chief" in cluster)


# One per process: the collective runtime it starts cannot be configured twice.
_multi_worker_strategy: tf.distribute.MultiWorkerMirroredStrategy | None = None


def make_strategy(name: str = "auto", tf_config: str | None = None) -> tf.distribute.Strategy:
    """``auto``: multi-worker when TF_CONFIG names several workers, mirrored over 2+ GPUs, else
    default.

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime.
    ``mirrored`` on a machine without GPUs mirrors over the logical CPU devices, which is how
    the tests exercise the distributed code path on a CPU.
    """
    global _multi_worker_strategy
    if name not in STRATEGIES:
        raise ValueError(f"distribute must be one of {STRATEGIES}, got {name!r}")
    if worker_role(name, tf_config) is not None:
        if _multi_worker_strategy is None:
            from braintumor_tf.training import keras_multiworker

            keras_multiworker.check_keras()  # before the cluster waits for a worker that would fail
            _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return _multi_worker_strategy
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if not devices:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """How many processes train together (1 unless MultiWorkerMirroredStrategy)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    jobs = strategy.cluster_resolver.cluster_spec().as_dict()
    return max(1, len(jobs.get("chief", [])) + len(jobs.get("worker", [])))


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return worker_count(strategy) > 1


def synchronize_batch_norm(model) -> int:
    """Batch statistics over the global batch instead of each replica's share, so the moving
    statistics (updated from them) stay identical on every worker; returns how many layers.

    Read when the training step is traced: call it after building, before the first fit.
    """
    import keras

    def walk(layer):
        yield layer
        for inner in getattr(layer, "layers", ()):  # nested models (a UNet's encoder)
            yield from walk(inner)

    layers = {id(layer): layer for layer in walk(model)
              if isinstance(layer, keras.layers.BatchNormalization)}
    for layer in layers.values():
        layer.synchronized = True
    return len(layers)


def prepare_model(model, strategy: tf.distribute.Strategy):
    """What ``model`` needs to train with ``fit`` under ``strategy``: under several workers,
    synchronized BatchNormalization and the Keras overrides of training.keras_multiworker."""
    if is_multi_worker(strategy):
        import keras

        from braintumor_tf.log import log
        from braintumor_tf.training import keras_multiworker

        synchronized = synchronize_batch_norm(model)
        keras_multiworker.enable(model)
        log(f"{worker_count(strategy)} workers: {synchronized} BatchNormalization layers "
            f"synchronized; Keras {keras.__version__} trainer steps replaced (checked with "
            f"{', '.join(keras_multiworker.CHECKED_KERAS_VERSIONS)})")
    return model


def barrier(strategy: tf.distribute.Strategy) -> int:
    """Wait until every worker gets here (a collective sum of ones); returns the replica count."""
    @tf.function  # eager collectives work too, with a warning about their overhead
    def count():
        ones = strategy.run(lambda: tf.constant(1, tf.int32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

    return int(count())
