"""Deployment as a user meets it: export versions, TFLite variants within their gates, the REST
client against a stand-in that speaks TF Serving's JSON, predict with broken files, Grad-CAM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from serving_standin import StandIn, serving_stand_in

from braintumor_tf.cli import PREDICT_SOME_FAILED, main
from braintumor_tf.commands.benchmark import benchmark
from braintumor_tf.commands.export import export_model
from braintumor_tf.commands.predict import predict
from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.export import rest_client, savedmodel
from braintumor_tf.export.runtimes import load_runtime
from braintumor_tf.export.tflite import CONTRACTS, convert_to_tflite
from braintumor_tf.models.classifier import build_residual_cnn
from braintumor_tf.models.gradcam import GradCAM, last_conv_layer_name

SIZE = 32
LEVELS = (80, 140, 200, 255)  # class = brightness of a patch in a random quadrant


def synthetic(n: int, seed: int):
    """Separable task with a known informative region (the patch's quadrant)."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 30, (n, SIZE, SIZE, 1))
    labels = rng.integers(0, 4, n)
    quadrants = rng.integers(0, 4, n)
    for i in range(n):
        row, col = (quadrants[i] // 2) * 16 + 2, (quadrants[i] % 2) * 16 + 2
        pixels[i, row:row + 12, col:col + 12, 0] = LEVELS[labels[i]] + rng.uniform(-10, 0, (12, 12))
    return np.round(pixels).astype(np.float32), labels, quadrants


def write_folder(root: Path, pixels, labels) -> Path:
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"img{index:03d}.png"), image.astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny residual CNN trained for a few seconds, plus train/val folders of PNGs."""
    root = tmp_path_factory.mktemp("deploy")
    train_x, train_y, _ = synthetic(400, 0)
    val_x, val_y, val_q = synthetic(160, 1)
    keras.utils.set_random_seed(0)
    model = build_residual_cnn(SIZE, 1, 4, block_filters=(8, 16), block_kernel_sizes=(3, 3),
                               block_downsample=(True, False), convs_per_block=1, dense_units=0,
                               dropout=0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(train_x, train_y, batch_size=32, epochs=10, verbose=0)
    model.save(root / "model.keras")
    return {
        "root": root, "model": model, "model_path": root / "model.keras",
        "train_dir": write_folder(root / "train", train_x[:80], train_y[:80]),
        "val_dir": write_folder(root / "val", val_x, val_y),
        "val": (val_x, val_y, val_q),
    }


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def tree_snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_trained_model_is_not_constant(trained):
    predicted = trained["model"].predict(trained["val"][0], verbose=0).argmax(axis=1)
    assert len(set(predicted.tolist())) >= 3
    assert np.mean(predicted == trained["val"][1]) >= 0.6


# ----------------------------------------------------------------------------- SavedModel export


def test_export_cli_versions_are_numbered_and_never_overwritten(trained, tmp_path):
    base = tmp_path / "savedmodels" / "classifier"
    first = cli("export", "--model", trained["model_path"], "--out", base)
    assert first.exit_code == 0, first.output
    assert cli("export", "--model", trained["model_path"], "--out", base).exit_code == 0
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    umask = os.umask(0)
    os.umask(umask)
    for path in [base / "1", *(base / "1").rglob("*")]:  # not mkdtemp's private 0700
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask, path
    before = tree_snapshot(base / "1")
    again = cli("export", "--model", trained["model_path"], "--out", base, "--version", "1")
    assert again.exit_code != 0
    assert "version 1 already exists" in again.output and "next free one, 3" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert tree_snapshot(base / "1") == before
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_tflite_files_are_published_only_when_their_gate_passes(trained, tmp_path, monkeypatch):
    from braintumor_tf.export import parity

    base = tmp_path / "classifier"
    base.mkdir()
    (base / ".5.tmp-999999999-abc").mkdir()  # left by an export that was killed
    (base / f".6.tmp-{os.getpid()}-x").mkdir()  # an export still running (this process)
    args = ("export", "--model", trained["model_path"], "--out", base, "--tflite", "dynamic",
            "--validation-data", trained["val_dir"])
    first = cli(*args)
    assert first.exit_code == 0
    assert "carries no model spec" not in first.output  # the parity reference says what it is
    published = base / "classifier_dynamic.tflite"
    before = (published.read_bytes(), published.stat().st_mtime_ns)
    assert not (base / ".5.tmp-999999999-abc").exists() and (base / f".6.tmp-{os.getpid()}-x").exists()
    monkeypatch.setitem(parity.AGREEMENT_GATES, "dynamic", 1.01)  # a gate nothing can pass
    failed = cli(*args)
    assert failed.exit_code != 0 and "failed its agreement gate" in failed.output
    assert (published.read_bytes(), published.stat().st_mtime_ns) == before
    assert (base / "failed_parity" / "classifier_dynamic.tflite").is_file()
    report = json.loads((base / "tflite_parity.json").read_text())
    assert report["variants"]["dynamic"]["file"] == str(base / "failed_parity" / "classifier_dynamic.tflite")
    assert not list(base.glob(".tflite.tmp-*"))


def test_export_rejects_non_keras_model_and_missing_calibration(trained, tmp_path):
    base = tmp_path / "out"
    result = cli("export", "--model", trained["root"] / "nope.keras", "--out", base)
    assert result.exit_code != 0 and "model not found" in result.output
    result = cli("export", "--model", trained["model_path"], "--out", base, "--tflite", "int8")
    assert result.exit_code != 0 and "--representative-data" in result.output
    result = cli("export", "--model", trained["model_path"], "--out", base, "--tflite", "int4")
    assert result.exit_code != 0 and "unknown TFLite variant" in result.output
    result = cli("export", "--model", trained["model_path"], "--out", base, "--threshold", "0.7")
    assert result.exit_code != 0 and "segmenters only" in result.output
    result = cli("export", "--model", trained["model_path"], "--out", base, "--threshold", "1.5")
    assert result.exit_code != 0 and "--threshold" in result.output
    assert not base.exists()


def test_interrupted_export_leaves_no_version(trained, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(savedmodel, "_verify", interrupted)
    base = tmp_path / "classifier"
    with pytest.raises(KeyboardInterrupt):
        export_model(base, model_path=trained["model_path"])
    assert list(base.iterdir()) == []


@pytest.fixture(scope="module")
def full_export(trained):
    base = trained["root"] / "savedmodels" / "classifier"
    result = cli("export", "--model", trained["model_path"], "--out", base,
                 "--tflite", "float32,float16,dynamic,int8",
                 "--representative-data", trained["train_dir"],
                 "--validation-data", trained["val_dir"])
    assert result.exit_code == 0, result.output
    return base


def test_signature_defs_as_tf_serving_reads_them(full_export):
    loaded = tf.saved_model.load(str(full_export / "1"))
    assert set(loaded.signatures) == {"serving_default", "predict_pixels"}
    outputs_want = {"probabilities": (tf.float32, [None, 4]), "class_id": (tf.int64, [None]),
                    "class_name": (tf.string, [None])}
    inputs_want = {"serving_default": ("images", tf.string, [None]),
                   "predict_pixels": ("pixels", tf.float32, None)}
    for name, (input_name, dtype, shape) in inputs_want.items():
        signature = loaded.signatures[name]
        args, kwargs = signature.structured_input_signature
        assert args == () and list(kwargs) == [input_name]
        assert kwargs[input_name].dtype == dtype
        assert kwargs[input_name].shape.rank is None if shape is None else \
            kwargs[input_name].shape.as_list() == shape
        outputs = signature.structured_outputs
        assert {k: (v.dtype, v.shape.as_list()) for k, v in outputs.items()} == outputs_want


def test_saved_model_pb_declares_predict_signatures(full_export):
    """What saved_model_cli and TF Serving read: the SignatureDefs inside saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((full_export / "1" / "saved_model.pb").read_bytes())
    signatures = proto.meta_graphs[0].signature_def
    for name, input_name, dtype in (("serving_default", "images", tf.string),
                                    ("predict_pixels", "pixels", tf.float32)):
        signature = signatures[name]
        assert signature.method_name == "tensorflow/serving/predict"
        assert list(signature.inputs) == [input_name]
        assert signature.inputs[input_name].dtype == dtype.as_datatype_enum
        assert sorted(signature.outputs) == ["class_id", "class_name", "probabilities"]
        assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 4]


