"""Does ``keras.Model.fit`` train under ``tf.distribute.MultiWorkerMirroredStrategy`` here?

Starts two worker processes on 127.0.0.1 (free ports, TF_CONFIG set for each) that fit a one-layer
model on random data, and prints what each one ended with. On Keras 3.15 / TensorFlow 2.21 both
fail inside ``fit`` (keras-team/keras#20585): this is why ``train.distribute: multi_worker`` is
not offered as working (docs/DISTRIBUTED.md). Re-run it after upgrading Keras.

    python scripts/multiworker_check.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

WORKER = r"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf, keras
strategy = tf.distribute.MultiWorkerMirroredStrategy()
features = np.random.default_rng(0).random((64, 8)).astype("float32")
labels = (features.sum(axis=1) > 4).astype("float32")
with strategy.scope():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
history = model.fit(tf.data.Dataset.from_tensor_slices((features, labels)).batch(16), epochs=2,
                    verbose=0)
print("OK", strategy.num_replicas_in_sync, "replicas, loss", history.history["loss"])
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    worked = True
    for index, process in enumerate(processes):
        out, err = process.communicate(timeout=300)
        errors = [line for line in err.splitlines() if "Error: " in line]
        last = (out.strip().splitlines() or errors[-1:] or ["(no output)"])[-1]
        print(f"worker {index}: exit {process.returncode}: {last[:300]}")
        worked &= process.returncode == 0
    print("multi-worker fit works here" if worked else "multi-worker fit FAILS with this Keras")
    return 0 if worked else 1


if __name__ == "__main__":
    sys.exit(main())
