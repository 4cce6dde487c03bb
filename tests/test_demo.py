"""The demo page: the JSON it is built on, and the page itself in a real headless Chromium."""

import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("flask")
from braintumor_tf.api import load  # noqa: E402
from braintumor_tf.data.phantoms import generate_phantoms  # noqa: E402
from braintumor_tf.demo.app import (  # noqa: E402
    MAX_FILES_PER_REQUEST,
    create_app,
    create_server,
    stop_server,
)
from braintumor_tf.models.classifier import build_residual_cnn  # noqa: E402
from braintumor_tf.models.guard import fit_guard  # noqa: E402

pytestmark = pytest.mark.usefixtures("float32_policy")
SIZE = 64
ARTIFACTS = Path(os.environ.get("BRAINTUMOR_TF_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    keras.utils.set_random_seed(0)
    classifier = build_residual_cnn(SIZE, 1, 4, 16, 2, [16, 32, 32], [3, 3, 3],
                                    [True, True, False], dense_units=32, dropout=0.1)
    images, _, labels = generate_phantoms(20, SIZE, seed=1)
    pixels = images[..., None].astype(np.float32)
    guard, _, _ = fit_guard(classifier, pixels[:40], labels[:40], pixels[40:], labels[40:])
    classifier.save(folder / "classifier.keras")
    guard.save(folder / "ood_guard.npz")
    inputs = keras.Input((SIZE, SIZE, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32",
                            kernel_initializer=keras.initializers.Constant(20.0),
                            bias_initializer=keras.initializers.Constant(-10.0))(x)
    keras.Model(inputs, x).save(folder / "segmenter.keras")
    slice_path = folder / "slice.png"
    Image.fromarray(images[0]).save(slice_path)
    blank_path = folder / "blank.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(blank_path)
    broken_path = folder / "broken.png"
    broken_path.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    demo = create_app(load(folder / "classifier.keras"), load(folder / "segmenter.keras"))
    return demo, {"slice": slice_path, "blank": blank_path, "broken": broken_path}


def test_predict_endpoint(app):
    demo, files = app
    client = demo.test_client()
    assert b"drop" in client.get("/").data.lower()
    assert client.get("/models").get_json()["guarded"] is True
    data = {"images": [(io.BytesIO(files[name].read_bytes()), files[name].name)
                       for name in ("slice", "blank", "broken")]}
    answer = client.post("/predict", data=data, content_type="multipart/form-data")
    slice_, blank, broken = answer.get_json()
    assert slice_["classifier"]["in_distribution"] is True
    assert abs(sum(slice_["classifier"]["probabilities"].values()) - 1) < 1e-4
    assert slice_["gradcam"].startswith("data:image/png;base64,")
    assert slice_["mask_overlay"].startswith("data:image/png;base64,")
    assert slice_["segmenter"]["tumour_area_pixels"] > 0 and slice_["seconds"] < 5
    assert blank["classifier"]["in_distribution"] is False
    assert blank["segmenter"]["tumour_area_pixels"] == 0
    assert broken["error"] and "classifier" not in broken
    assert client.post("/predict").status_code == 400


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Chromium and chromedriver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1100,1400"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


def test_page_in_headless_chromium(app):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    demo, files = app
    server, port = _running(demo)
    browser = _browser()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        upload = browser.find_element(By.ID, "files")
        upload.send_keys("\n".join(str(files[name]) for name in ("slice", "blank")))
        WebDriverWait(browser, 60).until(
            lambda b: b.find_element(By.ID, "status").get_attribute("data-done") == "2")
        boxes = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        text = {box.find_element(By.TAG_NAME, "h2").text: box.text for box in boxes}
        assert "Class:" in text["slice.png"] and "Tumour area" in text["slice.png"]
        assert "does not look like the brain MRI" in text["blank.png"]
        assert "does not look like" not in text["slice.png"]
        bars = boxes[-1].find_elements(By.CSS_SELECTOR, ".bar")
        assert len(bars) == 4
        images = browser.find_elements(By.CSS_SELECTOR, "#results img")
        assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 0
                   for img in images) and len(images) == 6
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "demo_page.png"))
    finally:
        browser.quit()
        stop_server(server, server.thread)


