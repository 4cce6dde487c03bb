"""Training steps/s on 1 worker vs 2 worker processes (MultiWorkerMirroredStrategy on 127.0.0.1).

Measured in one run so the ratio holds on a shared machine. Each configuration fits the default
config's classifier (configs/classification.yaml: network, optimizer, schedule; float32) on
in-memory images at the same global batch, compiled and prepared as ``braintumor-tf train``
does; warm-up steps (tracing) are not timed. On one machine the two workers share its cores, so
this measures the overhead of the collectives, not the speed-up of separate machines.

    python scripts/benchmark_multiworker.py [--steps 12] [--warmup 3] [--repeats 2] \
        [--out docs/benchmark_multiworker.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from multiworker_check import _free_ports  # scripts/ is on sys.path when run as a script

WORKER = r"""
import json, sys, time
from braintumor_tf.config import load_config
from braintumor_tf.commands.run_dir import setup_training
config = load_config("classification", ["train.precision=float32"])
policy, strategy = setup_training(config)   # the strategy first, as the train command
import numpy as np, keras, tensorflow as tf
from braintumor_tf.tasks import get_task
from braintumor_tf.training.distribute import prepare_model
from braintumor_tf.training.optimizers import make_optimizer
from braintumor_tf.training.schedules import make_schedule
steps, warmup = int(sys.argv[1]), int(sys.argv[2])
task, data, batch = get_task("classification"), config.data, config.train.batch_size
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (batch * 4, data.image_size, data.image_size, data.channels)).astype("float32")
y = keras.utils.to_categorical(rng.integers(0, 4, batch * 4), 4)
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
with strategy.scope():
    model = prepare_model(task.build_model(config), strategy)
    schedule = make_schedule(config.schedule, config.optimizer.learning_rate, 1000)
    model.compile(optimizer=make_optimizer(config.optimizer, schedule), loss=task.loss(config),
                  metrics=task.metrics(config))
model.fit(dataset, epochs=1, steps_per_epoch=warmup, verbose=0)
start = time.perf_counter()
model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"seconds": seconds, "steps": steps, "global_batch": batch,
                              "replicas": strategy.num_replicas_in_sync,
                              "image_size": data.image_size, "policy": policy}))
"""


def measure(workers: int, steps: int, warmup: int) -> dict:
    """Steps/s of ``workers`` processes training together (the chief's timing)."""
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(workers)]
    processes = []
    for index in range(workers):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("TF_CONFIG", None)
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses},
                                           "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen([sys.executable, "-c", WORKER, str(steps), str(warmup)],
                                          env=env, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
    outputs = [process.communicate(timeout=3600) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"worker exited {process.returncode}: {err[-3000:]}")
    result = json.loads(next(line for line in outputs[0][0].splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    result.update(workers=workers, steps_per_second=result["steps"] / result["seconds"],
                  images_per_second=result["steps"] * result["global_batch"] / result["seconds"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="1, 2, 1, 2 ... worker runs")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmark_multiworker.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.time()
    runs = []
    for repeat in range(args.repeats):
        for workers in (1, 2):
            run = measure(workers, args.steps, args.warmup)
            run["repeat"] = repeat
            runs.append(run)
            print(f"{workers} worker(s): {run['steps_per_second']:.3f} steps/s, "
                  f"{run['images_per_second']:.1f} images/s (global batch {run['global_batch']})",
                  flush=True)
    median = {workers: statistics.median(run["steps_per_second"] for run in runs
                                         if run["workers"] == workers) for workers in (1, 2)}
    report = {
        "command": "python scripts/benchmark_multiworker.py " + " ".join(sys.argv[1:]),
        "cpu_cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "minutes": (time.time() - started) / 60,
        "note": "both workers are processes on this machine and share its cores",
        "runs": runs,
        "median_steps_per_second": {str(workers): value for workers, value in median.items()},
        "ratio_2_workers_to_1": median[2] / median[1],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"2 workers / 1 worker: {report['ratio_2_workers_to_1']:.2f}x steps/s -> {args.out}")


if __name__ == "__main__":
    main()
