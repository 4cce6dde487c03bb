"""The REST client against misbehaving servers on 127.0.0.1: every failure is one line, per
request where other requests can still work, for the whole run where none can."""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from support import write_png

from braintumor_tf.cli import main
from braintumor_tf.export import rest_client

GOOD_ROW = {"probabilities": [0.1, 0.2, 0.6, 0.1], "class_id": 2, "class_name": "notumor"}
# Answers no real classifier gives: each must become that image's error, not a crash.
ANSWERS = {
    "good_rows": GOOD_ROW,
    "class99": {"probabilities": [0.1, 0.2, 0.6, 0.1], "class_id": 99, "class_name": "x"},
    "class_negative_id": {"probabilities": [0.1, 0.2, 0.6, 0.1], "class_id": -1},
    "class_string_id": {"probabilities": [0.1, 0.2, 0.6, 0.1], "class_id": "2"},
    "negative": {"probabilities": [-0.5, 0.5, 0.5, 0.5], "class_id": 1},
    "huge": {"probabilities": [1e30, 0.0, 0.0, 0.0], "class_id": 0},
    "nan_row": {"probabilities": [float("nan"), 0.5, 0.25, 0.25]},
    "not_summing": {"probabilities": [0.9, 0.9, 0.9, 0.9]},
    "three": {"probabilities": [0.2, 0.2, 0.6], "class_id": 2},
    "one": {"probabilities": [1.0], "class_id": 0},
    "ragged": {"probabilities": [[0.5], 0.5]},
    "strings": {"probabilities": ["a", "b"]},
    "bad_ood": {"probabilities": [0.1, 0.2, 0.6, 0.1], "ood_score": "far", "in_distribution": 1},
    "mask_values": {"mask": [[[7]]], "mask_probability": [[[0.5]]]},
    "mask_shapes": {"mask": [[[1], [0]]], "mask_probability": [[[0.5]]]},
    "mask_probability": {"mask": [[[1]]], "mask_probability": [[[1e30]]]},
}


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """The model name in the URL says how to misbehave."""

    def log_message(self, *args):
        pass

    paths: list = []  # every request's path, as sent
    received: list = []  # every instance's bytes, as sent

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).paths.append(self.path)
        images = [base64.b64decode(item["b64"]) for item in body["instances"]]
        type(self).received.extend(images)
        mode = self.path.split("/v1/models/")[1].split(":")[0]
        if mode in ANSWERS:  # one prediction per image; "bad" in an image's bytes: the odd one
            rows = [ANSWERS[mode] if b"bad" in image else GOOD_ROW for image in images]
            self._answer(200, {"predictions": rows})
        elif mode == "hugelength":  # announces 2 GB, then sends nothing
            self.send_response(200)
            self.send_header("Content-Length", str(2 * 1024 ** 3))
            self.end_headers()
            self.wfile.flush()
            time.sleep(5)
        elif mode == "chunked":  # no length, 2 MB of a valid-looking answer
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b" " * 65536
            for _ in range(32):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif mode == "drip":
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
        elif mode == "missing" or mode.startswith("missing%"):
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


def _jpeg_like(path, text: bytes):
    """Bytes that start like a JPEG: sent as they are, so the stub sees the marker."""
    path.write_bytes(b"\xff\xd8\xff" + text)
    return path


@pytest.mark.parametrize("mode", sorted(set(ANSWERS) - {"good_rows"}))
def test_an_impossible_answer_is_that_image_error_and_the_batch_goes_on(server, mode, tmp_path):
    paths = [_jpeg_like(tmp_path / f"{name}.jpg", name.encode())
             for name in ("first", "bad", "third", "fourth")]
    results = rest_client.predict_files(server, mode, paths, batch_size=3, timeout=10)
    assert "error" in results[1] and "unexpected" in results[1]["error"], results[1]
    assert [r.get("class_id") for r in results[:1] + results[2:]] == [2, 2, 2], results
    from braintumor_tf.inference.classification import records_from_server

    records = records_from_server([str(p) for p in paths], results)
    assert records[1]["error"] and records[1]["class_name"] is None
    assert [r["class_name"] for r in records if not r["error"]] == ["notumor"] * 3


