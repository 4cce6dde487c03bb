"""Test-time augmentation, built into the graph.

A tumour outline does not depend on which way the slice is mirrored or turned, and the UNet is
trained with flips and quarter turns. Averaging its masks over those views of one image removes
some of the view-dependent error. A classifier's class does not depend on them either: its
probabilities are averaged over the views (``mirror``, the left-right flip it was trained with,
is the one to use; views it never saw in training can hurt). The wrapper is an ordinary
functional model around the trained one (shared weights, registered layers), so the same
averaging is what ``evaluate`` scores and what the SavedModel and TFLite exports compute: nothing
to re-implement in a serving client. Cost: one forward pass per view (2 for ``mirror``, 4 for
``flips``, 8 for ``dihedral``).
"""

from __future__ import annotations

import keras
from keras import layers, ops

TTA_MODES = ("none", "mirror", "flips", "dihedral")
# (quarter turns, mirror) for each view. ``mirror``: identity and left-right; ``flips``: those,
# half turn (= both flips) and up-down; ``dihedral`` adds the four views that swap rows and
# columns.
_VIEWS = {
    "mirror": ((0, False), (0, True)),
    "flips": ((0, False), (0, True), (2, False), (2, True)),
    "dihedral": tuple((turns, mirror) for turns in range(4) for mirror in (False, True)),
}


def _turn(x, quarter_turns: int):
    """Counter-clockwise quarter turns of [N, H, W, C] images (H == W)."""
    for _ in range(quarter_turns % 4):
        x = ops.flip(ops.transpose(x, (0, 2, 1, 3)), axis=1)
    return x


@keras.saving.register_keras_serializable(package="braintumor_tf")
class SquareSymmetry(layers.Layer):
    """One symmetry of the square: ``quarter_turns`` counter-clockwise turns, then an optional
    left-right mirror; ``inverse=True`` undoes exactly that (mirror first, then turn back)."""

    def __init__(self, quarter_turns: int = 0, mirror: bool = False, inverse: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if int(quarter_turns) != quarter_turns or not 0 <= quarter_turns <= 3:
            raise ValueError(f"quarter_turns must be 0, 1, 2 or 3, got {quarter_turns!r}")
        self.quarter_turns = int(quarter_turns)
        self.mirror = bool(mirror)
        self.inverse = bool(inverse)

    def call(self, inputs):
        if inputs.shape[1] is not None and inputs.shape[1] != inputs.shape[2]:
            raise ValueError(f"SquareSymmetry needs square images, got shape {inputs.shape}")
        x = inputs
        if self.inverse:
            if self.mirror:
                x = ops.flip(x, axis=2)
            return _turn(x, 4 - self.quarter_turns)
        x = _turn(x, self.quarter_turns)
        return ops.flip(x, axis=2) if self.mirror else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "quarter_turns": self.quarter_turns,
                "mirror": self.mirror, "inverse": self.inverse}


def with_test_time_augmentation(model: keras.Model, mode: str = "flips") -> keras.Model:
    """``model`` itself for ``none``; otherwise a model that averages its outputs over the views
    (a segmenter's masks are turned back first; a classifier's probabilities need no undoing)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose from {TTA_MODES}")
    if mode == "none":
        return model
    input_shape = tuple(model.input_shape)
    if len(model.output_shape) not in (2, 4):
        raise ValueError(f"test-time augmentation is for classifiers (output [N, classes]) and "
                         f"segmenters (output [N, S, S, 1]); {model.name} outputs "
                         f"{model.output_shape}")
    per_image = len(model.output_shape) == 2
    if len(input_shape) != 4 or input_shape[1] is None or input_shape[1] != input_shape[2]:
        raise ValueError(f"test-time augmentation needs a fixed square input, got {input_shape}")
    inputs = keras.Input(shape=input_shape[1:], name="image")
    masks = []
    for index, (turns, mirror) in enumerate(_VIEWS[mode]):
        if turns == 0 and not mirror:
            masks.append(model(inputs))
            continue
        view = SquareSymmetry(turns, mirror, dtype="float32", name=f"view_{index}")(inputs)
        output = model(view)
        masks.append(output if per_image else SquareSymmetry(
            turns, mirror, inverse=True, dtype="float32", name=f"undo_view_{index}")(output))
    average = layers.Average(dtype="float32", name="tta_average")(masks)
    return keras.Model(inputs, average, name=f"{model.name}_tta_{mode}")
