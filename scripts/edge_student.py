"""Distil the float release into a student small enough for the 2 MB edge file.

    python scripts/edge_student.py --run runs/default_patient --release savedmodels/classifier/2 \
        --weights savedmodels/classifier/classifier.keras --out runs/edge_student
    python scripts/edge_file.py --run runs/edge_student --release savedmodels/classifier/2 \
        --tta none --out savedmodels/classifier/classifier_int8.tflite --report docs/edge_int8.json

The student is the release's network without its last ``--drop-blocks`` residual blocks (the
widest: 1.18 M of the release's 2.83 M parameters sit in the last one), started from the
release's weights for every layer it keeps, and fitted to the release's own probabilities
(mirror averaging and temperature included, so the student needs no test-time views) on the
run's training split. The epoch is chosen by top-1 agreement with the release on the validation
split; the test split is left to edge_file.py. ``--run`` is any run of the release's config on
the same data: its split_manifest.csv is the patient-level split the release was trained on.

``--consistent`` asks the release itself on every augmented (zoom-crop, contrast, flip) and,
with ``--mixup``, mixed batch instead of copying fixed answers per image; ``--init`` starts the
student from an earlier student's model.keras instead of the release's weights:

    python scripts/edge_student.py --run runs/default_patient --release savedmodels/classifier/2 \
        --weights savedmodels/classifier/classifier.keras --init runs/edge_student/model.keras \
        --consistent --mixup 0.4 --epochs 6 --learning-rate 3e-4 --out runs/edge_student_e2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run directory with split_manifest.csv "
                                                     "and config.yaml (the release's split)")
    parser.add_argument("--release", required=True, help="the float release (SavedModel)")
    parser.add_argument("--weights", required=True, help="the release's Keras model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--drop-blocks", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--consistent", action="store_true",
                        help="the release answers every augmented batch (function matching)")
    parser.add_argument("--mixup", type=float, default=0.0,
                        help="with --consistent: mixup Beta parameter (0 = no mixing)")
    parser.add_argument("--init", help="start from this student model.keras")
    args = parser.parse_args(argv)
    if args.mixup and not args.consistent:
        sys.exit("Error: --mixup needs --consistent (the release must answer the mixed images)")

    from braintumor_tf.config import load_config
    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.export.runtimes import load_runtime
    from braintumor_tf.export.validation_data import load_pixels, manifest_rows
    from braintumor_tf.models.classifier import build_classifier
    from braintumor_tf.training.distill import distill, soft_targets, transfer_weights

    run, out = Path(args.run), Path(args.out)
    needed_files = [run / "split_manifest.csv", run / "config.yaml", Path(args.weights)]
    for needed in needed_files + ([Path(args.init)] if args.init else []):
        if not needed.exists():
            sys.exit(f"Error: {needed} not found")
    config = load_config(run / "config.yaml")
    model_config = config.model
    keep = len(model_config.block_filters) - args.drop_blocks
    if args.drop_blocks < 0 or keep < 1:
        sys.exit(f"Error: --drop-blocks must leave at least one of the "
                 f"{len(model_config.block_filters)} blocks")
    student_config = dataclasses.replace(
        model_config, block_filters=tuple(model_config.block_filters[:keep]),
        block_kernel_sizes=tuple(model_config.block_kernel_sizes[:keep]),
        block_downsample=tuple(model_config.block_downsample[:keep]))
    release = load_runtime(args.release, class_names=CLASS_NAMES)
    size, channels = release.image_size, release.channels
    student = build_classifier(student_config, size, channels)
    teacher = load_model(args.weights, compile=False)
    copied = transfer_weights(load_model(args.init, compile=False) if args.init else teacher,
                              student)
    print(f"student: {student.count_params():,} parameters (release {teacher.count_params():,});"
          f" {len(copied)} layers start from the release's weights", flush=True)

    train_pixels, _ = load_pixels(manifest_rows(run, "train"), size, channels, 1_000_000)
    val_pixels, _ = load_pixels(manifest_rows(run, "val"), size, channels, 1_000_000)
    print(f"teacher targets for {len(train_pixels)} training and {len(val_pixels)} validation "
          "images", flush=True)
    val_targets = soft_targets(release.predict, val_pixels)
    if args.consistent:
        import tensorflow as tf

        release_graph = tf.saved_model.load(args.release)   # kept: the signature needs its variables
        train_targets = None

        def answer(images):
            return release_graph.signatures["predict_pixels"](pixels=images)["probabilities"]
    else:
        train_targets, answer = soft_targets(release.predict, train_pixels), None
    summary = distill(student, train_pixels, train_targets, val_pixels, val_targets, out,
                      epochs=args.epochs, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, seed=args.seed, teacher=answer,
                      mixup=args.mixup)
    shutil.copy(run / "split_manifest.csv", out / "split_manifest.csv")
    summary.update({"release": str(args.release), "weights": str(args.weights),
                    "split_from": str(run), "drop_blocks": args.drop_blocks,
                    "init": args.init,
                    "block_filters": student_config.block_filters,
                    "layers_from_release": len(copied)})
    (out / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
