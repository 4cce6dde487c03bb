"""Grad-CAM for the functional classifier.

The gradient model is built from ``model.inputs`` to an inner layer's output and the model's
own output tensor. Rebuilding the head from a fresh ``keras.Input``, or starting from a nested
sub-model's input, is what raises the "graph disconnected" error people hit.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def last_conv_layer_name(model: keras.Model) -> str:
    """The last layer with a 4D output before the pooling: the finest map that still has space."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        output = getattr(layer, "output", None)
        if output is not None and len(output.shape) == 4:
            return layer.name
    raise ValueError(f"model {model.name} has no layer with a 4D [N, H, W, C] output")


def _score_tensor(model: keras.Model):
    """Logits when the softmax is its own layer, because softmax outputs saturate gradients."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Activation) and "softmax" in str(last.activation):
        return last.input, False
    return model.outputs[0], True


class GradCAM:
    def __init__(self, model: keras.Model, layer_name: str | None = None):
        if not isinstance(model, keras.Model) or len(model.inputs) != 1:
            raise ValueError("Grad-CAM needs a single-input functional Keras model")
        self.model = model
        self.layer_name = layer_name or last_conv_layer_name(model)
        features = model.get_layer(self.layer_name).output
        score, self._scores_are_probabilities = _score_tensor(model)
        self._grad_model = keras.Model(model.inputs[0], [features, score, model.outputs[0]])

    def heatmaps(self, pixels: np.ndarray, class_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps [N, H, W] in 0..1 at the input's size, and the probabilities [N, K].

        ``class_ids`` defaults to each image's predicted class.
        """
        pixels = tf.convert_to_tensor(np.asarray(pixels, np.float32))
        with tf.GradientTape() as tape:
            features, scores, probabilities = self._grad_model(pixels, training=False)
            # The gradient is taken w.r.t. the layer's own tensor: a float32 cast of a mixed-
            # precision map would be a new tensor the scores do not depend on (gradient None).
            tape.watch(features)
            scores = tf.cast(scores, tf.float32)
            if self._scores_are_probabilities:
                scores = tf.math.log(scores + 1e-9)
            if class_ids is None:
                class_ids = tf.argmax(probabilities, axis=-1)
            chosen = tf.gather(scores, tf.cast(class_ids, tf.int32), axis=1, batch_dims=1)
        gradients = tf.cast(tape.gradient(chosen, features), tf.float32)
        features = tf.cast(features, tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cams = tf.image.resize(cams, tf.shape(pixels)[1:3], method="bilinear")[..., 0].numpy()
        low = cams.min(axis=(1, 2), keepdims=True)
        span = cams.max(axis=(1, 2), keepdims=True) - low
        cams = np.where(span > 0, (cams - low) / np.maximum(span, 1e-12), 0.0)
        return cams.astype(np.float32), np.asarray(probabilities, np.float32)

