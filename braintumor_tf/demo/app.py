"""A local page to try the models: drop images, see classes, Grad-CAM, masks and warnings.

Built on Flask (the page is one HTML file with plain JavaScript, no build step). Everything runs
in this process through ``braintumor_tf.api``, so the page shows exactly what ``bt.load(...)
.predict`` returns. Bound to 127.0.0.1 by default: it is a tool for one person, not a service.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import cv2
import numpy as np

from braintumor_tf.data.decode import DecodeError, decode_bytes
from braintumor_tf.inference.segmentation import cross_check_warning
from braintumor_tf.overlays import mask_overlay

PAGE = Path(__file__).with_name("page.html")
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


def _png_data_url(rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the picture")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode()


def _explainable(classifier) -> bool:
    """Grad-CAM for a .keras model, or an export with its .keras released beside it."""
    from braintumor_tf.inference.explain import explaining_runtime

    try:
        explaining_runtime(classifier.runtime)
    except ValueError:
        return False
    return True


def create_app(classifier=None, segmenter=None):
    """``classifier``/``segmenter``: models from ``braintumor_tf.api.load`` (either may be None)."""
    try:
        from flask import Flask, jsonify, request
    except ImportError as error:
        raise ImportError("the demo needs Flask: pip install 'braintumor_tf[demo]'") from error
    if classifier is None and segmenter is None:
        raise ValueError("the demo needs a classifier, a segmenter or both")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    explainable = classifier is not None and _explainable(classifier)

    @app.get("/")
    def page():
        return PAGE.read_text(), 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/models")
    def models():
        return jsonify({
            "classifier": None if classifier is None else str(classifier.runtime.path),
            "segmenter": None if segmenter is None else str(segmenter.runtime.path),
            "class_names": None if classifier is None else list(classifier.class_names),
            "guarded": classifier is not None and classifier.runtime.ood_threshold is not None,
        })

    @app.post("/predict")
    def predict():
        files = request.files.getlist("images")
        if not files:
            return jsonify({"error": "no images in the request (form field 'images')"}), 400
        return jsonify([_one(file.filename or "image", file.read()) for file in files])

    def _one(name: str, data: bytes) -> dict:
        started = time.perf_counter()
        result: dict = {"name": name, "error": None}
        try:
            image = decode_bytes(data, 3, None, name=name)  # RGB, DICOM included
        except (DecodeError, ValueError) as error:
            result["error"] = str(error)
            return result
        grey = image.astype(np.uint8)
        if classifier is not None:
            [record] = classifier.predict(image)
            result["classifier"] = {key: record[key] for key in
                                    ("class_name", "probabilities", "ood_score",
                                     "in_distribution")}
            if explainable:
                [picture] = classifier.explain(image)
                result["gradcam"] = _png_data_url(picture)
        if segmenter is not None:
            [record] = segmenter.predict(image)
            picture = mask_overlay(image, record["mask"])  # explain() would run the UNet again
            result["segmenter"] = {"tumour_area_pixels": record["tumour_area_pixels"],
                                   "tumour_fraction": record["tumour_fraction"]}
            result["mask_overlay"] = _png_data_url(picture)
            if "classifier" in result:
                result["segmenter"]["warning"] = cross_check_warning(
                    result["classifier"], record["tumour_area_pixels"])
        result["original"] = _png_data_url(grey)
        result["seconds"] = round(time.perf_counter() - started, 3)
        return result

    return app


def default_classifier() -> str:
    """The released classifier, found by name (export.released: $BRAINTUMOR_TF_MODELS, the user
    cache, ./savedmodels)."""
    from braintumor_tf.export.released import default_classifier as released

    return str(released())


def serve(classifier_path=None, segmenter_path=None, host: str = "127.0.0.1",
          port: int = 8080) -> None:
    from braintumor_tf.api import load
    from braintumor_tf.log import log

    threads = os.cpu_count() or 1  # one person's page: every core on their image
    classifier = load(classifier_path, num_threads=threads) if classifier_path else None
    segmenter = load(segmenter_path, num_threads=threads) if segmenter_path else None
    app = create_app(classifier, segmenter)
    log(f"demo on http://{host}:{port}/ (Ctrl+C to stop)")
    app.run(host=host, port=port, debug=False, threaded=False)
