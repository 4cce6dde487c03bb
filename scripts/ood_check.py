"""Does the classifier's out-of-distribution guard refuse what is not a brain MRI slice?

    python scripts/ood_check.py --model savedmodels/classifier/2 --run runs/release_classifier \
        --out docs/ood_check.json --figure docs/ood_scores.png

Scores the run's validation and test MRI slices (what must pass: the issue allows <= 5 %
flagged on validation) and non-MRI images made on the spot by braintumor_tf.data.non_mri
(blank frames, noise, photographs, charts, text, CT-like slices; >= 95 % must be flagged).
The model may be any guarded form (a .keras with ood_guard.npz beside it, a SavedModel or
serving base dir, a .tflite with its sidecar). The run directory is only read for its
split_manifest.csv; without it (a fresh machine) only the non-MRI part runs, and says so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--run", default=None, help="training run (split_manifest.csv)")
    parser.add_argument("--per-kind", type=int, default=200, help="non-MRI images per kind")
    parser.add_argument("--seed", type=int, default=1,
                        help="probe seed (the guard's layers were chosen with seed 0 probes)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--figure", default=None)
    args = parser.parse_args(argv)

    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.data.non_mri import KINDS, non_mri_images
    from braintumor_tf.evaluation.classification import predict_paths
    from braintumor_tf.export.runtimes import load_runtime
    from braintumor_tf.export.validation_data import manifest_rows

    runtime = load_runtime(args.model, class_names=CLASS_NAMES)
    if runtime.ood_threshold is None:
        raise SystemExit(f"error: {args.model} carries no out-of-distribution guard "
                         "(braintumor-tf calibrate --run RUN, then export again)")
    started = time.perf_counter()
    result = {"model": args.model, "threshold": runtime.ood_threshold, "probe_seed": args.seed,
              "mri": {}, "non_mri": {}}
    scores_by_set = {}
    manifest = Path(args.run) / "split_manifest.csv" if args.run else None
    if manifest is not None and manifest.is_file():
        for split in ("val", "test"):
            paths = [path for path, _ in manifest_rows(Path(args.run), split)]
            missing = [p for p in paths if not Path(p).is_file()]
            if missing:
                print(f"{split}: {len(missing)} of {len(paths)} images are not on this machine "
                      f"(e.g. {missing[0]}); skipped")
                continue
            _, scores = predict_paths(runtime, paths)
            scores_by_set[f"MRI {split}"] = scores
            result["mri"][split] = {"n": len(scores),
                                    "flagged": float(np.mean(scores > runtime.ood_threshold))}
    else:
        print("no run split given or found: the MRI part (<= 5 % of validation flagged) is "
              "skipped; pass --run with a run on ../shared/data")
    probes = non_mri_images(args.per_kind, 256, seed=args.seed)
    flagged_total = 0
    for kind in KINDS:
        pixels = np.stack([_resized(image, runtime.image_size) for image in probes[kind]])
        pixels = np.repeat(pixels[..., None], runtime.channels, axis=-1).astype(np.float32)
        _, scores = runtime.predict_with_scores(pixels)
        flagged = int(np.sum(scores > runtime.ood_threshold))
        flagged_total += flagged
        scores_by_set[kind] = scores
        result["non_mri"][kind] = {"n": len(scores), "flagged": flagged / len(scores)}
    count = args.per_kind * len(KINDS)
    result["non_mri_flagged"] = flagged_total / count
    result["seconds"] = round(time.perf_counter() - started, 1)
    val = result["mri"].get("val", {}).get("flagged")
    result["must"] = {"non_mri_flagged_at_least_0.95": result["non_mri_flagged"] >= 0.95,
                      "val_flagged_at_most_0.05": None if val is None else val <= 0.05}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.figure:
        _plot(scores_by_set, runtime.ood_threshold, args.figure)
    return 0


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    from braintumor_tf.data.decode import resize_image

    return resize_image(image[..., None], size)[..., 0]


def _plot(scores_by_set: dict, threshold: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    everything = np.concatenate([np.log10(np.maximum(s, 1e-3)) for s in scores_by_set.values()])
    bins = np.linspace(everything.min(), everything.max(), 60)
    for name, scores in scores_by_set.items():
        axis.hist(np.log10(np.maximum(scores, 1e-3)), bins=bins, histtype="step", linewidth=1.6,
                  label=f"{name} (n={len(scores)})", density=True)
    axis.axvline(np.log10(threshold), color="black", linestyle="--", label="threshold")
    axis.set_xlabel("log10 out-of-distribution score (squared Mahalanobis distance)")
    axis.set_ylabel("density")
    axis.set_title("MRI slices should sit left of the threshold, everything else right")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
