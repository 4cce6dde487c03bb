"""Released models by name, and `models pull` checked against the manifest in the package."""

import hashlib
import http.server
import json
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from braintumor_tf.cli import main
from braintumor_tf.export.released import (
    MANIFEST,
    models_folders,
    pull,
    read_manifest,
    resolve_model,
    write_manifest,
)

REPOSITORY = Path(__file__).resolve().parent.parent


def _release(root: Path) -> Path:
    """A stand-in release folder (names only matter here, not whether the bytes load)."""
    (root / "classifier" / "1" / "variables").mkdir(parents=True)
    (root / "classifier" / "1" / "saved_model.pb").write_bytes(b"graph" * 100)
    (root / "classifier" / "1" / "variables" / "variables.index").write_bytes(b"index")
    (root / "classifier" / "classifier.keras").write_bytes(b"keras" * 1000)
    return root


@pytest.fixture
def models_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINTUMOR_TF_MODELS", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def web(tmp_path):
    """An HTTP server on 127.0.0.1 over a release folder."""
    root = _release(tmp_path / "site")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_committed_manifest_matches_the_committed_releases():
    files = read_manifest(MANIFEST)
    releases = REPOSITORY / "savedmodels"
    if not releases.is_dir():
        pytest.skip("not a clone: no savedmodels/ to compare with")
    on_disk = {p.relative_to(releases).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for name in ("classifier", "segmenter") for p in (releases / name).rglob("*")
               if p.is_file()}
    assert files == on_disk, "run python scripts/release_manifest.py"


def test_pull_over_http_checks_every_file_and_names_resolve(web, models_home, tmp_path):
    root, url = web
    manifest = tmp_path / "manifest.json"
    write_manifest(root, ["classifier"], manifest)
    written = pull(url, target=None, manifest=manifest, progress=lambda line: None)
    assert written == sorted(json.loads(manifest.read_text())["files"])
    assert (models_home / "classifier" / "classifier.keras").read_bytes() == b"keras" * 1000
    assert models_folders() == [models_home]
    assert resolve_model("classifier") == models_home / "classifier"
    assert resolve_model("some/path.keras") == Path("some/path.keras")  # paths stay paths
    with pytest.raises(FileNotFoundError, match="models pull"):
        resolve_model("segmenter")
    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 0 and "classifier: ? in" in result.output
    assert "SavedModel versions 1; files classifier.keras" in result.output


def test_models_list_reads_the_task_of_a_release_without_a_savedmodel(models_home):
    """A release of LiteRT files only (the segmenter's) says its task from the file's spec."""
    from braintumor_tf.spec import spec_for

    release = models_home / "segmenter"
    release.mkdir(parents=True)
    (release / "segmenter_dynamic.tflite").write_bytes(b"tflite")
    spec = spec_for("segmentation", ("tumour",), 96, 1, threshold=0.6)
    (release / "segmenter_dynamic.json").write_text(json.dumps({"spec": spec.to_dict()}))
    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "segmenter: segmentation in" in result.output


def test_a_corrupted_download_writes_nothing(web, models_home, tmp_path):
    root, url = web
    manifest = tmp_path / "manifest.json"
    write_manifest(root, ["classifier"], manifest)
    (root / "classifier" / "classifier.keras").write_bytes(b"keras" * 999 + b"xxxxx")
    with pytest.raises(ValueError, match="differs from the manifest"):
        pull(url, manifest=manifest, progress=lambda line: None)
    assert not (models_home / "classifier").exists()
    assert [p.name for p in models_home.iterdir()] == []  # no staging folder left behind
    (root / "classifier" / "classifier.keras").unlink()
    with pytest.raises(Exception, match="404|Not Found"):
        pull(url, manifest=manifest, progress=lambda line: None)


def test_pull_from_a_folder_by_cli_and_bad_sources(models_home, tmp_path):
    root = _release(tmp_path / "clone")
    manifest = tmp_path / "manifest.json"
    write_manifest(root, ["classifier"], manifest)
    assert len(pull(str(root), ["classifier"], manifest=manifest, progress=lambda x: None)) == 3
    with pytest.raises(ValueError, match="no release named"):
        pull(str(root), ["detector"], manifest=manifest)
    with pytest.raises(ValueError, match="http"):
        pull("file:///etc", manifest=manifest)
    shutil.rmtree(models_home)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"files": {"../outside": "0" * 64}}))
    with pytest.raises(ValueError, match="leaves the models folder"):
        read_manifest(bad)
    result = CliRunner().invoke(main, ["models", "pull", "--from", str(tmp_path / "nowhere")])
    assert result.exit_code != 0 and "missing" in result.output


@pytest.mark.usefixtures("float32_policy")
def test_serve_local_answers_the_rest_api_for_predict_server(tmp_path):
    """The documented no-Docker path: `braintumor-tf serve-local`, then curl / predict --server."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import cv2
    import keras
    import numpy as np

    from braintumor_tf.export.savedmodel import export_classifier

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    export_classifier(model, tmp_path / "served" / "3", ("glioma", "meningioma", "notumor",
                                                         "pituitary"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "braintumor_tf", "serve-local", "--model",
                               f"classifier={tmp_path / 'served'}", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                status = json.loads(urllib.request.urlopen(f"{url}/v1/models/classifier").read())
                break
            except OSError:
                time.sleep(0.5)
        assert status["model_version_status"][0] == {
            "version": "3", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                             "error_message": ""}}
        image = tmp_path / "scan.png"
        cv2.imwrite(str(image), np.full((50, 40), 120, np.uint8))
        predicted = subprocess.run(
            [sys.executable, "-m", "braintumor_tf", "predict", "--server", url, "--model-name",
             "classifier", str(image)], capture_output=True, text=True, timeout=120)
        assert predicted.returncode == 0, predicted.stdout + predicted.stderr
        expected = model(np.full((1, 32, 32, 1), 120, np.float32)).numpy()[0]
        name = ("glioma", "meningioma", "notumor", "pituitary")[int(expected.argmax())]
        assert f"scan.png: {name} (glioma={expected[0]:.3f}" in predicted.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_servings_signature_tables_say_what_the_committed_files_hold():
    import importlib.util

    document = REPOSITORY / "docs" / "SERVING.md"
    if not (REPOSITORY / "savedmodels").is_dir():
        pytest.skip("not a clone")
    loader = importlib.util.spec_from_file_location(
        "serving_tables", REPOSITORY / "scripts" / "serving_tables.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    text = document.read_text()
    block = text.split(module.START, 1)[1].split(module.END, 1)[0]
    assert block == "\n" + module.tables(REPOSITORY / "savedmodels"), \
        "run python scripts/serving_tables.py"
