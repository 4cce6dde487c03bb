"""The REST client against misbehaving servers on 127.0.0.1: every failure is one line, per
request where other requests can still work, for the whole run where none can."""

from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from support import write_png

from braintumor_tf.cli import main
from braintumor_tf.export import rest_client


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """The model name in the URL says how to misbehave."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        mode = self.path.split("/v1/models/")[1].split(":")[0]
        if mode == "drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)
        elif mode == "reset":
            linger_zero = struct.pack("ii", 1, 0)  # close with a reset, not a clean end
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
            self.connection.close()
        elif mode == "missing":
            self._answer(404, {"error": "Servable not found for request: Latest(missing)"})
        else:
            bodies = {"html": b"<html><body>Gateway says hi</body></html>",
                      "badjson": b'{"predictions": [',
                      "list": b"[1, 2, 3]",
                      "nan": b'{"predictions": [{"probabilities": [NaN, 0.5, 0.25, 0.25]}]}',
                      "good": json.dumps({"predictions": [{"probabilities": [0.1, 0.2, 0.6, 0.1],
                                                           "class_id": 2,
                                                           "class_name": "notumor"}]}).encode()}
            self._answer(200, bodies[mode])

    def _answer(self, status, body):
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_dripping_server_is_cut_off_at_the_deadline(server):
    start = time.monotonic()
    with pytest.raises(rest_client.ServingError, match=r"no complete answer .* within 1.5 s"):
        rest_client.predict_encoded(server, "drip", [b"x"], timeout=1.5)
    assert time.monotonic() - start < 4


@pytest.mark.parametrize("mode, message", [
    ("html", "not a JSON object: '<html>"),
    ("badjson", "not a JSON object"),
    ("list", r"not a JSON object: '\[1, 2, 3\]'"),
    ("nan", "not finite numbers"),
    ("reset", "the connection to .* broke"),
])
def test_bad_answers_are_errors_of_that_request_only(server, mode, message, tmp_path):
    with pytest.raises(rest_client.ServingError, match=message) as caught:
        rest_client.predict_encoded(server, mode, [b"x"], timeout=10)
    assert not isinstance(caught.value, rest_client.ServerUnavailable)
    paths = [write_png(tmp_path / f"{i}.png", np.zeros((8, 8), np.uint8)) for i in range(2)]
    results = rest_client.predict_files(server, mode, paths, timeout=10)
    assert len(results) == 2 and all("error" in result for result in results)


def test_good_answers_still_parse(server, tmp_path):
    [result] = rest_client.predict_encoded(server, "good", [b"x"])
    assert result["class_name"] == "notumor" and result["class_id"] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_server_or_a_wrong_model_name_is_one_line_and_a_failure(server, tmp_path):
    image = write_png(tmp_path / "scan.png", np.zeros((8, 8), np.uint8))
    runner = CliRunner()
    for url, name, message in [(f"http://127.0.0.1:{_free_port()}", "good", "cannot reach"),
                               (server, "missing", "HTTP 404: Servable not found.*model-name")]:
        with pytest.raises(rest_client.ServerUnavailable, match=message):
            rest_client.predict_files(url, name, [image] * 3)
        result = runner.invoke(main, ["predict", "--server", url, "--model-name", name,
                                      str(image), str(image)])
        assert result.exit_code == 1, result.output
        assert result.output.count("Error:") == 1 and "Traceback" not in result.output
        assert result.output.count("\n") <= 2, result.output
