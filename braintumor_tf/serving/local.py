"""``braintumor-tf serve-local``: TF Serving's REST predict API answered from SavedModels, so the
curl and ``predict --server`` examples of docs/SERVING.md can be tried without Docker.

A development stand-in, not a replacement for TF Serving: one process, no batching, no model
version policy, no gRPC, bound to 127.0.0.1 unless told otherwise. It follows the documented
row format (https://www.tensorflow.org/tfx/serving/api_rest): ``POST
/v1/models/NAME[/versions/N]:predict`` with ``{"instances": [{"b64": ...}, ...]}`` and
``GET /v1/models/NAME`` for the status.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # TF Serving's default gRPC limit is 4 MB; REST allows more
_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict")
_STATUS = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?")


class _Handler(BaseHTTPRequestHandler):
    models: dict = {}  # name -> (version, loaded SavedModel)
    requests: list = []  # every request body, for tests
    server_version = "braintumor-tf-serve-local"

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _model(self, name: str, version: str | None):
        if name not in self.models or (version and int(version) != self.models[name][0]):
            label = f"Specific({name}, {version})" if version else f"Latest({name})"
            return None, (404, {"error": f"Servable not found for request: {label}"})
        return self.models[name][1], None

    def do_GET(self):
        match = _STATUS.fullmatch(self.path)
        if not match:
            return self._reply(404, {"error": f"Malformed request: GET {self.path[:200]}"})
        model, failure = self._model(*match.groups())
        if failure:
            return self._reply(*failure)
        version = self.models[match.group(1)][0]
        return self._reply(200, {"model_version_status": [
            {"version": str(version), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}]})

    def do_POST(self):
        import tensorflow as tf

        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            return self._reply(413, {"error": f"request larger than {MAX_REQUEST_BYTES} bytes"})
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as error:
            return self._reply(400, {"error": f"JSON Parse error: {error}"})
        type(self).requests.append(body)
        match = _PREDICT.fullmatch(self.path)
        if not match:
            return self._reply(404, {"error": f"Malformed request: POST {self.path[:200]}"})
        model, failure = self._model(*match.groups())
        if failure:
            return self._reply(*failure)
        try:
            signature = model.signatures[body.get("signature_name", "serving_default")]
            # One named input: each instance is the value itself, binary as {"b64": ...}.
            images = [base64.b64decode(item["b64"], validate=True) for item in body["instances"]]
            outputs = signature(images=tf.constant(images))
        except (KeyError, TypeError, AttributeError, binascii.Error, tf.errors.OpError) as error:
            return self._reply(400, {"error": str(error).splitlines()[0][:500]})
        columns = {key: value.numpy().tolist() for key, value in outputs.items()}
        rows = [{key: (column[i].decode() if isinstance(column[i], bytes) else column[i])
                 for key, column in columns.items()} for i in range(len(images))]
        return self._reply(200, {"predictions": rows})


def load_models(named_paths: dict[str, str | Path]) -> dict:
    """{name: (version, loaded SavedModel)} from serving bases (newest version) or versions."""
    import tensorflow as tf

    models = {}
    for name, path in named_paths.items():
        path = Path(path)
        if (path / "saved_model.pb").is_file():
            version_dir = path
        else:
            versions = [p for p in path.iterdir() if p.name.isdigit()
                        and (p / "saved_model.pb").is_file()] if path.is_dir() else []
            if not versions:
                raise FileNotFoundError(f"{name}: no SavedModel version in {path}")
            version_dir = max(versions, key=lambda p: int(p.name))
        version = int(version_dir.name) if version_dir.name.isdigit() else 1
        models[name] = (version, tf.saved_model.load(str(version_dir)))
    return models


@contextlib.contextmanager
def serving(models: dict, host: str = "127.0.0.1", port: int = 0):
    """Serve ``{name: (version, loaded SavedModel)}`` in a thread; yields the base URL."""
    _Handler.models = models
    _Handler.requests = []
    server = ThreadingHTTPServer((host, port), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def requests_seen() -> list:
    return _Handler.requests


def serve_forever(named_paths: dict[str, str | Path], host: str = "127.0.0.1",
                  port: int = 8501) -> None:
    from braintumor_tf.log import log

    models = load_models(named_paths)
    _Handler.models = models
    server = ThreadingHTTPServer((host, port), _Handler)
    for name, (version, _) in models.items():
        log(f"{name} version {version}: POST http://{host}:{port}/v1/models/{name}:predict")
    log("development stand-in for TF Serving's REST API (not for production); Ctrl+C to stop")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
