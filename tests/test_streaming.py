"""predict --jsonl / --csv: records stream out batch by batch, and a re-run picks up where one
stopped."""

import csv
import json

import keras
import numpy as np
import pytest
from PIL import Image

from braintumor_tf.commands.predict import predict

pytestmark = pytest.mark.usefixtures("float32_policy")


@pytest.fixture
def folder_and_model(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(45):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(
            folder / f"img_{index:03d}.png")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    inputs = keras.Input((32, 32, 1), name="pixels")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax", dtype="float32")(x)).save(
        tmp_path / "model.keras")
    return folder, tmp_path / "model.keras"


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_stream_then_resume_after_a_kill(folder_and_model, tmp_path, caplog):
    folder, model = folder_and_model
    out = tmp_path / "out.jsonl"
    results = predict([folder], model_path=model, jsonl_path=out, batch_size=8)
    records = _lines(out)
    assert len(records) == len(results) == 46
    assert sum(bool(r["error"]) for r in records) == 1
    assert all(set(r) >= {"path", "class_name", "probabilities", "error"} for r in records)
    # A run killed after 20 records, mid-line: the torn line is dropped, the rest predicted once.
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:20]) + text[20][:15])
    caplog.set_level("INFO", logger="braintumor_tf")
    results = predict([folder], model_path=model, jsonl_path=out, batch_size=8)
    assert "20 of 46 images already in" in caplog.text
    records = _lines(out)  # every line parses: the torn fragment was cut, not left behind
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == 46 and len(results) == 46
    # Done files are skipped; a file that failed is tried again (it may have been fixed).
    before = len(out.read_text().splitlines())
    predict([folder], model_path=model, jsonl_path=out)
    added = out.read_text().splitlines()[before:]
    assert len(added) == 1 and json.loads(added[0])["path"].endswith("zz_broken.png")
    with pytest.raises(ValueError, match="--jsonl goes alone"):
        predict([folder], model_path=model, jsonl_path=out, json_path=tmp_path / "x.json")


def test_a_csv_alone_streams_and_resumes_too(folder_and_model, tmp_path, caplog):
    folder, model = folder_and_model
    out = tmp_path / "out.csv"
    predict([folder], model_path=model, csv_path=out, batch_size=8)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 46 and sum(bool(r["error"]) for r in rows) == 1
    assert list(rows[0])[:2] == ["path", "class_name"]
    # Killed mid-row after 30 rows: the partial row is cut and only the rest is predicted.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:31]) + lines[31][:25])
    caplog.set_level("INFO", logger="braintumor_tf")
    predict([folder], model_path=model, csv_path=out, batch_size=8)
    assert "30 of 46 images already in" in caplog.text
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows if not r["error"]) == sorted(
        str(p) for p in folder.glob("img_*.png"))
    assert all(None not in r.values() for r in rows)
    # A CSV of another model's columns is not appended to.
    out.write_text("path,mask\n")
    with pytest.raises(ValueError, match="holds other columns"):
        predict([folder], model_path=model, csv_path=out)
