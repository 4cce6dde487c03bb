"""A full disk or a read-only --out ends in one line naming the path, not a traceback (issue 30,
item 10). The disk is made full by a write that raises what the OS raises (ENOSPC), or what
TensorFlow's C++ writers raise (an OpError whose text ends in 'No space left on device')."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from braintumor_tf import writes
from braintumor_tf.cli import main


def _enospc(path="somewhere"):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _images(folder: Path, count: int = 4) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        target = folder / ("glioma" if k % 2 else "notumor") / f"{k}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((40, 40)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(target)
        paths.append(target)
    return paths


def _one_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def test_write_failed_is_an_os_error_the_cli_catches():
    error = writes.failure("/x/y", _enospc("/x/y"))
    assert isinstance(error, OSError) and isinstance(error, ValueError)
    assert str(error) == ("cannot write /x/y: the disk is full (no space left on device): free "
                          "some space and run again") and error.errno == errno.ENOSPC
    assert writes.failure("/x/y", FileNotFoundError(errno.ENOENT, "gone")) is None
    import tensorflow as tf

    tf_error = tf.errors.ResourceExhaustedError(None, None, "/x/y: No space left on device")
    assert "disk is full" in str(writes.failure("/x/y", tf_error))
    assert writes.failure("/x/y", RuntimeError("No space left on device")) is None


def test_a_full_disk_costs_the_signature_cache_only_with_one_warning(tmp_path, monkeypatch,
                                                                      caplog):
    from braintumor_tf.data import signatures

    paths = _images(tmp_path / "data")
    expected, _, _ = signatures.compute_signatures(paths, 1, False)

    def full(file, **arrays):
        Path(file).write_bytes(b"half")  # a partial file, as a full disk leaves
        raise _enospc(file)

    monkeypatch.setattr(signatures.np, "savez", full)
    with caplog.at_level(logging.WARNING):
        sigs, bad, ok = signatures.cached_signatures(paths, tmp_path / "cache", 1, False)
    np.testing.assert_array_equal(sigs, expected)
    assert not bad and len(ok) == 4
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"cannot write the signature cache {tmp_path / 'cache' / 'signatures.npz'}" in warning
    assert "the disk is full" in warning and "\n" not in warning
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left


@pytest.mark.usefixtures("float32_policy")
@pytest.mark.parametrize("kind", ["os", "tensorflow"])
def test_a_full_disk_under_the_tensorboard_writer_stops_training_in_one_line(tmp_path,
                                                                             monkeypatch, kind):
    import keras
    import tensorflow as tf

    from braintumor_tf.training.callbacks import TensorBoardLogs

    def full(*args, **kwargs):
        if kind == "os":
            raise _enospc(tmp_path / "logs" / "train" / "events.out.tfevents")
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{tmp_path}/logs/train/events.out.tfevents; No space left on device")

    import tensorflow.summary  # the module Keras' callback uses (not always tf.summary's object)

    for module in {id(tf.summary): tf.summary, id(tensorflow.summary): tensorflow.summary}.values():
        monkeypatch.setattr(module, "scalar", full)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, "softmax")(inputs))
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    with pytest.raises(writes.WriteFailed) as caught:
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[TensorBoardLogs(str(tmp_path / "logs"), write_graph=False)])
    assert str(caught.value) == (f"cannot write TensorBoard logs in {tmp_path / 'logs'}: the "
                                 "disk is full (no space left on device): free some space and "
                                 "run again")
    assert isinstance(caught.value, ValueError)  # the CLI's _friendly_errors makes it one line


@pytest.mark.usefixtures("float32_policy")
@pytest.mark.parametrize("kind", ["os", "tensorflow"])
def test_a_full_disk_during_a_savedmodel_export_is_one_line_naming_it(tmp_path, monkeypatch,
                                                                      kind):
    import keras
    import tensorflow as tf

    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.export.savedmodel import export_classifier

    def full(module, path, **kwargs):
        Path(path, "saved_model.pb").write_bytes(b"half")
        if kind == "os":
            raise _enospc(Path(path) / "variables" / "variables.data-00000-of-00001")
        raise tf.errors.UnknownError(None, None, f"{path}/variables: No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", full)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, "softmax", dtype="float32")(x))
    out = tmp_path / "models" / "classifier" / "1"
    with pytest.raises(writes.WriteFailed) as caught:
        export_classifier(model, out, CLASS_NAMES)
    assert str(caught.value) == (f"cannot write the SavedModel {out}: the disk is full (no space "
                                 "left on device): free some space and run again")
    assert list(out.parent.iterdir()) == []  # the partial export is removed, nothing published


def _read_only(monkeypatch, folder: Path):
    """Writes under ``folder`` fail as on a read-only mount (root ignores chmod, so the
    refusal is made where the OS would make it: mkdir and open)."""
    real_mkdir, real_open = os.mkdir, os.open
    inside = str(folder)

    def refuse(path):
        if os.fsdecode(os.fspath(path)).startswith(inside):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("exists", [True, False])
def test_a_read_only_out_is_one_line_for_audit_and_evaluate(tmp_path, monkeypatch, exists):
    _images(tmp_path / "data")
    (tmp_path / "model.keras").write_bytes(b"not read: --out is checked first")
    out = tmp_path / "readonly"
    if exists:
        out.mkdir()
    _read_only(monkeypatch, out)
    line = _one_line(CliRunner().invoke(main, ["data", "audit", str(tmp_path / "data"),
                                               "--out", str(out / "audit")]))
    assert line == (f"Error: cannot write --out {out / 'audit'}: the file system is read-only: "
                    "choose another place")
    line = _one_line(CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "model.keras"),
                                               "--data", str(tmp_path / "data"),
                                               "--out", str(out / "eval")]))
    assert line == (f"Error: cannot write --out {out / 'eval'}: the file system is read-only: "
                    "choose another place")


def test_a_disk_filling_up_while_audit_writes_its_reports_is_one_line(tmp_path, monkeypatch):
    from braintumor_tf.commands import audit

    _images(tmp_path / "data")

    def full(path, *args, **kwargs):
        raise _enospc(path)

    monkeypatch.setattr(audit, "_write_duplicates_csv", full)
    line = _one_line(CliRunner().invoke(main, ["data", "audit", str(tmp_path / "data"),
                                               "--out", str(tmp_path / "audit")]))
    assert line == (f"Error: cannot write {tmp_path / 'audit' / 'duplicates.csv'}: the disk is "
                    "full (no space left on device): free some space and run again")
