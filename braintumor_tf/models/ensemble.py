"""The fold ensemble: the K cross-validation models in one graph, their outputs averaged.

Every patient then trains the release (each fold's model saw the other folds), and its score is
the one cross-validation measured. The members are copied into one flat functional model (layer
names prefixed ``fold<k>_``) instead of nested as sub-models, so every layer stays reachable by
name: the OOD guard reads its features there, and exports see one ordinary graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers


def _check_members(members: Sequence[keras.Model]) -> None:
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 models, got {len(members)}")
    shapes = {(tuple(m.input_shape[1:]), tuple(m.output_shape[1:])) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"the ensemble's models differ in input or output shape: {sorted(shapes)}")
    if isinstance(members[0].output_shape, dict) or isinstance(members[0].output, list | tuple):
        raise ValueError("ensemble members must have one output (the plain trained model, "
                         "without an OOD guard)")


def fold_ensemble(members: Sequence[keras.Model], name: str = "fold_ensemble",
                  weights: Sequence[float] | None = None) -> keras.Model:
    """A functional model whose output is the mean of the members' outputs (probabilities for
    a classifier, tumour probability maps for a segmenter), in float32. ``weights``: a weighted
    mean instead (normalised to sum 1), e.g. two recipes mixed in the share chosen out of fold."""
    _check_members(members)
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"one non-negative weight per member needed (some positive), got "
                             f"{weights!r} for {len(members)} members")
        weights = [w / sum(weights) for w in weights]
    inputs = keras.Input(shape=members[0].input_shape[1:], name="pixels", dtype="float32")
    outputs = []
    for index, member in enumerate(members):
        prefix = f"fold{index}_"

        def renamed(layer, prefix=prefix):
            config = layer.get_config()
            config["name"] = prefix + layer.name
            return layer.__class__.from_config(config)

        copy = keras.models.clone_model(member, input_tensors=inputs, clone_function=renamed)
        copy.set_weights(member.get_weights())
        outputs.append(copy.output)
    if weights is None:
        mean = layers.Average(dtype="float32", name="ensemble_mean")(outputs)
    else:
        scaled = [layers.Rescaling(w, dtype="float32", name=f"fold{index}_share")(output)
                  for index, (w, output) in enumerate(zip(weights, outputs, strict=True))]
        mean = layers.Add(dtype="float32", name="ensemble_mean")(scaled)
    return keras.Model(inputs, mean, name=name)
