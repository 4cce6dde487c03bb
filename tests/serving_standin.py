"""A loopback HTTP server that answers TF Serving's documented REST predict contract
(https://www.tensorflow.org/tfx/serving/api_rest, row format) from an exported SavedModel.

The real model server cannot be installed here; this reproduces its request/response JSON so the
REST client is tested end to end. Shared by the classifier and segmenter deployment tests.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tensorflow as tf


class StandIn(BaseHTTPRequestHandler):
    models: dict = {}
    requests: list = []

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/\d+)?:predict", self.path)
        if not match or match.group(1) not in self.models:
            name = match.group(1) if match else self.path
            return self._reply(404, {"error": f"Servable not found for request: Latest({name})"})
        signature = self.models[match.group(1)].signatures[body.get("signature_name",
                                                                    "serving_default")]
        try:
            # One named input: each instance is the value itself, binary as {"b64": ...}.
            images = [base64.b64decode(item["b64"], validate=True) for item in body["instances"]]
            outputs = signature(images=tf.constant(images))
        except (KeyError, TypeError, binascii.Error, tf.errors.OpError) as error:
            return self._reply(400, {"error": str(error).splitlines()[0]})
        columns = {k: v.numpy().tolist() for k, v in outputs.items()}
        rows = [{k: (col[i].decode() if isinstance(col[i], bytes) else col[i])
                 for k, col in columns.items()} for i in range(len(images))]
        return self._reply(200, {"predictions": rows})


@contextlib.contextmanager
def serving_stand_in(models: dict):
    """Serve ``{name: loaded SavedModel}``; yields the base URL."""
    StandIn.models = models
    StandIn.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
