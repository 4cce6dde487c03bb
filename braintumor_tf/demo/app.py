"""A local page to try the models: drop images, see classes, Grad-CAM, masks and warnings.

Built on Flask (the page is one HTML file with plain JavaScript, no build step). Everything runs
in this process through ``braintumor_tf.api``, so the page shows exactly what ``bt.load(...)
.predict`` returns. Bound to 127.0.0.1 by default: it is a tool for one person, not a service.

Served by waitress (a production WSGI server, pure Python): connections are read by its event
loop, so a client that sends half its headers, or drips its body, holds one connection and never
the server; requests run on a few threads; an idle connection is closed after
``CHANNEL_TIMEOUT_SECONDS``. A request carries at most ``MAX_FILES_PER_REQUEST`` images (the page
sends larger drops in several requests), so one request cannot keep a thread for minutes.
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
MAX_FILES_PER_REQUEST = 32
SERVER_THREADS = 4
CHANNEL_TIMEOUT_SECONDS = 30  # a connection silent this long (half its headers sent) is closed
MAX_HEADER_BYTES = 64 * 1024


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
    # Werkzeug stops parsing a form with more parts than this (413, answered as JSON below), so a
    # request of 10,000 empty parts is not parsed whole before it is refused.
    app.config["MAX_FORM_PARTS"] = MAX_FILES_PER_REQUEST + 8
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
            "max_files_per_request": MAX_FILES_PER_REQUEST,
        })

    @app.errorhandler(413)
    def too_large(_error):
        return jsonify({"error": f"request too large: at most {MAX_FILES_PER_REQUEST} images "
                                 f"and {MAX_UPLOAD_BYTES // 2**20} MB per request"}), 413

    @app.post("/predict")
    def predict():
        files = request.files.getlist("images")
        if not files:
            return jsonify({"error": "no images in the request (form field 'images')"}), 400
        if len(files) > MAX_FILES_PER_REQUEST:
            return jsonify({"error": f"{len(files)} images in one request; at most "
                                     f"{MAX_FILES_PER_REQUEST} are accepted: send the others "
                                     "in further requests"}), 413
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
    server = create_server(create_app(classifier, segmenter), host, port)
    log(f"demo on http://{host}:{port}/ (Ctrl+C to stop)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def create_server(app, host: str = "127.0.0.1", port: int = 8080, **adjustments):
    """The waitress server ``serve`` runs (port 0: a free one, ``server.effective_port``)."""
    try:
        from waitress import create_server as waitress_server
    except ImportError as error:
        raise ImportError("the demo needs waitress: pip install 'braintumor_tf[demo]'") from error
    settings = dict(threads=SERVER_THREADS, channel_timeout=CHANNEL_TIMEOUT_SECONDS,
                    cleanup_interval=min(10, CHANNEL_TIMEOUT_SECONDS),
                    max_request_header_size=MAX_HEADER_BYTES,
                    max_request_body_size=MAX_UPLOAD_BYTES + 1024 * 1024,
                    connection_limit=64, ident="braintumor-tf demo")
    settings.update(adjustments)
    return waitress_server(app, host=host, port=port, **settings)


def stop_server(server, thread=None, timeout: float = 10) -> None:
    """Stop a server whose ``run()`` serves in another thread (tests, scripts): its connections
    are closed from its own event loop (closing them from here would leave the loop selecting on
    closed descriptors), then its request threads end."""
    from waitress import wasyncore

    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    if thread is not None:
        thread.join(timeout)
    server.task_dispatcher.shutdown()
