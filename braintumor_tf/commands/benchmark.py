"""Throughput and latency of every available backend, measured in one run so ratios hold."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.export.runtimes import Runtime, load_runtime
from braintumor_tf.log import log

BATCH_SIZES = (1, 32)


def find_backends(models: Sequence[str | os.PathLike], tflite_dir=None) -> dict[str, Path]:
    """Label -> path. A TF Serving base directory also brings the .tflite files beside it."""
    found: dict[str, Path] = {}
    tflite_dirs = [Path(tflite_dir)] if tflite_dir is not None else []
    for model in models:
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"model not found: {path}")
        if path.suffix == ".keras":
            found[f"keras ({path.name})"] = path
        elif path.suffix == ".tflite":
            found[f"tflite {path.stem}"] = path
        elif path.is_dir():
            found[f"savedmodel ({path.name})"] = path
            if tflite_dir is None:
                tflite_dirs.append(path)
        else:
            raise ValueError(f"unrecognised model {path}: expected .keras, .tflite or a directory")
    for directory in tflite_dirs:
        if not directory.is_dir():
            raise FileNotFoundError(f"TFLite folder not found: {directory}")
        for file in sorted(directory.glob("*.tflite")):
            found.setdefault(f"tflite {file.stem}", file)
    if not found:
        raise ValueError("no model to benchmark")
    return found


def time_runtime(runtime: Runtime, pixels: np.ndarray, batch_size: int, images: int) -> dict:
    """Per-call latency over ``images`` images in batches, after one warm-up call."""
    runtime.predict(pixels[:batch_size])
    calls = max(1, int(np.ceil(images / batch_size)))
    latencies = []
    for call in range(calls):
        start = (call * batch_size) % len(pixels)
        batch = pixels[start:start + batch_size]
        if len(batch) < batch_size:
            batch = np.concatenate([batch, pixels[:batch_size - len(batch)]])
        begin = time.perf_counter()
        runtime.predict(batch)
        latencies.append(time.perf_counter() - begin)
    latencies = np.asarray(latencies) * 1000.0
    return {
        "batch_size": batch_size,
        "images": calls * batch_size,
        "images_per_second": float(calls * batch_size / (latencies.sum() / 1000.0)),
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
    }


def format_table(results: dict) -> str:
    lines = ["| backend | batch | images/s | p50 ms/batch | p95 ms/batch |",
             "|---|---:|---:|---:|---:|"]
    for label, rows in results["backends"].items():
        for row in rows:
            lines.append(f"| {label} | {row['batch_size']} | {row['images_per_second']:.1f} "
                         f"| {row['latency_p50_ms']:.2f} | {row['latency_p95_ms']:.2f} |")
    return "\n".join(lines)


def benchmark(
    models: Sequence[str | os.PathLike],
    tflite_dir=None,
    images: int = 256,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    num_threads: int | None = None,
    json_path=None,
    seed: int = 0,
) -> dict:
    """Random pixels, not files: decoding is the same for all backends and would blur the ratios."""
    if images < 1:
        raise ValueError(f"--images must be >= 1, got {images}")
    backends = find_backends(models, tflite_dir)
    results: dict = {"images": images, "num_threads": num_threads, "cpu_count": os.cpu_count(),
                     "machine": platform.processor() or platform.machine(), "backends": {}}
    pixels_by_shape: dict[tuple, np.ndarray] = {}  # models of different input sizes side by side
    for label, path in backends.items():
        runtime = load_runtime(path, batch_size=max(batch_sizes),
                               num_threads=num_threads)
        shape = (max(max(batch_sizes), min(images, 256)), runtime.image_size,
                 runtime.image_size, runtime.channels)
        if shape not in pixels_by_shape:
            pixels_by_shape[shape] = np.random.default_rng(seed).uniform(0, 255, shape).astype(
                np.float32)
        results["backends"][label] = [time_runtime(runtime, pixels_by_shape[shape], b, images)
                                      for b in batch_sizes]
        results.setdefault("paths", {})[label] = str(path)
        results.setdefault("image_size", {})[label] = runtime.image_size
    table = format_table(results)
    log(table)
    results["table"] = table
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results
