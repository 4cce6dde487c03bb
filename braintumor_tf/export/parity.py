"""Does each TFLite variant still make the float model's decisions, and what does it cost?

Agreement with the float Keras model (not accuracy) is the gate: quantisation should change
nothing a user sees, and agreement catches that even on a validation set the model gets wrong.
For a segmenter agreement is the mean Dice of the variant's mask against the Keras model's own
thresholded mask; with truth masks the Dice drop against the truth is gated too.
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
MAX_DICE_DROP = 0.01  # every segmenter variant
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


def _judge_variants(reference: Runtime, tflite_files: Mapping[str, str | os.PathLike],
                    pixels: np.ndarray, judge, latency_repeats: int) -> dict:
    """Run each variant on ``pixels``; ``judge(variant, outputs)`` returns the task's agreement
    entries including ``passed``; size and batch-1 latency are added here for both tasks."""
    variants = {}
    for variant, path in tflite_files.items():
        outputs = load_runtime(path, num_threads=2).predict(pixels)
        entry = {"file": str(path), "size_bytes": int(Path(path).stat().st_size),
                 **judge(variant, outputs), "latency_batch1": {}}
        for threads in LATENCY_THREADS:
            timed = load_runtime(path, num_threads=threads)
            entry["latency_batch1"][f"{threads}_threads"] = latency_per_image(
                timed, pixels, latency_repeats)
        variants[variant] = entry
    return variants


def _checked_pixels(pixels) -> np.ndarray:
    pixels = np.asarray(pixels, np.float32)
    if len(pixels) == 0:
        raise ValueError("parity needs at least one validation image")
    return pixels


def tflite_parity(
    reference: Runtime,
    tflite_files: Mapping[str, str | os.PathLike],
    pixels: np.ndarray,
    labels: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    latency_repeats: int = 50,
    gates: Mapping[str, float] = AGREEMENT_GATES,
) -> dict:
    """Top-1 agreement of each classifier variant with ``reference`` (the float Keras model)."""
    pixels = _checked_pixels(pixels)
    want = reference.predict(pixels).argmax(axis=1)
    truth = None if labels is None else np.asarray(labels)
    reference_accuracy = None if truth is None else float(np.mean(want == truth))

    def judge(variant, outputs):
        got = outputs.argmax(axis=1)
        agreement, gate = float(np.mean(got == want)), gates.get(variant)
        accuracy = None if truth is None else float(np.mean(got == truth))
        return {"agreement": agreement, "disagreements": int(np.sum(got != want)),
                "accuracy": accuracy,
                "accuracy_delta": None if truth is None else accuracy - reference_accuracy,
                "gate": gate, "passed": None if gate is None else agreement >= gate}

    report: dict = {"reference": str(reference.path), "images": int(len(pixels)),
                    "reference_accuracy": reference_accuracy, "gates": dict(gates),
                    "variants": _judge_variants(reference, tflite_files, pixels, judge,
                                                latency_repeats)}
    report["passed"] = all(v["passed"] is not False for v in report["variants"].values())
    if out_dir is not None:
        write_parity_report(report, out_dir)
    return report


def segmentation_parity(
    reference: Runtime,
    tflite_files: Mapping[str, str | os.PathLike],
    pixels: np.ndarray,
    truth_masks: np.ndarray | None = None,
    out_dir: str | os.PathLike | None = None,
    latency_repeats: int = 20,
    max_dice_drop: float = MAX_DICE_DROP,
) -> dict:
    """Mean-Dice parity of each segmenter variant with ``reference`` (the float Keras model).

    ``truth_masks`` [N, S, S] at the model's size, optional; without them only agreement with the
    Keras masks is gated. Fewer latency repeats than the classifier: a UNet call is slow on CPU.
    """
    from braintumor_tf.training.seg_metrics import mean_dice

    pixels = _checked_pixels(pixels)
    want = reference.predict(pixels)[..., 0]
    threshold = reference.threshold
    want_mask = (want > threshold).astype(np.float32)
    truth = None if truth_masks is None else np.asarray(truth_masks)
    reference_dice = None if truth is None else mean_dice(truth, want, threshold)

    def judge(variant, outputs):
        got = outputs[..., 0]
        # Every mask at the model's own threshold (a variant's at 0.5 would disagree with a
        # reference cut at 0.7 where nothing differs but the cut).
        agreement = mean_dice(want_mask, got, threshold)
        dice_vs_truth = None if truth is None else mean_dice(truth, got, threshold)
        delta = None if truth is None else dice_vs_truth - reference_dice
        drops = [1.0 - agreement] + ([] if delta is None else [-delta])
        return {"dice_vs_reference": agreement, "dice_drop_vs_reference": 1.0 - agreement,
                "dice_vs_truth": dice_vs_truth, "dice_delta_vs_truth": delta,
                "gate": max_dice_drop, "passed": bool(max(drops) <= max_dice_drop)}

    report: dict = {"task": "segmentation", "reference": str(reference.path),
                    "images": int(len(pixels)), "threshold": threshold,
                    "reference_dice": reference_dice, "gates": {"max_dice_drop": max_dice_drop},
                    "variants": _judge_variants(reference, tflite_files, pixels, judge,
                                                latency_repeats)}
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    if out_dir is not None:
        write_parity_report(report, out_dir)
    return report


def _format_segmentation_markdown(report: dict) -> str:
    lines = [
        "# TFLite parity (segmenter)",
        "",
        f"Reference: `{report['reference']}` (float Keras), {report['images']} "
        f"{report.get('image_source', 'validation')} images, "
        f"masks at probability > {report['threshold']}"
        + ("" if report["reference_dice"] is None
           else f", reference mean Dice vs truth {report['reference_dice']:.4f} on these images "
           "at the model's input size (a parity check, not the model's score)") + ".",
        "Agreement: mean Dice of the variant's mask against the Keras model's mask (1 = identical). "
        f"Gate: Dice drop <= {report['gates']['max_dice_drop']} (against the Keras masks and, "
        "when given, against the truth).",
        "Latency: one image per call (batch 1), LiteRT with 1 and 2 threads, mean of repeated calls.",
        "",
        "| variant | size (KB) | Dice vs Keras | Dice delta vs truth | result "
        "| ms/image 1 thread | ms/image 2 threads |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for variant, entry in report["variants"].items():
        delta = "-" if entry["dice_delta_vs_truth"] is None else f"{entry['dice_delta_vs_truth']:+.4f}"
        latency = entry["latency_batch1"]
        lines.append(
            f"| {variant} | {entry['size_bytes'] / 1024:.1f} | {entry['dice_vs_reference']:.4f} "
            f"| {delta} | {'pass' if entry['passed'] else '**FAIL**'} "
            f"| {latency['1_threads']['mean_ms']:.2f} | {latency['2_threads']['mean_ms']:.2f} |"
        )
    lines += ["", f"Overall: {'pass' if report['passed'] else 'FAIL'}", ""]
    return "\n".join(lines)


def format_parity_markdown(report: dict) -> str:
    if report.get("task") == "segmentation":
        return _format_segmentation_markdown(report)
    lines = [
        "# TFLite parity",
        "",
        f"Reference: `{report['reference']}` (float Keras), {report['images']} "
        f"{report.get('image_source', 'validation')} images"
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
