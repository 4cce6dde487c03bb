"""The edge file: a full-integer TFLite classifier under 2 MB, checked against the float release.

    python scripts/edge_file.py --run runs/release_classifier --release savedmodels/classifier/2 \
        --out savedmodels/classifier/classifier_int8.tflite --report docs/edge_int8.json

Converts the run's model.keras (with the release's test-time views unless ``--tta`` says
otherwise, e.g. ``none`` for a student from scripts/edge_student.py; without the OOD guard,
whose covariance matrices alone would push the file past 2 MB) to int8 with int8 input and
output, calibrated on 200 training images, then measures on the run's patient-level test split:
top-1 agreement with the float release (gate 99 %), accuracy against the release's (within 0.5
points), batch-1 latency on one thread (<= 5 ms) and size (<= 2,000,000 bytes). Exit status 1
when a gate fails; the file is written either way, with the report beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

GATES = {"size_bytes": 2_000_000, "agreement": 0.99, "accuracy_drop_points": 0.5,
         "latency_ms_1_thread": 5.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--release", required=True, help="the float release (SavedModel)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", default=None)
    parser.add_argument("--tta", default=None, choices=["none", "mirror", "flips", "dihedral"],
                        help="views the edge file averages over (default: the release's; "
                             "'none' for a student distilled from the release's averaged output)")
    args = parser.parse_args(argv)

    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.export.parity import latency_per_image
    from braintumor_tf.export.runtimes import load_runtime
    from braintumor_tf.export.tflite import convert_to_tflite, float32_model
    from braintumor_tf.export.validation_data import load_pixels, manifest_rows
    from braintumor_tf.models.tta import with_test_time_augmentation

    run = Path(args.run)
    release = load_runtime(args.release, class_names=CLASS_NAMES)
    meta_file = Path(release.path) / "assets.extra" / "braintumor_tf.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    tta = args.tta or meta.get("test_time_augmentation", "none")
    model = with_test_time_augmentation(
        float32_model(load_model(run / "model.keras", compile=False)), tta)
    size = release.image_size
    calibration, _ = load_pixels(manifest_rows(run, "train"), size, release.channels, 200)
    test_pixels, test_labels = load_pixels(manifest_rows(run, "test"), size, release.channels,
                                           100_000)
    path = convert_to_tflite(model, args.out, "int8", representative_images=calibration,
                             overwrite=True, metadata={
                                 "class_names": list(CLASS_NAMES), "image_size": size,
                                 "channels": release.channels, "test_time_augmentation": tta,
                                 "source": str(args.release),
                                 "ood_score": "not in this file (see the SavedModel and the "
                                              "float16/dynamic files)"})
    edge = load_runtime(path, class_names=CLASS_NAMES, num_threads=1)
    want = release.predict(test_pixels).argmax(axis=1)
    got = edge.predict(test_pixels).argmax(axis=1)
    accuracy_release = float(np.mean(want == test_labels))
    accuracy_edge = float(np.mean(got == test_labels))
    latency = latency_per_image(edge, test_pixels, repeats=200)
    report = {
        "file": str(path), "size_bytes": path.stat().st_size, "test_images": int(len(got)),
        "agreement": float(np.mean(want == got)), "accuracy_release": accuracy_release,
        "accuracy_edge": accuracy_edge,
        "accuracy_drop_points": round((accuracy_release - accuracy_edge) * 100, 3),
        "latency_ms_1_thread": latency["mean_ms"], "latency_1_thread": latency,
        "test_time_augmentation": tta, "gates": GATES,
    }
    report["passed"] = {
        "size": report["size_bytes"] <= GATES["size_bytes"],
        "agreement": report["agreement"] >= GATES["agreement"],
        "accuracy": report["accuracy_drop_points"] <= GATES["accuracy_drop_points"],
        "latency": report["latency_ms_1_thread"] <= GATES["latency_ms_1_thread"],
    }
    print(json.dumps(report, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(report["passed"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
