"""``evaluate`` and ``predict`` on data in a tf.io.gfile filesystem give what they give on the same
files on local disk.

As in test_remote_filesystem.py, ``ram://`` (TensorFlow's in-memory filesystem) stands in for
``gs://``: one tree of files is written under ``tmp_path`` and under a fresh ``ram://`` folder, the
command runs on each, and the outputs (always local) must agree once the root is replaced. The
models are tiny and untrained: only the data path differs between the two runs.
"""

import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from support import bright_segmenter
from test_remote_filesystem import _coco_tree, png, write_tree

from braintumor_tf.cli import PREDICT_SOME_FAILED, main
from braintumor_tf.commands.predict import predict

pytestmark = pytest.mark.usefixtures("float32_policy")
SIZE = 32
BROKEN = b"\x89PNG\r\n\x1a\n broken"


def _classifier(path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax", dtype="float32")(x)).save(path)
    return str(path)


def _encoded(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _slice_and_mask(seed: int) -> tuple[bytes, bytes]:
    """A dim slice with a bright square, and a truth mask that overlaps it only in part."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 90, (40, 44)).astype(np.uint8)
    top, left = rng.integers(2, 22, 2)
    image[top:top + 12, left:left + 14] = 230
    mask = np.zeros((40, 44), np.uint8)
    mask[top + 3:top + 15, left + 2:left + 14] = 255
    return _encoded(image), _encoded(mask)


def _class_tree() -> dict:
    tree = {}
    for label in ("glioma", "meningioma", "notumor", "pituitary"):
        for k in range(3):
            tree[f"data/{label}/{label}_{k}.png"] = png(40, 44, seed=100 * len(label) + k)
    tree["data/glioma/zz_broken.png"] = BROKEN
    tree["loose/scan.png"] = png(36, 36, seed=7)
    rows = ["path,label,class_name,group,split,subject"]
    for index, label in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
        rows += [f"data/{label}/{label}_0.png,{index},{label},{index},val,",
                 f"data/{label}/{label}_1.png,{index},{label},{index + 4},train,"]
    tree["split_manifest.csv"] = ("\n".join(rows) + "\n").encode()
    return tree


def _seg_tree() -> dict:
    tree = {}
    for k in range(6):
        image, mask = _slice_and_mask(k)
        tree[f"img/train/s{k}.png"] = image
        tree[f"msk/train/s{k}.png"] = mask
    tree["img/train/no_mask.png"] = _slice_and_mask(9)[0]
    tree["img/train/zz_broken.png"] = BROKEN
    tree["msk/train/zz_broken.png"] = _slice_and_mask(9)[1]
    return tree


def _same(local_text: str, remote_text: str, local: str, remote: str) -> str:
    """The remote run's output with its root written as the local one; asserted equal."""
    assert local not in remote_text
    assert remote_text.replace(remote, local) == local_text
    return remote_text


def _run(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_evaluate_classifier_on_a_remote_folder_and_manifest(tmp_path):
    local, remote = write_tree(tmp_path, _class_tree())
    model = _classifier(tmp_path / "classifier.keras")
    for name, data, extra in [("folder", "data", []),
                              ("manifest", "split_manifest.csv", ["--split", "val"])]:
        outputs = {}
        for where, root in (("local", local), ("remote", remote)):
            out = tmp_path / f"out_{name}_{where}"
            _run("evaluate", "--model", model, "--data", f"{root}/{data}", *extra,
                 "--json", out / "metrics.json", "--out", out / "plots", "--batch-size", 4)
            outputs[where] = ((out / "metrics.json").read_text(),
                              (out / "plots" / "predictions.csv").read_text())
            assert (out / "plots" / "confusion_matrix.png").is_file()
        for local_text, remote_text in zip(outputs["local"], outputs["remote"], strict=True):
            _same(local_text, remote_text, local, remote)
        report = json.loads(outputs["remote"][0])
        if name == "folder":
            assert report["n"] == 12
            assert [b["path"] for b in report["skipped_files"]] == \
                [f"{remote}/data/glioma/zz_broken.png"]
        else:
            assert report["n"] == 4 and report["skipped_files"] == []


def test_evaluate_segmenter_on_remote_images_and_masks(tmp_path):
    local, remote = write_tree(tmp_path, _seg_tree())
    model = bright_segmenter(tmp_path / "segmenter.keras", SIZE)
    reports = {}
    for where, root in (("local", local), ("remote", remote)):
        out = tmp_path / f"out_{where}"
        _run("evaluate", "--model", model, "--data", f"{root}/img", "--masks", f"{root}/msk",
             "--json", out / "metrics.json", "--out", out / "plots", "--batch-size", 4)
        text = (out / "metrics.json").read_text().replace(str(out), "<out>")
        reports[where] = (text, (out / "plots" / "predictions.csv").read_text())
        assert (out / "plots" / "overlays_masks_worst.png").is_file()
    for local_text, remote_text in zip(reports["local"], reports["remote"], strict=True):
        _same(local_text, remote_text, local, remote)
    report = json.loads(reports["remote"][0])
    assert report["n"] == 6 and report["images_without_mask"] == 1
    assert 0.1 < report["vs_masks"]["mean_dice"] < 0.99  # scored, and not trivially
    assert [b["path"] for b in report["skipped_files"]] == [f"{remote}/img/train/zz_broken.png"]


def test_evaluate_segmenter_on_a_local_manifest_of_remote_images(tmp_path):
    """A run trained on gs:// data writes gs:// rows into its local split_manifest.csv."""
    local, remote = write_tree(tmp_path, _seg_tree())
    model = bright_segmenter(tmp_path / "segmenter.keras", SIZE)
    texts = {}
    for where, root in (("local", local), ("remote", remote)):
        manifest = tmp_path / f"split_{where}.csv"
        rows = ["path,label,class_name,group,split,subject"]
        rows += [f"{root}/img/train/s{k}.png,1,tumour,{k},{'test' if k % 2 else 'train'},"
                 for k in range(6)]
        manifest.write_text("\n".join(rows) + "\n")
        out = tmp_path / f"seg_{where}.json"
        _run("evaluate", "--model", model, "--data", manifest, "--split", "test",
             "--masks", f"{root}/msk", "--json", out)
        texts[where] = out.read_text()
    assert json.loads(_same(texts["local"], texts["remote"], local, remote))["n"] == 3
    # A manifest stored beside remote data, its rows relative to it.
    rows = ["path,label,class_name,group,split,subject"]
    rows += [f"img/train/s{k}.png,1,tumour,{k},{'test' if k % 2 else 'train'},"
             for k in range(6)]
    _, beside = write_tree(tmp_path / "again", {**_seg_tree(),
                                                "split.csv": ("\n".join(rows) + "\n").encode()})
    out = tmp_path / "seg_beside.json"
    _run("evaluate", "--model", model, "--data", f"{beside}/split.csv", "--split", "test",
         "--masks", f"{beside}/msk", "--json", out)
    _same(texts["local"], out.read_text(), local, beside)


def test_evaluate_segmenter_on_remote_coco_splits(tmp_path):
    local, remote = write_tree(tmp_path, _coco_tree())
    model = bright_segmenter(tmp_path / "segmenter.keras", SIZE)
    texts = {}
    for where, root in (("local", local), ("remote", remote)):
        out = tmp_path / f"coco_{where}.json"
        _run("evaluate", "--model", model, "--data", root, "--json", out)
        texts[where] = out.read_text()
    report = json.loads(_same(texts["local"], texts["remote"], local, remote))
    assert report["n"] == 4 and report["vs_annotations"]["n"] == 4


def _records(path) -> list[dict]:
    return json.loads(path.read_text())


def test_predict_classifier_on_remote_folders_and_files(tmp_path):
    local, remote = write_tree(tmp_path, _class_tree())
    model = _classifier(tmp_path / "classifier.keras")
    texts = {}
    for where, root in (("local", local), ("remote", remote)):
        out = tmp_path / f"pred_{where}.json"
        explain = tmp_path / f"gradcam_{where}"
        result = CliRunner().invoke(main, ["predict", "--model", model, f"{root}/data",
                                           f"{root}/loose/scan.png", "--json", str(out),
                                           "--explain", str(explain), "--batch-size", "5"])
        assert result.exit_code == PREDICT_SOME_FAILED, (result.output, result.exception)
        texts[where] = out.read_text().replace(str(explain), "<gradcam>")
        assert len(list(explain.glob("*_gradcam.png"))) == 13
    records = json.loads(_same(texts["local"], texts["remote"], local, remote))
    assert len(records) == 14 and sum(bool(r["error"]) for r in records) == 1
    assert records[-1]["path"] == f"{remote}/loose/scan.png" and records[-1]["class_name"]
    result = CliRunner().invoke(main, ["predict", "--model", model, f"{remote}/data/nothing.png"])
    assert result.exit_code == 1 and "no such file or folder" in result.output


def test_predict_streams_and_resumes_on_remote_inputs(tmp_path, caplog):
    local, remote = write_tree(tmp_path, _class_tree())
    model = _classifier(tmp_path / "classifier.keras")
    texts = {}
    for where, root in (("local", local), ("remote", remote)):
        out = tmp_path / f"stream_{where}.jsonl"
        results = predict([f"{root}/data"], model_path=model, jsonl_path=out, batch_size=4)
        assert len(results) == 13
        texts[where] = out.read_text()
    _same(texts["local"], texts["remote"], local, remote)
    # Killed after 5 records, mid-line: a re-run on the remote folder skips the good ones.
    out = tmp_path / "stream_remote.jsonl"
    lines = texts["remote"].splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:20])
    caplog.set_level("INFO", logger="braintumor_tf")
    predict([f"{remote}/data"], model_path=model, jsonl_path=out, batch_size=4)
    assert "4 of 13 images already in" in caplog.text  # the broken one is not done
    again = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    first = [json.loads(line)["path"] for line in texts["remote"].splitlines()]
    broken = f"{remote}/data/glioma/zz_broken.png"  # tried again: its error is written twice
    assert sorted(again) == sorted([*first, broken])
    # The same with a CSV alone; the broken file is tried again, the rest is skipped.
    csv_out = tmp_path / "stream_remote.csv"
    predict([f"{remote}/data"], model_path=model, csv_path=csv_out, batch_size=4)
    caplog.clear()
    predict([f"{remote}/data"], model_path=model, csv_path=csv_out, batch_size=4)
    assert "12 of 13 images already in" in caplog.text
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == 14 and all(r["path"].startswith(f"{remote}/data/") for r in rows)


def test_predict_segmenter_masks_from_remote_images(tmp_path):
    local, remote = write_tree(tmp_path, _seg_tree())
    model = bright_segmenter(tmp_path / "segmenter.keras", SIZE)
    texts, masks = {}, {}
    for where, root in (("local", local), ("remote", remote)):
        out, masks[where] = tmp_path / f"seg_{where}.json", tmp_path / f"masks_{where}"
        predict([f"{root}/img"], model_path=model, json_path=out, masks_dir=masks[where],
                explain_dir=tmp_path / f"overlays_{where}", batch_size=3)
        texts[where] = out.read_text().replace(str(masks[where]), "<masks>").replace(
            str(tmp_path / f"overlays_{where}"), "<overlays>")
    records = json.loads(_same(texts["local"], texts["remote"], local, remote))
    assert len(records) == 8 and records[0]["mask"] == "<masks>/no_mask_mask.png"
    written = sorted(p.name for p in masks["remote"].iterdir())
    assert written == sorted(p.name for p in masks["local"].iterdir()) and len(written) == 7
    for name in written:
        assert (masks["remote"] / name).read_bytes() == (masks["local"] / name).read_bytes()


def test_predict_segmenter_on_a_remote_nifti_volume(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    data = np.full((6, 40, 36), 100.0, np.float32)
    data[2:4, 10:20, 12:24] = 3000.0
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    scan = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, affine), str(scan))
    local, remote = write_tree(tmp_path, {"vol/scan.nii.gz": scan.read_bytes()})
    model = bright_segmenter(tmp_path / "segmenter.keras", SIZE)
    texts, volumes = {}, {}
    for where, root in (("local", local), ("remote", remote)):
        out, masks = tmp_path / f"vol_{where}.json", tmp_path / f"vmasks_{where}"
        predict([f"{root}/vol/scan.nii.gz"], model_path=model, json_path=out, masks_dir=masks)
        texts[where] = out.read_text().replace(str(masks), "<masks>")
        volumes[where] = np.asarray(nibabel.load(masks / "scan_mask.nii.gz").dataobj)
    [record] = json.loads(_same(texts["local"], texts["remote"], local, remote))
    assert record["error"] is None and record["slices_with_tumour"] == 2
    np.testing.assert_array_equal(volumes["remote"], volumes["local"])


class _Echo(BaseHTTPRequestHandler):
    """A TF Serving stand-in for the client's side only: keeps the uploads, answers a class."""

    uploads: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).uploads += [instance["b64"] for instance in body["instances"]]
        answer = {"probabilities": [0.1, 0.2, 0.6, 0.1], "class_id": 2, "class_name": "notumor"}
        data = json.dumps({"predictions": [answer] * len(body["instances"])}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_predict_uploads_remote_files_to_a_server(tmp_path):
    local, remote = write_tree(tmp_path, _class_tree())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    texts, uploads = {}, {}
    try:
        for where, root in (("local", local), ("remote", remote)):
            _Echo.uploads = []
            out = tmp_path / f"served_{where}.json"
            predict([f"{root}/data/notumor", f"{root}/loose/scan.png"], server=url,
                    model_name="classifier", json_path=out)
            texts[where], uploads[where] = out.read_text(), _Echo.uploads
    finally:
        server.shutdown()
        server.server_close()
    assert len(json.loads(_same(texts["local"], texts["remote"], local, remote))) == 4
    assert uploads["remote"] == uploads["local"] and len(uploads["remote"]) == 4
