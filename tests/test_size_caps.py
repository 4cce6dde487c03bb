"""Size caps before reading: no input file, and no server answer, is read whole just because it is
there. Giant files are sparse (truncate), so the tests cost no disk and no time."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from support import PEAK_MB_EXPRESSION, write_png

from braintumor_tf.cli import main
from braintumor_tf.data import filesystem
from braintumor_tf.data.decode import check_images, read_image
from braintumor_tf.export import rest_client

GIANT = 3 * 1024 ** 3  # 3 GB, sparse


def _giant(path):
    with open(path, "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0")  # starts like a JPEG
        handle.truncate(GIANT)
    return path


class Answers(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        mode = self.path.split("/v1/models/")[1].split(":")[0]
        if mode == "hugelength":  # announces 2 GB, sends a little, then waits
            self.send_response(200)
            self.send_header("Content-Length", str(2 * 1024 ** 3))
            self.end_headers()
            self.wfile.write(b'{"predictions": [')
            self.wfile.flush()
            time.sleep(5)
        elif mode == "chunked":  # no length announced: 2 MB of spaces, then a good answer
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b" " * 65536
            for _ in range(32):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            body = json.dumps({"predictions": [{"probabilities": [0.1, 0.2, 0.6, 0.1]}]}).encode()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        else:
            body = json.dumps({"predictions": [{"probabilities": [0.1, 0.2, 0.6, 0.1],
                                                "class_id": 2}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_an_answer_announcing_2_gb_is_refused_at_once(server):
    start = time.monotonic()
    with pytest.raises(rest_client.ServingError, match="larger than 67108864 bytes.*"
                       "BRAINTUMOR_TF_MAX_RESPONSE_BYTES"):
        rest_client.predict_encoded(server, "hugelength", [b"x"], timeout=30)
    assert time.monotonic() - start < 3


def test_an_answer_without_a_length_is_cut_off_at_the_cap(server, monkeypatch):
    [answer] = rest_client.predict_encoded(server, "chunked", [b"x"], timeout=30)
    assert answer["class_id"] == 2  # 2 MB is well under the default cap
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_RESPONSE_BYTES", str(1024 * 1024))
    with pytest.raises(rest_client.ServingError, match="larger than 1048576 bytes"):
        rest_client.predict_encoded(server, "chunked", [b"x"], timeout=30)
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_RESPONSE_BYTES", "lots")
    with pytest.raises(ValueError, match="BRAINTUMOR_TF_MAX_RESPONSE_BYTES must be a whole"):
        rest_client.predict_encoded(server, "chunked", [b"x"], timeout=30)


def test_the_client_refuses_a_3_gb_file_before_reading(server, tmp_path):
    giant = _giant(tmp_path / "giant.jpg")
    good = write_png(tmp_path / "good.png", np.zeros((8, 8), np.uint8))
    start = time.monotonic()
    for reader in (None, filesystem.read_bytes):  # the client's own, and predict's
        results = rest_client.predict_files(server, "good", [giant, good], read_file=reader,
                                            timeout=10)
        assert "over the 536870912-byte limit" in results[0]["error"], results[0]
        assert "BRAINTUMOR_TF_MAX_FILE_BYTES" in results[0]["error"]
        assert results[1]["class_id"] == 2
    assert time.monotonic() - start < 5
    result = CliRunner().invoke(main, ["predict", "--server", server, "--model-name", "good",
                                       str(giant), str(good)])
    assert result.exit_code == 3, result.output  # some inputs failed, the rest were predicted
    assert "Traceback" not in result.output


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_the_client_refuses_a_link_to_dev_zero(tmp_path):
    """In a subprocess with its address space capped: were the link read, it would end in a
    MemoryError there instead of the machine's OOM killer."""
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (6 * 1024 ** 3, 6 * 1024 ** 3))
        from braintumor_tf.data import filesystem
        from braintumor_tf.export import rest_client
        for reader in (rest_client._read_local, filesystem.read_bytes):
            try:
                reader({str(link)!r})
            except OSError as error:
                print("REFUSED", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("REFUSED") == 2 and "not a regular file" in result.stdout


def test_the_file_cap_is_configurable_and_bounds_every_whole_read(tmp_path, monkeypatch):
    image = write_png(tmp_path / "scan.png", np.full((64, 64), 90, np.uint8))
    assert read_image(image, 1).shape == (64, 64, 1)
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_FILE_BYTES", "10")
    with pytest.raises(OSError, match="over the 10-byte limit") as caught:
        read_image(image, 1)
    assert str(image) in str(caught.value)
    assert filesystem.read_bytes(image, 8) == image.read_bytes()[:8]  # header reads: bounded
    with pytest.raises(OSError, match="over the 10-byte limit"):
        filesystem.open_text(image)
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_FILE_BYTES", "0")
    with pytest.raises(ValueError, match="BRAINTUMOR_TF_MAX_FILE_BYTES must be >= 1"):
        read_image(image, 1)


def test_a_3_gb_sparse_jpg_is_refused_by_the_loaders_at_normal_memory(tmp_path):
    folder = tmp_path / "data" / "glioma"
    folder.mkdir(parents=True)
    for index in range(3):
        write_png(folder / f"good{index}.png", np.full((32, 32), 40 * index + 20, np.uint8))
    giant = _giant(folder / "giant.jpg")
    script = textwrap.dedent(f"""
        import resource, time
        resource.setrlimit(resource.RLIMIT_AS, (6 * 1024 ** 3, 6 * 1024 ** 3))  # no OOM kill
        from braintumor_tf.data.decode import check_images, read_image
        from braintumor_tf.commands.audit import audit
        start = time.monotonic()
        try:
            read_image({str(giant)!r}, 3)
        except OSError as error:
            print("READ", error)
        good, bad = check_images([{str(folder / "good0.png")!r}, {str(giant)!r}])
        print("CHECK", len(good), bad)
        summary = audit([{str(tmp_path / "data")!r}], {str(tmp_path / "audit")!r},
                        progress=False, subjects="none")
        print("AUDIT", summary["bad_files"])
        print("SECONDS", time.monotonic() - start)
        print("PEAK_MB", {PEAK_MB_EXPRESSION})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines()
             if " " in line}
    assert str(giant) in lines["READ"] and "3221225472 bytes, over the" in lines["READ"]
    assert lines["CHECK"].startswith("1 ") and "giant.jpg" in lines["CHECK"]
    assert "giant.jpg" in lines["AUDIT"] and "over the 536870912-byte limit" in lines["AUDIT"]
    assert float(lines["PEAK_MB"]) < 1000, lines  # reading it whole took 3 GB or more
    assert float(lines["SECONDS"]) < 60, lines


def test_check_images_reports_the_cap_with_the_file(tmp_path, monkeypatch):
    image = write_png(tmp_path / "scan.png", np.full((64, 64), 90, np.uint8))
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_FILE_BYTES", "10")
    good, bad = check_images([image])
    assert good == [] and bad[0]["path"] == str(image)
    assert bad[0]["reason"].startswith("cannot read file: ") and "10-byte limit" in bad[0]["reason"]
