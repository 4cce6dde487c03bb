"""Threshold and speck removal for a segmenter, chosen on a split at each image's own size.

    python scripts/seg_postprocess_check.py --model runs/seg_mnv2_256c128/model.keras \
        --data runs/seg_mnv2_256c128/split_manifest.csv --split val \
        --masks ../shared/data/segmentation/pkdarabi_expert_masks --out docs/seg_postprocess_val.json

Predicts each image once, then scores every (threshold, post-processing) pair against the masks:
none, only the largest connected piece, or pieces below a share of the slice removed. Mean Dice
and the share of slices below 0.1 per pair; choose on validation, confirm once on test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
CLEANUPS = {"none": (0.0, False), "largest": (0.0, True), "min_0.05%": (0.0005, False),
            "min_0.1%": (0.001, False), "min_0.2%": (0.002, False), "min_0.4%": (0.004, False)}


def dice(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Dice alone, same empty-mask convention as training.seg_metrics, whose mean_dice builds the
    whole report (HD95 included) per call: 5+ min instead of ~1 for 30 variants x 256 slices."""
    total = int(truth.sum()) + int(predicted.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(truth, predicted).sum()) / total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, nargs="+")
    parser.add_argument("--split", default=None)
    parser.add_argument("--masks", required=True)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from braintumor_tf.data.datasets import image_dataset
    from braintumor_tf.data.masks import remove_specks
    from braintumor_tf.evaluation.segmentation import at_size, segmentation_images
    from braintumor_tf.export.runtimes import load_runtime

    runtime = load_runtime(args.model)
    source, paths, _ = segmentation_images(args.data, args.masks, args.split)
    paths = [path for path in paths if path in source.mask_paths]   # slices with an outline
    reader = source.mask_reader("masks")
    scores = {(t, c): [] for t in THRESHOLDS for c in CLEANUPS}
    index = 0
    for batch in image_dataset(paths, runtime.image_size, runtime.channels, 32):
        probabilities = np.asarray(runtime.predict(batch.numpy()))[..., 0]
        for k, probability in enumerate(probabilities):
            truth = np.asarray(reader(paths[index + k])) > 0
            native = at_size(probability, truth.shape)
            for threshold in THRESHOLDS:
                binary = native > threshold
                for name, (fraction, largest) in CLEANUPS.items():
                    cleaned = remove_specks(binary, fraction, largest) > 0
                    scores[(threshold, name)].append(dice(truth, cleaned))
        index += len(probabilities)
        print(f"{index}/{len(paths)} images", flush=True)
    rows = [{"threshold": t, "cleanup": c, "mean_dice": float(np.mean(v)),
             "fraction_dice_below_0_1": float(np.mean(np.asarray(v) < 0.1)), "n": len(v)}
            for (t, c), v in scores.items()]
    rows.sort(key=lambda row: -row["mean_dice"])
    for row in rows[:10]:
        print(f"threshold {row['threshold']:.1f} {row['cleanup']:<10} mean Dice "
              f"{row['mean_dice']:.4f}, {row['fraction_dice_below_0_1']:.1%} below 0.1")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "split": args.split,
                                              "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
