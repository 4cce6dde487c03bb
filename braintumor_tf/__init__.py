"""Brain MRI tumour classification and segmentation: from a folder of slices to served models.

    import braintumor_tf as bt
    model = bt.load("savedmodels/classifier/2")      # .keras, SavedModel, serving base, .tflite
    records = model.predict(["scan1.png", array])   # one dict per input

Importing the package stays light (no TensorFlow): ``load`` and ``Model`` are imported on first
use, and the package's custom Keras objects are registered as soon as Keras is imported, so plain
``keras.models.load_model`` opens the ``.keras`` files this package writes.
"""

import os as _os
import sys as _sys

# OpenCV's own decoded-size guard (read once, when cv2 is first imported) at the package's pixel
# limit, for formats whose header data.image_header does not parse.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS",
                       _os.environ.get("BRAINTUMOR_TF_MAX_IMAGE_PIXELS") or "50000000")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("braintumor_tf")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


__version__ = _version()


def _register_custom_objects() -> None:
    from braintumor_tf.custom_objects import register_all

    register_all()


def _load_then_register(execute) -> None:
    execute()
    _register_custom_objects()


if "keras" in _sys.modules:
    _register_custom_objects()
else:
    from braintumor_tf.import_hooks import wrap_first_import as _wrap_first_import

    _wrap_first_import("keras", _load_then_register)


def __getattr__(name):
    if name in ("load", "Model"):
        from braintumor_tf import api

        return getattr(api, name)
    raise AttributeError(f"module 'braintumor_tf' has no attribute {name!r}")
