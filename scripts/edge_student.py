"""Distil the float release into a student small enough for the 2 MB edge file, through the
package's one training driver (``train.teacher``).

    python scripts/edge_student.py --run runs/default_patient \
        --teacher savedmodels/classifier/classifier.keras --out runs/edge_student
    (a teacher that is a fold ensemble or a two-recipe pair: add --init FOLD_MODEL.keras, one
    of its networks, to start the student from)
    python scripts/edge_file.py --run runs/edge_student --release savedmodels/classifier/2 \
        --tta none --out savedmodels/classifier/classifier_int8.tflite --report docs/edge_int8.json

The student is the release's network without its last ``--drop-blocks`` residual blocks (the
widest: 1.18 M of the release's 2.83 M parameters sit in the last one), started from the
teacher's weights for every layer it keeps, and fitted to the teacher's probabilities (its
averaging included, so the student needs no test-time views) on every augmented batch of the
run's training split. The epoch is chosen by agreement with the teacher on the validation split
(there ``val_accuracy``); the test split is left to edge_file.py. ``--run`` is any run of the
release's config on the same data: the student reuses its patient-level split and config.
It is the same as ``braintumor-tf train --config RUN/config.yaml --set train.teacher=...`` with
the split copied in; interrupted, the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run directory with split_manifest.csv "
                                                     "and config.yaml (the release's split)")
    parser.add_argument("--teacher", required=True, help="the release (.keras or SavedModel)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--drop-blocks", type=int, default=1)
    parser.add_argument("--keep", choices=["best", "last"], default="best",
                        help="best: the epoch that agrees most with the teacher on the run's "
                             "validation split; last: the last epoch, for a cross-validation "
                             "fold whose 'val' rows are its held-out patients (only watched)")
    parser.add_argument("--init", default=None,
                        help="start the student from this network's weights (layers of the same "
                             "name and shape) instead of the teacher's: for a teacher whose "
                             "layers are renamed, such as a fold ensemble or a two-recipe pair")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="further config overrides (key=value), as train --set")
    args = parser.parse_args(argv)

    from braintumor_tf.commands.run_dir import SPLIT_FILES
    from braintumor_tf.commands.train import train
    from braintumor_tf.config import load_config
    from braintumor_tf.log import configure

    configure()
    run, out = Path(args.run), Path(args.out)
    for needed in (run / "split_manifest.csv", run / "config.yaml"):
        if not needed.exists():
            sys.exit(f"Error: {needed} not found")
    config = load_config(run / "config.yaml")
    model = config.model
    keep = len(model.block_filters) - args.drop_blocks
    if args.drop_blocks < 0 or keep < 1:
        sys.exit(f"Error: --drop-blocks must leave at least one of the "
                 f"{len(model.block_filters)} blocks")
    config = config.replace(**{
        "model.block_filters": list(model.block_filters[:keep]),
        "model.block_kernel_sizes": list(model.block_kernel_sizes[:keep]),
        "model.block_downsample": list(model.block_downsample[:keep]),
        "train.teacher": args.teacher, "train.epochs": args.epochs,
        "optimizer.learning_rate": args.learning_rate, "train.stages": [],
        "data.folds": 0})
    config = load_config_with(config, args.overrides)
    out.mkdir(parents=True, exist_ok=True)
    if args.init:
        config = config.replace(**{"train.initial_weights": str(_student_init(config, args.init,
                                                                              out))})
    for name in SPLIT_FILES:  # the release's patient split, reused as the run's own
        if (run / name).is_file() and not (out / name).exists():
            shutil.copy2(run / name, out / name)
    summary = train(config, out, keep=args.keep)
    print(json.dumps({key: summary.get(key) for key in
                      ("parameters", "epochs", "best_epoch", "fit_seconds")}, indent=2))
    return 0


def _student_init(config, source: str, out: Path) -> Path:
    """The student's starting weights, copied layer by layer from ``source`` and saved once (a
    resumed run must start from the same file)."""
    path = out / "student_init.keras"
    if path.is_file():
        return path
    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.tasks import get_task
    from braintumor_tf.training.distill import transfer_weights

    if not Path(source).is_file():
        sys.exit(f"Error: --init {source} not found")
    student = get_task(config.task).build_model(config.replace(**{"train.teacher": None}))
    copied = transfer_weights(load_model(source, compile=False), student)
    if not copied:
        sys.exit(f"Error: --init {source} shares no layer (same name and shapes) with the student")
    print(f"student: {len(copied)} of its layers start from {source}")
    partial = out / "student_init.partial.keras"
    student.save(partial)
    partial.replace(path)
    return path


def load_config_with(config, overrides):
    """``config`` with ``key=value`` overrides (YAML values), validated again."""
    if not overrides:
        return config
    import yaml

    pairs = [override.split("=", 1) for override in overrides]
    bad = [override for override, pair in zip(overrides, pairs, strict=True) if len(pair) != 2]
    if bad:
        sys.exit(f"Error: --set takes key=value, got {bad[0]!r}")
    return config.replace(**{key: yaml.safe_load(value) for key, value in pairs})


if __name__ == "__main__":
    raise SystemExit(main())
