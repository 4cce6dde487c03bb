"""Training-step time of candidate classifier configs, measured in one process so the ratios hold.

    python scripts/benchmark_classifier_candidates.py [--steps 12] [--out FILE.json]

Each candidate is the default config plus a few overrides; the step is a full training step
(forward, backward, AdamW update) on a batch of random images, so the figure is the model's cost
alone (the cached tf.data input adds little). Used to size the default config to its 30-minute
budget: minutes per epoch = train images / batch size x seconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from braintumor_tf.config import load_config  # noqa: E402
from braintumor_tf.models.macs import count_macs_nested  # noqa: E402
from braintumor_tf.tasks import get_task  # noqa: E402
from braintumor_tf.training.optimizers import make_optimizer  # noqa: E402

CANDIDATES = {
    "default (160 px, 3x3 stride-2 stem)": [],
    "128 px": ["data.image_size=128"],
    "160 px, 4x4 stride-4 stem": ["model.stem_stride=4", "model.stem_kernel_size=4"],
    "192 px, 4x4 stride-4 stem": ["data.image_size=192", "model.stem_stride=4",
                                  "model.stem_kernel_size=4"],
    "224 px, 4x4 stride-4 stem": ["data.image_size=224", "model.stem_stride=4",
                                  "model.stem_kernel_size=4"],
}


def seconds_per_step(overrides: list[str], steps: int) -> dict:
    config = load_config(None, overrides)
    keras.utils.set_random_seed(0)
    model = get_task("classification").build_model(config)
    model.compile(optimizer=make_optimizer(config.optimizer, config.optimizer.learning_rate),
                  loss="categorical_crossentropy")
    size, batch = config.data.image_size, config.train.batch_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, config.data.channels)).astype(np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 4, batch), 4)
    for _ in range(3):  # tracing and warm-up
        model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return {"overrides": overrides, "parameters": int(model.count_params()),
            "gmac_per_image": round(count_macs_nested(model) / 1e9, 3),
            "seconds_per_step": round((time.perf_counter() - start) / steps, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--train-images", type=int, default=5706,
                        help="Images per epoch for the minutes column (patient-level train split).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = {}
    print("| candidate | parameters | GMAC/image | s/step | min/epoch |\n|---|---|---|---|---|")
    for name, overrides in CANDIDATES.items():
        result = seconds_per_step(overrides, args.steps)
        result["minutes_per_epoch"] = round(
            np.ceil(args.train_images / 32) * result["seconds_per_step"] / 60, 1)
        results[name] = result
        print(f"| {name} | {result['parameters']:,} | {result['gmac_per_image']} | "
              f"{result['seconds_per_step']} | {result['minutes_per_epoch']} |", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
