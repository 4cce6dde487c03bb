"""Write docs/SERVING.md's signature tables from the committed SavedModels and their specs, so the
documentation says what the files hold (tests/test_released_models.py checks they agree).

Run:  python scripts/serving_tables.py            (rewrites the block between the markers)
"""

from __future__ import annotations

import sys
from pathlib import Path

START, END = "<!-- signatures:start -->", "<!-- signatures:end -->"
DTYPES = {"float32": "DT_FLOAT", "int64": "DT_INT64", "string": "DT_STRING", "bool": "DT_BOOL"}


def _shape(spec) -> str:
    if spec.shape.rank is None:
        return "unknown rank"
    return "(" + ", ".join("-1" if d is None else str(d) for d in spec.shape.as_list()) + ")"


def tables(root: Path = Path("savedmodels")) -> str:
    import tensorflow as tf

    from braintumor_tf.spec import read_spec

    lines = []
    for release in ("classifier", "segmenter"):
        for version in sorted((p for p in (root / release).glob("[0-9]*")
                               if (p / "saved_model.pb").is_file()), key=lambda p: int(p.name)):
            loaded = tf.saved_model.load(str(version))
            spec = read_spec(version)
            about = "" if spec is None else (
                f": {spec.task}, classes {', '.join(spec.class_names)}, {spec.image_size} px, "
                f"{spec.channels} channel(s), averaging {spec.averaging}, in-graph intensity "
                f"{spec.preprocessing.in_graph_intensity}"
                + ("" if spec.ood_threshold is None else
                   f", OOD guard (threshold {spec.ood_threshold:.3f}, temperature "
                   f"{spec.temperature:.3f})")
                + ("" if spec.threshold is None else f", mask threshold {spec.threshold}"))
            lines += [f"`savedmodels/{release}/{version.name}`{about}", "",
                      "| signature | input | dtype | shape | outputs |", "|---|---|---|---|---|"]
            for name in sorted(loaded.signatures):
                signature = loaded.signatures[name]
                [(input_name, input_spec)] = signature.structured_input_signature[1].items()
                outputs = "; ".join(
                    f"`{key}` `{DTYPES.get(value.dtype.name, value.dtype.name)}` `{_shape(value)}`"
                    for key, value in sorted(signature.structured_outputs.items()))
                lines.append(f"| `{name}` | `{input_name}` | "
                             f"`{DTYPES.get(input_spec.dtype.name, input_spec.dtype.name)}` | "
                             f"`{_shape(input_spec)}` | {outputs} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def rewrite(document: Path = Path("docs/SERVING.md")) -> bool:
    text = document.read_text()
    if START not in text or END not in text:
        sys.exit(f"{document} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{tables()}{END}{tail}"
    changed = new != text
    document.write_text(new)
    return changed


if __name__ == "__main__":
    print("rewritten" if rewrite() else "already current")
