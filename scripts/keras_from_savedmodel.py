"""Rebuild a fold-ensemble classifier's ``.keras`` file from its exported SavedModel.

Why: release 3's run directory (five fold models, the ensemble's ``model.keras`` and its guard)
was lost between sessions after the SavedModel had been exported; the ``.keras`` file is what
Grad-CAM (``--explain``), ``bt.load`` and ``keras.models.load_model`` read. The SavedModel's
variables are a checkpoint of the same Keras objects, so the architecture is rebuilt from the
config, every variable is restored by its object path, and the guard's per-layer scales (layer
config, not weights) are read from the graph's constants. The result must answer like the
SavedModel on real images, or nothing is written.

    python scripts/keras_from_savedmodel.py --savedmodel savedmodels/classifier/3 \
        --config classification_cv --folds 5 --check ../shared/data/classification/nickparvar \
        --out savedmodels/classifier/classifier.keras
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

GUARD_SCOPE = "distribution_guard"


def guard_scales(savedmodel: Path, count: int) -> list[float]:
    """The divisors ``truediv..truediv_{count-1}`` inside the guard layer's traced call."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import tensor_util

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((savedmodel / "saved_model.pb").read_bytes())
    found: dict[int, float] = {}
    for function in proto.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            scope, _, tail = node.name.rpartition("/truediv")
            if node.op != "Const" or GUARD_SCOPE not in scope or not tail.endswith("/y"):
                continue
            index = int(tail[1:-2]) if tail.startswith("_") else 0
            found[index] = float(tensor_util.MakeNdarray(node.attr["value"].tensor))
    missing = [i for i in range(count) if i not in found]
    if missing:
        raise SystemExit(f"{savedmodel}: guard scale constants {missing} not found in the graph")
    return [found[i] for i in range(count)]


def check_pixels(folder: Path, size: int, count: int) -> np.ndarray:
    from braintumor_tf.data.discover import discover_images
    from braintumor_tf.export.validation_data import load_pixels

    rows = [(str(record.path), record.label) for record in discover_images(folder)]
    if not rows:
        raise SystemExit(f"no images under {folder}")
    pixels, _ = load_pixels(rows, size, 1, count, seed=0)
    return pixels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--savedmodel", type=Path, required=True)
    parser.add_argument("--config", default="classification_cv")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--check", type=Path, required=True, help="a folder of real slices")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from braintumor_tf.config import load_config
    from braintumor_tf.evaluation.guard_fit import embed_guard
    from braintumor_tf.models.ensemble import fold_ensemble
    from braintumor_tf.models.guard import Guard, feature_layer_names, features_and_probabilities, with_guard
    from braintumor_tf.spec import read_spec, write_keras_spec
    from braintumor_tf.tasks import get_task

    spec = read_spec(args.savedmodel)
    if spec is None or spec.task != "classification":
        raise SystemExit(f"{args.savedmodel}: not a classifier with a spec")
    config = load_config(args.config)
    task = get_task(config.task)
    members = [task.deployable(config, task.build_model(config)) for _ in range(args.folds)]
    ensemble = fold_ensemble(members, name=f"{members[0].name}_ensemble{args.folds}")
    layers = feature_layer_names(ensemble)
    dims = [int(t.shape[-1]) for t in features_and_probabilities(ensemble, layers).outputs[:-1]]
    classes = len(spec.class_names)
    placeholder = Guard(layers, [np.zeros((classes, d), np.float32) for d in dims],
                        [np.eye(d, dtype=np.float32) for d in dims],
                        guard_scales(args.savedmodel, len(layers)), spec.ood_threshold,
                        spec.temperature, class_weights=spec.class_weights)
    guarded = with_guard(ensemble, placeholder, tta=spec.averaging)
    status = tf.train.Checkpoint(model=guarded).read(
        str(args.savedmodel / "variables" / "variables"))
    status.expect_partial()
    # The guard's tracked lists keep another path than in the exported object: read by name.
    reader = tf.train.load_checkpoint(str(args.savedmodel / "variables" / "variables"))
    keys = [key for key in reader.get_variable_to_shape_map()
            if "/class_means/" in key or "/precisions/" in key]
    if len(keys) != 2 * len(layers):
        raise SystemExit(f"{args.savedmodel}: expected {2 * len(layers)} guard variables, "
                         f"found {sorted(keys)}")

    def stored(kind: str, index: int) -> np.ndarray:
        [key] = [key for key in keys if f"/{kind}/{index}/" in key]
        return reader.get_tensor(key)

    weights = [stored(kind, index) for index in range(len(layers))
               for kind in ("class_means", "precisions")]
    guard_layer = guarded.get_layer("distribution_guard")
    guard_layer.set_weights(weights)
    guard = Guard(layers, weights[0::2], weights[1::2], guard_layer.scales, spec.ood_threshold,
                  spec.temperature, class_weights=spec.class_weights)

    pixels = check_pixels(args.check, spec.image_size, args.images)
    served = tf.saved_model.load(str(args.savedmodel)).signatures["predict_pixels"]
    reference = served(tf.constant(pixels))
    rebuilt = guarded.predict(pixels, verbose=0)
    gaps = {name: float(np.max(np.abs(reference[name].numpy() - rebuilt[name])))
            for name in ("probabilities", "ood_score")}
    same_class = float(np.mean(reference["probabilities"].numpy().argmax(1)
                               == rebuilt["probabilities"].argmax(1)))
    print(json.dumps({"images": len(pixels), "largest_difference": gaps,
                      "same_class": same_class}, indent=2))
    if same_class < 1.0 or gaps["probabilities"] > 1e-3 or gaps["ood_score"] > 1e-2:
        print("the rebuilt model does not answer like the SavedModel: nothing written",
              file=sys.stderr)
        return 1

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as scratch:
        temporary = Path(scratch) / args.out.name
        ensemble.save(temporary)
        write_keras_spec(temporary, spec)
        guard_file = guard.save(Path(scratch) / "ood_guard.npz")
        embed_guard(temporary, ensemble, guard_file.read_bytes(), guard.threshold,
                    guard.temperature, guard.class_weights)
        temporary.replace(args.out)
        guard_file.replace(args.out.with_name("ood_guard.npz"))
    print(f"wrote {args.out} and {args.out.with_name('ood_guard.npz')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