@pytest.mark.parametrize("file_name, names", [("models.config", ["classifier"]),
                                               ("models_with_segmenter.config",
                                                ["classifier", "segmenter"])])
def test_models_config_parses_as_tf_serving_text_proto(file_name, names):
    """Parsed with a stand-in of TF Serving's ModelServerConfig (same field names)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="standin_model_server_config.proto",
                                              package="standin", syntax="proto3")
    layout = {
        "ModelConfig": [("name", field.TYPE_STRING, None, False),
                        ("base_path", field.TYPE_STRING, None, False),
                        ("model_platform", field.TYPE_STRING, None, False)],
        "ModelConfigList": [("config", field.TYPE_MESSAGE, ".standin.ModelConfig", True)],
        "ModelServerConfig": [("model_config_list", field.TYPE_MESSAGE, ".standin.ModelConfigList",
                               False)],
    }
    for message_name, fields in layout.items():
        message = file.message_type.add(name=message_name)
        for number, (name, kind, type_name, repeated) in enumerate(fields, start=1):
            message.field.add(name=name, number=number, type=kind, type_name=type_name,
                              label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    config_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("standin.ModelServerConfig"))
    config_file = Path(__file__).resolve().parent.parent / "savedmodels" / file_name
    config = text_format.Parse(config_file.read_text(), config_class())
    entries = [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config]
    assert entries == [(name, f"/models/{name}", "tensorflow") for name in names]


def test_export_from_run_directory_calibrates_on_its_train_split(trained, tmp_path):
    """Manifest paths are relative to where training ran; they resolve against the run too."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(trained["model_path"].read_bytes())
    lines = ["path,label,class_name,group,split"]
    for split, folder in (("train", trained["train_dir"]), ("val", trained["val_dir"])):
        for index, image in enumerate(sorted(folder.rglob("*.png"))[:30]):
            target = run / "data" / split / f"{index}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image.read_bytes())
            label = CLASS_NAMES.index(image.parent.name)
            lines.append(f"data/{split}/{index}.png,{label},{image.parent.name},{index},{split}")
    (run / "split_manifest.csv").write_text("\n".join(lines) + "\n")
    base = tmp_path / "classifier"
    result = cli("export", "--run", run, "--out", base, "--tflite", "int8", "--int8-io", "float32")
    assert result.exit_code == 0, result.output
    # Float input/output is a different contract from int8 I/O, so the file says so in its name.
    assert not (base / "classifier_int8.tflite").exists()
    info = json.loads((base / "classifier_int8_float_io.json").read_text())
    assert info["calibration_images"] == 30 and info["input"]["dtype"] == "float32"
    assert info["file"] == "classifier_int8_float_io.tflite"
    report = json.loads((base / "tflite_parity.json").read_text())
    assert report["images"] == 30 and report["variants"]["int8"]["passed"] is True
    assert (base / "1" / "saved_model.pb").is_file()


