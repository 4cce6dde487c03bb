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


class _RegisterWhenKerasLoads:
    """A meta-path finder that lets Keras import normally, then registers our custom objects."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        _sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _register_custom_objects()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in _sys.modules:
    _register_custom_objects()
elif not any(isinstance(finder, _RegisterWhenKerasLoads) for finder in _sys.meta_path):
    _sys.meta_path.insert(0, _RegisterWhenKerasLoads())


def __getattr__(name):
    if name in ("load", "Model"):
        from braintumor_tf import api

        return getattr(api, name)
    raise AttributeError(f"module 'braintumor_tf' has no attribute {name!r}")