def test_another_number_of_classes_than_the_first_answer_is_an_error(server, tmp_path):
    paths = [_jpeg_like(tmp_path / f"{name}.jpg", name.encode()) for name in ("a", "bad", "c")]
    results = rest_client.predict_files(server, "three", paths, timeout=10)
    assert "3 classes" in results[1]["error"] and "4" in results[1]["error"]
    assert "error" not in results[0] and "error" not in results[2]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org", "http://",
                                 "gopher://127.0.0.1:70", "http://127.0.0.1:notaport"])
def test_a_server_that_is_not_an_http_url_is_one_line(url, tmp_path):
    image = write_png(tmp_path / "scan.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(rest_client.ServerUnavailable, match="--server"):
        rest_client.predict_files(url, "m", [image])
    result = CliRunner().invoke(main, ["predict", "--server", url, "--model-name", "m",
                                       str(image)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.count("Error:") == 1 and result.output.count("\n") <= 2, result.output
    assert not isinstance(result.exception, AttributeError)


def test_the_model_name_is_escaped_in_the_url(server, tmp_path):
    Misbehaving.paths.clear()
    with pytest.raises(rest_client.ServerUnavailable):  # the stub does not serve it: 404
        rest_client.predict_encoded(server, "missing/../x?y#z :1", [b"x"], timeout=10)
    assert Misbehaving.paths[-1] == "/v1/models/missing%2F..%2Fx%3Fy%23z%20%3A1:predict"
    assert rest_client.predict_url("host:8501", "a/b", 3) == \
        "http://host:8501/v1/models/a%2Fb/versions/3:predict"


def test_predict_server_does_not_import_tensorflow(server, tmp_path):
    image = write_png(tmp_path / "scan.png", np.zeros((8, 8), np.uint8))
    script = textwrap.dedent(f"""
        import sys
        from braintumor_tf.cli import main
        try:
            main(["predict", "--server", {server!r}, "--model-name", "good", {str(image)!r}])
        except SystemExit as stop:
            assert not stop.code, stop.code
        print("TF_IMPORTED", "tensorflow" in sys.modules, "keras" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "notumor" in result.stdout + result.stderr
    assert "TF_IMPORTED False False" in result.stdout, result.stdout


def _write_dicom(path, pixels):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.Modality = "MR"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)
    assert pydicom.dcmread(str(path)).Rows == pixels.shape[0]
    return path


def test_dicom_tiff_and_16_bit_png_are_sent_as_the_8_bit_png_the_loaders_see(server, tmp_path):
    from braintumor_tf.data.decode import decode_bytes

    ramp = np.tile(np.linspace(0, 4000, 40), (32, 1)).astype(np.uint16)
    colour = np.dstack([np.full((12, 10), v, np.uint8) for v in (10, 128, 250)])
    converted = [_write_dicom(tmp_path / "slice.dcm", ramp),
                 _write_dicom(tmp_path / "IM0001", ramp),  # DICOM without an extension
                 write_png(tmp_path / "deep.png", ramp),
                 write_png(tmp_path / "grey.tif", (ramp // 16).astype(np.uint8)),
                 write_png(tmp_path / "colour.tiff", colour)]
    as_is = [write_png(tmp_path / "plain.png", (ramp // 16).astype(np.uint8)),
             write_png(tmp_path / "plain.jpg", (ramp // 16).astype(np.uint8)),
             write_png(tmp_path / "plain.bmp", colour)]
    Misbehaving.received.clear()
    results = rest_client.predict_files(server, "good_rows", converted + as_is, timeout=10)
    assert all("error" not in r for r in results), results
    sent = Misbehaving.received[-len(results):]
    for path, data in zip(converted, sent[:len(converted)], strict=True):
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[24] == 8, path  # 8-bit PNG
        original = decode_bytes(path.read_bytes(), 3, name=str(path))
        assert np.abs(decode_bytes(data, 3) - original).max() <= 0.5, path
    assert sent[0][25] == 0 and sent[-4][25] == 2  # grey stays grey, colour stays colour
    for path, data in zip(as_is, sent[len(converted):], strict=True):
        assert data == path.read_bytes(), path


def test_an_input_the_loaders_cannot_read_is_its_own_error_not_a_request(server, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)
    good = write_png(tmp_path / "good.png", np.zeros((8, 8), np.uint8))
    Misbehaving.received.clear()
    results = rest_client.predict_files(server, "good_rows", [broken, good], timeout=10)
    assert "error" in results[0] and results[1]["class_id"] == 2
    assert Misbehaving.received == [good.read_bytes()]