# ----------------------------------------------------------------------------- TFLite


def test_every_tflite_variant_runs_in_litert_within_the_gates(trained, full_export):
    val_x = trained["val"][0]
    want = trained["model"].predict(val_x, verbose=0).argmax(axis=1)
    for variant in ("float32", "float16", "dynamic", "int8"):
        path = full_export / f"classifier_{variant}.tflite"
        info = json.loads(path.with_suffix(".json").read_text())
        assert info["variant"] == variant and info["source_version"] == 1
        assert info["contract"] == CONTRACTS[variant]
        runtime = load_runtime(path, class_names=CLASS_NAMES, num_threads=1)
        got = runtime.predict(val_x).argmax(axis=1)
        assert np.mean(got == want) >= {"dynamic": 0.995, "int8": 0.99}.get(variant, 0.995), variant
    int8 = json.loads((full_export / "classifier_int8.json").read_text())
    assert int8["input"]["dtype"] == "int8" and int8["output"]["dtype"] == "int8"
    assert int8["input"]["scale"] > 0 and -128 <= int8["input"]["zero_point"] <= 127
    assert int8["calibration_images"] == 80

    report = json.loads((full_export / "tflite_parity.json").read_text())
    assert report["passed"] is True and report["images"] == len(val_x)
    for variant in ("dynamic", "int8"):
        entry = report["variants"][variant]
        assert entry["passed"] is True and entry["agreement"] >= entry["gate"]
        assert entry["size_bytes"] > 0 and entry["accuracy_delta"] is not None
        assert set(entry["latency_batch1"]) == {"1_threads", "2_threads"}
    assert "| int8 |" in (full_export / "tflite_parity.md").read_text()


