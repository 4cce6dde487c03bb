"""Does each TFLite variant still make the float model's decisions, and what does it cost?

Agreement with the float Keras model (not accuracy) is the gate: quantisation should change
nothing a user sees, and agreement catches that even on a validation set the model gets wrong.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.export.runtimes import Runtime, load_runtime

AGREEMENT_GATES = {"dynamic": 0.995, "int8": 0.99}
LATENCY_THREADS = (1, 2)
PARITY_JSON = "tflite_parity.json"
PARITY_MARKDOWN = "tflite_parity.md"


def latency_per_image(runtime: Runtime, pixels: np.ndarray, repeats: int = 50) -> dict:
    """Batch-1 latency in ms, after one warm-up call (allocation and delegate set-up)."""
    pixels = np.asarray(pixels, np.float32)
    runtime.predict(pixels[:1])
    times = []
    for index in range(repeats):
        image = pixels[index % len(pixels)][np.newaxis]
        start = time.perf_counter()
        runtime.predict(image)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"mean_ms": float(np.mean(times)), "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95))}


def tflite_parity(
    reference: Runtime,
    tflite_files: Mapping[str, str | os.PathLike],
    pixels: np.ndarray,
    labels: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    latency_repeats: int = 50,
    gates: Mapping[str, float] = AGREEMENT_GATES,
) -> dict:
    """Compare each variant with ``reference`` (the float Keras model) on ``pixels``."""
    pixels = np.asarray(pixels, np.float32)
    if len(pixels) == 0:
        raise ValueError("parity needs at least one validation image")
    want = reference.predict(pixels).argmax(axis=1)
    truth = None if labels is None else np.asarray(labels)
    report: dict = {
        "reference": str(reference.path),
        "images": int(len(pixels)),
        "reference_accuracy": None if truth is None else float(np.mean(want == truth)),
        "gates": dict(gates),
        "variants": {},
    }
    for variant, path in tflite_files.items():
        runtime = load_runtime(path, class_names=reference.class_names, num_threads=2)
        got = runtime.predict(pixels).argmax(axis=1)
        agreement = float(np.mean(got == want))
        entry = {
            "file": str(path),
            "size_bytes": int(Path(path).stat().st_size),
            "agreement": agreement,
            "disagreements": int(np.sum(got != want)),
            "accuracy": None if truth is None else float(np.mean(got == truth)),
            "accuracy_delta": None if truth is None else float(np.mean(got == truth)
                                                               - report["reference_accuracy"]),
            "latency_batch1": {},
            "gate": gates.get(variant),
        }
        for threads in LATENCY_THREADS:
            timed = load_runtime(path, class_names=reference.class_names, num_threads=threads)
            entry["latency_batch1"][f"{threads}_threads"] = latency_per_image(
                timed, pixels, latency_repeats)
        entry["passed"] = None if entry["gate"] is None else agreement >= entry["gate"]
        report["variants"][variant] = entry
    report["passed"] = all(v["passed"] is not False for v in report["variants"].values())
    if out_dir is not None:
        write_parity_report(report, out_dir)
    return report


def format_parity_markdown(report: dict) -> str:
    lines = [
        "# TFLite parity",
        "",
        f"Reference: `{report['reference']}` (float Keras), {report['images']} validation images"
        + ("" if report["reference_accuracy"] is None
           else f", reference accuracy {report['reference_accuracy']:.4f}") + ".",
        "Latency: one image per call (batch 1), LiteRT with 1 and 2 threads, mean of repeated calls.",
        "",
        "| variant | size (KB) | top-1 agreement | gate | result | accuracy delta "
        "| ms/image 1 thread | ms/image 2 threads |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for variant, entry in report["variants"].items():
        gate = "-" if entry["gate"] is None else f"{entry['gate'] * 100:.1f} %"
        result = {None: "no gate", True: "pass", False: "**FAIL**"}[entry["passed"]]
        delta = "-" if entry["accuracy_delta"] is None else f"{entry['accuracy_delta'] * 100:+.2f} pt"
        latency = entry["latency_batch1"]
        lines.append(
            f"| {variant} | {entry['size_bytes'] / 1024:.1f} | {entry['agreement'] * 100:.2f} % "
            f"| {gate} | {result} | {delta} | {latency['1_threads']['mean_ms']:.2f} "
            f"| {latency['2_threads']['mean_ms']:.2f} |"
        )
    lines += ["", f"Overall: {'pass' if report['passed'] else 'FAIL'}", ""]
    return "\n".join(lines)


def write_parity_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / PARITY_JSON, out_dir / PARITY_MARKDOWN
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(format_parity_markdown(report))
    return json_path, md_path
