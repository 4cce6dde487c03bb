"""Store model specs (braintumor_tf/spec.py) in a release folder written before specs existed.

Every SavedModel version's assets.extra JSON and every LiteRT sidecar gets a ``spec`` read off
the metadata it already records; the ``.keras`` file gets the spec of the newest export made
from it (its averaging, guard and temperature) with ``ood_guard.npz`` embedded, so it answers
as the served model does wherever it is copied. Weights and graphs are not touched.

Run:  python scripts/store_model_specs.py savedmodels/classifier savedmodels/segmenter
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from braintumor_tf.spec import (
    SAVEDMODEL_SPEC_FILE,
    read_spec,
    spec_from_export_metadata,
    write_keras_spec,
)


def _with_spec(json_file: Path, intensity: str) -> dict | None:
    meta = json.loads(json_file.read_text())
    if "image_size" not in meta:  # a parity report or another side file
        return None
    if "spec" not in meta:
        meta["spec"] = spec_from_export_metadata(meta, intensity).to_dict()
        json_file.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{json_file}: spec stored")
    return meta


def store(folder: Path) -> None:
    from braintumor_tf.custom_objects import load_model
    from braintumor_tf.models.layers import graph_intensity

    keras_files = sorted(folder.glob("*.keras"))
    intensity = graph_intensity(load_model(keras_files[0])) if keras_files else "none"
    newest = None
    for version in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        meta = _with_spec(version / SAVEDMODEL_SPEC_FILE, intensity)
        newest = meta if meta is not None else newest
    for sidecar in sorted(folder.glob("*.json")):
        if sidecar.with_suffix(".tflite").is_file():
            _with_spec(sidecar, intensity)
    for keras_file in keras_files:
        if read_spec(keras_file) is not None or newest is None:
            continue
        guard_file = keras_file.with_name("ood_guard.npz")
        spec = read_spec(folder / str(max(int(p.name) for p in folder.iterdir() if p.name.isdigit())))
        write_keras_spec(keras_file, spec, guard=guard_file.read_bytes() if guard_file.is_file() else None)
        print(f"{keras_file}: spec stored ({spec.averaging} averaging"
              f"{', guard embedded' if guard_file.is_file() else ''})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python scripts/store_model_specs.py RELEASE_FOLDER [...]")
    for argument in sys.argv[1:]:
        store(Path(argument))