def _running(demo, **adjustments):
    """The demo's own server (waitress, as `braintumor-tf demo` runs it) on a free port."""
    server = create_server(demo, "127.0.0.1", 0, **adjustments)
    server.thread = threading.Thread(target=server.run, daemon=True)
    server.thread.start()
    return server, server.effective_port


def test_a_client_sending_half_its_headers_blocks_no_one(app):
    """The old server (Werkzeug, one thread) waited for the rest of the first client's headers
    and answered no one else; the same for a client dripping its upload."""
    demo, files = app
    server, port = _running(demo, channel_timeout=3, cleanup_interval=1)
    try:
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multi")
        dripping = socket.create_connection(("127.0.0.1", port))
        dripping.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 100000\r\n\r\n--b\r\n")
        time.sleep(0.5)
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=5) as answer:
            assert json.load(answer)["max_files_per_request"] == MAX_FILES_PER_REQUEST
        body, boundary = _form([("slice.png", files["slice"].read_bytes())])
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=body, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            [record] = json.load(answer)
        assert record["classifier"]["class_name"] and time.perf_counter() - started < 10
        # The silent connection is closed by the server once idle past channel_timeout.
        stalled.settimeout(15)
        waited = time.perf_counter()
        assert stalled.recv(1024) == b"" and time.perf_counter() - waited < 15
        stalled.close()
        dripping.close()
    finally:
        stop_server(server, server.thread)
        assert not server.thread.is_alive()


def _form(named: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "demo-test-boundary"
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
              f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
             + data + b"\r\n" for name, data in named]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def test_more_images_than_the_cap_are_one_json_error(app):
    """One request of 200 tiny PNGs kept the old server busy for 37 s."""
    demo, _ = app
    client = demo.test_client()
    broken = b"\x89PNG\r\n\x1a\nnot an image"

    def post(count):
        data = {"images": [(io.BytesIO(broken), f"{i}.png") for i in range(count)]}
        return client.post("/predict", data=data, content_type="multipart/form-data")

    answer = post(MAX_FILES_PER_REQUEST)
    assert answer.status_code == 200 and len(answer.get_json()) == MAX_FILES_PER_REQUEST
    for count in (MAX_FILES_PER_REQUEST + 1, 200, 5000):  # 5000: Werkzeug stops parsing early
        started = time.perf_counter()
        answer = post(count)
        assert answer.status_code == 413, count
        assert f"at most {MAX_FILES_PER_REQUEST}" in answer.get_json()["error"]
        assert time.perf_counter() - started < 5


def test_demo_with_only_a_segmenter_keeps_the_default_classifier(tmp_path, monkeypatch):
    """`demo --segmenter X` used to drop the released classifier (and with it the guard)."""
    from click.testing import CliRunner

    import braintumor_tf.demo.app as demo_app
    from braintumor_tf.cli import main

    released = tmp_path / "savedmodels" / "classifier"
    released.mkdir(parents=True)
    (released / "classifier.keras").write_bytes(b"stand-in")
    (tmp_path / "seg.keras").write_bytes(b"stand-in")
    served = {}
    monkeypatch.setattr(demo_app, "serve", lambda classifier, segmenter, host, port:
                        served.update(classifier=classifier, segmenter=segmenter))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRAINTUMOR_TF_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing pulled there
    result = CliRunner().invoke(main, ["demo", "--segmenter", "seg.keras"])
    assert result.exit_code == 0, result.output
    assert served == {"classifier": str(Path("savedmodels/classifier/classifier.keras")),
                      "segmenter": "seg.keras"}
    shutil.rmtree(tmp_path / "savedmodels")  # no release here: the segmenter alone still runs
    result = CliRunner().invoke(main, ["demo", "--segmenter", "seg.keras"])
    assert result.exit_code == 0 and served["classifier"] is None
