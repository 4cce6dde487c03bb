"""Does ``keras.Model.fit`` train under ``tf.distribute.MultiWorkerMirroredStrategy`` here, plain
and with the package's overrides (``braintumor_tf.training.keras_multiworker``)?

Starts two worker processes on 127.0.0.1 (free ports, TF_CONFIG set for each) that fit a small
model with BatchNormalization on random data, three ways, and prints how each ended and how far
the two workers' weights are apart. On Keras 3.15 / TensorFlow 2.21 plain ``fit`` fails
(keras-team/keras#20585); with the overrides it trains, and only with synchronized
BatchNormalization are the workers' weights identical. When plain ``fit`` works after a Keras
upgrade, the overrides can go (docs/DISTRIBUTED.md).

    python scripts/multiworker_check.py            # all three
    python scripts/multiworker_check.py --plain    # plain Keras only
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np

WORKER = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
import json, keras
mode, out = sys.argv[1], sys.argv[2]
features = np.random.default_rng(0).random((64, 8)).astype("float32")
labels = (features.sum(axis=1) > 4).astype("float32")
keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
if mode == "overrides":  # what braintumor-tf train does: overrides and synchronized BatchNorm
    from braintumor_tf.training.distribute import prepare_model
    prepare_model(model, strategy)
elif mode == "overrides-plain-bn":
    from braintumor_tf.training import keras_multiworker
    keras_multiworker.enable(model)
history = model.fit(tf.data.Dataset.from_tensor_slices((features, labels)).batch(16), epochs=2,
                    verbose=0)
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
np.savez(os.path.join(out, f"worker{index}.npz"), *model.get_weights())
print("OK", strategy.num_replicas_in_sync, "replicas, loss", history.history["loss"])
"""

MODES = {
    "plain": "plain Keras fit",
    "overrides-plain-bn": "fit with the overrides, plain BatchNormalization",
    "overrides": "fit with the overrides and synchronized BatchNormalization (braintumor-tf train)",
}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def run(mode: str) -> tuple[bool, float | None]:
    """Two workers fitting in ``mode``: (both exited 0, largest weight difference between them)."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    with tempfile.TemporaryDirectory() as out:
        processes = []
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
            processes.append(subprocess.Popen([sys.executable, "-c", WORKER, mode, out], env=env,
                                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        worked = True
        for index, process in enumerate(processes):
            try:
                stdout, stderr = process.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            errors = [line for line in stderr.splitlines() if "Error: " in line]
            last = (stdout.strip().splitlines() or errors[-1:] or ["(no output)"])[-1]
            print(f"  worker {index}: exit {process.returncode}: {last[:200]}")
            worked &= process.returncode == 0
        if not worked:
            return False, None
        weights = [np.load(os.path.join(out, f"worker{index}.npz")) for index in range(2)]
        difference = max(float(np.abs(weights[0][name] - weights[1][name]).max())
                         for name in weights[0].files)
        return True, difference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="only plain Keras fit")
    args = parser.parse_args()
    outcome = {}
    for mode, description in MODES.items():
        if args.plain and mode != "plain":
            continue
        print(f"{description}:")
        worked, difference = outcome[mode] = run(mode)
        print("  " + ("FAILS with this Keras" if not worked else
                      "trains; identical weights on both workers" if difference == 0 else
                      f"trains; weights differ between the workers by up to {difference:.1e}"))
    if args.plain:
        print("plain keras fit under multi-worker " + ("works here: the overrides can go"
                                                       if outcome["plain"][0] else "fails here"))
        return 0 if outcome["plain"][0] else 1
    return 0 if outcome["overrides"] == (True, 0.0) else 1


if __name__ == "__main__":
    sys.exit(main())
