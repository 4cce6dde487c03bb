"""The two steps of Keras 3's TensorFlow trainer that break ``fit`` under
MultiWorkerMirroredStrategy, replaced on one model at a time (keras-team/keras#20585).

1. ``_maybe_symbolic_build`` reduces the first batch (a tuple of PerReplica values) with
   ``strategy.reduce("MEAN", ..., axis=None)`` to learn its shapes, which fails on a tuple. The
   replacement takes this worker's own replica values: only their shapes and dtypes are used.
2. After each step, ``reduce_per_replica`` reduces every logged number with
   ``strategy.reduce("MEAN", v, axis=0)`` when there are several workers, which fails on a
   scalar. The step functions here return their results with a leading axis of length 1, so that
   reduction is the mean over replicas, what MirroredStrategy logs on one machine.

Private methods: ``check_keras`` compares their source with the versions this was checked
against and refuses to train when they changed, naming the installed Keras.
"""

from __future__ import annotations

import hashlib
import inspect
import types

import keras
import tensorflow as tf

# Keras versions whose trainer this module was checked with (2 worker processes on 127.0.0.1).
CHECKED_KERAS_VERSIONS = ("3.15.1",)
# sha256 of inspect.getsource of each private function the overrides replace or rely on.
EXPECTED_SOURCES = {
    "TensorFlowTrainer._maybe_symbolic_build":
        "92a504f5eba9b29f81f1bf26180bdd5bf5186b06b7bda426534b90d2d02bc1c2",
    "reduce_per_replica":
        "2e7d54b1e6edc29a8c6a7e6b66cd4c8be3ba7842412c93753ac3afe169fa7fb8",
}


def _trainer_module():
    from keras.src.backend.tensorflow import trainer

    return trainer


def _sources() -> dict[str, str]:
    trainer = _trainer_module()
    functions = {"TensorFlowTrainer._maybe_symbolic_build":
                 trainer.TensorFlowTrainer._maybe_symbolic_build,
                 "reduce_per_replica": trainer.reduce_per_replica}
    return {name: hashlib.sha256(inspect.getsource(function).encode()).hexdigest()
            for name, function in functions.items()}


def check_keras(expected: dict[str, str] | None = None) -> None:
    """Raise when the Keras methods replaced here are not the ones they were written against."""
    expected = EXPECTED_SOURCES if expected is None else expected
    try:
        found = _sources()
    except (ImportError, AttributeError, OSError, TypeError) as error:
        found = {name: f"unreadable ({error})" for name in expected}
    changed = sorted(name for name, digest in expected.items() if found.get(name) != digest)
    if changed:
        raise RuntimeError(
            f"multi-worker training: Keras {keras.__version__} changed {', '.join(changed)} "
            f"(keras/src/backend/tensorflow/trainer.py), which braintumor_tf.training."
            f"keras_multiworker replaces to make fit work under MultiWorkerMirroredStrategy; it "
            f"was checked with Keras {', '.join(CHECKED_KERAS_VERSIONS)}. Check whether "
            "keras-team/keras#20585 is fixed in this version (python scripts/multiworker_check.py "
            "--plain), then update or remove the overrides")


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Build from this worker's first replica batch: only shapes and dtypes matter here."""
    if self._distribute_strategy is None:
        return
    strategy = self.distribute_strategy

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(local, next(batches))
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _with_replica_axis(step):
    """The step's results with a leading axis, so Keras' cross-worker ``MEAN, axis=0`` averages
    each of them over the replicas."""

    def step_with_replica_axis(data):
        return tf.nest.map_structure(lambda value: tf.expand_dims(value, 0), step(data))

    return step_with_replica_axis


def enable(model: keras.Model) -> keras.Model:
    """Install the overrides on ``model`` (not on the class: other models stay untouched)."""
    check_keras()
    model._maybe_symbolic_build = types.MethodType(_maybe_symbolic_build, model)
    model.train_step = _with_replica_axis(model.train_step)
    model.test_step = _with_replica_axis(model.test_step)
    return model