def test_int8_file_is_scorable_by_evaluate(trained, full_export, tmp_path):
    """Dequantised int8 softmax rows miss 1 by a few 1/256 steps; the runtime renormalises them so
    evaluate (which checks rows sum to 1) scores the edge file like any other."""
    path = full_export / "classifier_int8.tflite"
    probabilities = load_runtime(path, class_names=CLASS_NAMES).predict(trained["val"][0][:50])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    result = cli("evaluate", "--model", path, "--data", trained["val_dir"], "--json",
                 tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    val_x, val_y, _ = trained["val"]
    keras_accuracy = np.mean(trained["model"].predict(val_x, verbose=0).argmax(axis=1) == val_y)
    assert metrics["n"] == len(val_x) and abs(metrics["accuracy"] - keras_accuracy) <= 0.02


def test_int8_with_float_io(trained, tmp_path):
    path = convert_to_tflite(trained["model"], tmp_path / "m_int8.tflite", "int8",
                             representative_images=trained["val"][0][:20], int8_io="float32")
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["input"]["dtype"] == "float32" and info["output"]["dtype"] == "float32"
    got = load_runtime(path, class_names=CLASS_NAMES).predict(trained["val"][0][:10])
    assert got.shape == (10, 4) and np.allclose(got.sum(axis=1), 1, atol=0.05)
    assert info["contract"] == CONTRACTS["int8_float_io"]
    with pytest.raises(ValueError, match="representative"):
        convert_to_tflite(trained["model"], tmp_path / "x.tflite", "int8")


# ----------------------------------------------------------------------------- REST client


@pytest.fixture(scope="module")
def server(full_export):
    with serving_stand_in({"classifier": tf.saved_model.load(str(full_export / "1"))}) as url:
        yield url


@pytest.fixture
def images_with_broken(trained, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    val_x = trained["val"][0]
    for index in range(3):
        cv2.imwrite(str(folder / f"scan{index}.png"), val_x[index].astype(np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def test_rest_client_round_trip(trained, server, images_with_broken):
    paths = sorted(str(p) for p in images_with_broken.iterdir())
    StandIn.requests.clear()
    results = rest_client.predict_files(server, "classifier", paths)
    first = StandIn.requests[0]
    assert first["signature_name"] == "serving_default"
    assert all(set(item) == {"b64"} for item in first["instances"])
    # The first file alone (to learn the model's kind), then the other three as one batch.
    assert [len(r["instances"]) for r in StandIn.requests] == [1, 3]
    assert "error" in results[0] and "HTTP 400" in results[0]["error"]  # broken.png sorts first
    want = trained["model"].predict(trained["val"][0][:3], verbose=0)
    for row, result in zip(want, results[1:], strict=True):
        np.testing.assert_allclose(result["probabilities"], row, atol=1e-4)
        assert result["class_name"] == CLASS_NAMES[int(row.argmax())]

    records = predict([images_with_broken], server=server, model_name="classifier")
    assert [r["error"] is not None for r in records] == [True, False, False, False]
    with pytest.raises(rest_client.ServingError, match="Servable not found"):
        rest_client.predict_encoded(server, "segmenter", [b"x"])
    with pytest.raises(rest_client.ServingError, match="cannot reach"):
        rest_client.predict_encoded("http://127.0.0.1:9", "classifier", [b"x"], timeout=5)


# ----------------------------------------------------------------------------- predict


def test_predict_folder_with_one_broken_file(trained, images_with_broken, tmp_path):
    out = tmp_path / "predictions.json"
    result = cli("predict", "--model", trained["model_path"], images_with_broken, "--json", out)
    assert result.exit_code == PREDICT_SOME_FAILED, result.output  # one file was unreadable
    assert "3 predicted, 1 unreadable" in result.output
    records = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert records["broken.png"]["error"] == "truncated PNG (no IEND chunk)"
    want = trained["model"].predict(trained["val"][0][:3], verbose=0)
    for index in range(3):
        record = records[f"scan{index}.png"]
        assert record["error"] is None and record["class_name"] == CLASS_NAMES[want[index].argmax()]
        assert np.allclose(list(record["probabilities"].values()), want[index], atol=1e-5)

    csv_path = tmp_path / "p.csv"
    assert cli("predict", "--model", trained["model_path"], images_with_broken,
               "--csv", csv_path).exit_code == PREDICT_SOME_FAILED
    lines = csv_path.read_text().splitlines()
    assert lines[0] == ("path,class_name," + ",".join(CLASS_NAMES)
                        + ",ood_score,in_distribution,error") and len(lines) == 5


def test_predict_exits_1_when_nothing_could_be_predicted(trained, images_with_broken):
    result = cli("predict", "--model", trained["model_path"], images_with_broken / "broken.png")
    assert result.exit_code == 1 and "nothing predicted: all 1 input(s) failed" in result.output


def test_predict_explain_writes_overlays_for_keras_only(trained, full_export, images_with_broken,
                                                        tmp_path):
    explain = tmp_path / "explain"
    result = cli("predict", "--model", trained["model_path"], images_with_broken,
                 "--explain", explain)
    assert result.exit_code == PREDICT_SOME_FAILED, result.output  # broken.png is in the folder
    written = sorted(p.name for p in explain.iterdir())
    assert written == [f"scan{i}_gradcam.png" for i in range(3)]
    picture = cv2.imread(str(explain / written[0]))
    assert picture.shape[1:] == (SIZE, 3) and picture.shape[0] > SIZE  # + caption and scale
    # The export's folder holds no .keras with its spec (model.keras lives elsewhere): refused.
    result = cli("predict", "--model", full_export, images_with_broken, "--explain", explain)
    assert result.exit_code != 0 and "needs the layers and gradients" in result.output


# ----------------------------------------------------------------------------- Grad-CAM


def test_gradcam_highlights_the_informative_quadrant(trained):
    val_x, _, quadrants = trained["val"]
    model = trained["model"]
    assert last_conv_layer_name(model) == "block2_out"
    heatmaps, probabilities = GradCAM(model).heatmaps(val_x[:40])
    assert heatmaps.shape == (40, SIZE, SIZE) and probabilities.shape == (40, 4)
    assert np.all(heatmaps.std(axis=(1, 2)) > 0.05)
    inside, outside = [], []
    for heatmap, quadrant in zip(heatmaps, quadrants[:40], strict=True):
        mask = np.zeros((SIZE, SIZE), bool)
        row, col = (quadrant // 2) * 16, (quadrant % 2) * 16
        mask[row:row + 16, col:col + 16] = True
        inside.append(heatmap[mask].mean())
        outside.append(heatmap[~mask].mean())
    assert np.mean(np.array(inside) > np.array(outside)) >= 0.9
    assert np.mean(inside) > 3 * np.mean(outside)


def test_gradcam_works_on_a_mixed_bfloat16_model(trained):
    """The CPU default policy: the same weights in a mixed_bfloat16 twin give the same maps."""
    val_x = trained["val"][0][:16]
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        twin = build_residual_cnn(SIZE, 1, 4, block_filters=(8, 16), block_kernel_sizes=(3, 3),
                                  block_downsample=(True, False), convs_per_block=1, dense_units=0,
                                  dropout=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    twin.set_weights(trained["model"].get_weights())
    assert twin.get_layer("block2_out").compute_dtype == "bfloat16"
    heatmaps, probabilities = GradCAM(twin).heatmaps(val_x)
    reference, _ = GradCAM(trained["model"]).heatmaps(val_x)
    assert probabilities.dtype == np.float32 and np.all(np.isfinite(heatmaps))
    assert np.corrcoef(heatmaps.ravel(), reference.ravel())[0, 1] > 0.9


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_covers_every_backend(trained, full_export, tmp_path):
    out = tmp_path / "bench.json"
    results = benchmark([trained["model_path"], full_export], images=4, batch_sizes=(1, 4),
                        json_path=out)
    labels = set(results["backends"])
    assert {"keras (model.keras)", "savedmodel (classifier)"} <= labels
    assert {f"tflite classifier_{v}" for v in ("float32", "float16", "dynamic", "int8")} <= labels
    for rows in results["backends"].values():
        assert [r["batch_size"] for r in rows] == [1, 4]
        assert all(r["images_per_second"] > 0 and r["latency_p95_ms"] >= r["latency_p50_ms"]
                   for r in rows)
    assert json.loads(out.read_text())["backends"].keys() == results["backends"].keys()


def test_rest_client_needs_only_standard_library_and_numpy():
    code = ("import sys, braintumor_tf.export.rest_client; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mixed_precision_model_converts_through_a_float32_twin(tmp_path):
    """A model trained under mixed_bfloat16 (the CPU default) must still convert."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_residual_cnn(SIZE, 1, 4, block_filters=(8,), block_kernel_sizes=(3,),
                                   block_downsample=(True,), dense_units=0, dropout=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    pixels, _, _ = synthetic(8, 3)
    path = convert_to_tflite(model, tmp_path / "bf16.tflite", "int8", representative_images=pixels)
    got = load_runtime(path, class_names=CLASS_NAMES).predict(pixels)
    np.testing.assert_allclose(got, model.predict(pixels, verbose=0), atol=0.03)
