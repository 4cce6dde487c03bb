"""Every custom Keras object of the package, registered in one place.

Importing a module registers its classes (``register_keras_serializable``); ``load_model`` imports
all of them first, so any ``.keras`` file the package wrote loads from any command.
"""

from __future__ import annotations

import os


def register_all() -> None:
    import braintumor_tf.models.guard  # noqa: F401  DistributionGuard
    import braintumor_tf.models.layers  # noqa: F401  GreyToRGB, CaffePreprocessing
    import braintumor_tf.models.tta  # noqa: F401  SquareSymmetry
    import braintumor_tf.training.losses  # noqa: F401  Dice/BCE losses and metrics
    import braintumor_tf.training.optimizers  # noqa: F401  ADOPT
    import braintumor_tf.training.schedules  # noqa: F401  WarmupCosineFloor


def load_model(path: str | os.PathLike, compile: bool = False):
    """``keras.models.load_model`` with the package's custom objects registered."""
    import keras

    register_all()
    return keras.models.load_model(path, compile=compile)
