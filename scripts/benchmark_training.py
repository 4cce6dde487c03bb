"""Training throughput: float32 vs mixed_bfloat16, and the tf.data pipeline vs the model.

Measured in one process so the ratios hold on a shared machine. Reads real images from
--data (default ../shared/data/classification) or, when that is absent, phantoms.

    python scripts/benchmark_training.py [--data PATH] [--images 512] [--out docs/benchmark_training.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from braintumor_tf.config import load_config  # noqa: E402
from braintumor_tf.data.datasets import classification_dataset  # noqa: E402
from braintumor_tf.data.discover import discover_images  # noqa: E402
from braintumor_tf.data.phantoms import write_phantom_dataset  # noqa: E402
from braintumor_tf.models.classifier import build_classifier  # noqa: E402


def pipeline_images_per_second(paths, labels, config, cache: bool, epochs: int = 2) -> list[float]:
    """Images/s the input pipeline delivers on its own (first pass decodes, later ones hit the cache)."""
    data = config.data
    dataset = classification_dataset(paths, labels, data.image_size, data.channels,
                                     config.train.batch_size, config.model.num_classes,
                                     training=True, augment_config=data.augment, cache=cache)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        count = sum(int(x.shape[0]) for x, _ in dataset)
        rates.append(count / (time.perf_counter() - start))
    return rates


def training_images_per_second(config, policy: str, steps: int = 12) -> float:
    """Images/s of model.fit on in-memory tensors: the model's consumption rate."""
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    data, batch = config.data, config.train.batch_size
    model = build_classifier(config.model, data.image_size, data.channels)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * steps, data.image_size, data.image_size, data.channels))
    y = keras.utils.to_categorical(rng.integers(0, 4, batch * steps), 4)
    model.fit(x.astype("float32"), y, batch_size=batch, epochs=1, verbose=0)  # trace + warm up
    start = time.perf_counter()
    model.fit(x.astype("float32"), y, batch_size=batch, epochs=2, verbose=0)
    rate = 2 * batch * steps / (time.perf_counter() - start)
    keras.mixed_precision.set_global_policy("float32")
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/classification")
    parser.add_argument("--config", default=None)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--out", default="docs/benchmark_training.json")
    args = parser.parse_args()
    config = load_config(args.config)

    if Path(args.data).exists():
        source = args.data
    else:
        print(f"{args.data} not found: measuring the pipeline on generated phantoms instead")
        source = tempfile.mkdtemp(prefix="phantoms_")
        write_phantom_dataset(Path(source) / "p", max(args.images // 4, 4), 512, 0)
    records = discover_images([source])
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(records), size=min(args.images, len(records)), replace=False)
    paths = [records[i].path for i in chosen]
    labels = [records[i].label for i in chosen]

    results = {"data": source, "images": len(paths), "image_size": config.data.image_size,
               "batch_size": config.train.batch_size, "cpu_count": os.cpu_count()}
    rates = pipeline_images_per_second(paths, labels, config, cache=True)
    results["pipeline_first_pass_decode_images_per_s"] = rates[0]
    results["pipeline_cached_augmented_images_per_s"] = rates[1]
    for policy in ("float32", "mixed_bfloat16"):
        results[f"train_{policy}_images_per_s"] = training_images_per_second(config, policy)
    results["bfloat16_speedup"] = (results["train_mixed_bfloat16_images_per_s"]
                                   / results["train_float32_images_per_s"])
    fastest = max(results["train_float32_images_per_s"], results["train_mixed_bfloat16_images_per_s"])
    results["pipeline_cached_over_training"] = results["pipeline_cached_augmented_images_per_s"] / fastest
    results["pipeline_decode_over_training"] = results["pipeline_first_pass_decode_images_per_s"] / fastest
    print(json.dumps(results, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
