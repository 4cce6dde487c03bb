"""Inference defaults read off the machine: batch size from cores and free memory, LiteRT threads."""

import pytest

from braintumor_tf.machine import (
    BYTES_PER_IMAGE,
    available_memory_bytes,
    default_batch_size,
    usable_cores,
)


@pytest.mark.parametrize("cores, memory, expected", [
    (2, 24 * 2**30, 16),            # this machine: 8 per core
    (64, 512 * 2**30, 128),         # a big server: capped
    (8, 8 * BYTES_PER_IMAGE, 2),    # little free memory: a quarter of it holds the batch
    (2, 10 * 2**20, 1),             # almost none: still one image at a time
    (4, None, 32),                  # no /proc/meminfo: cores only
])
def test_batch_size_follows_cores_and_free_memory(cores, memory, expected, monkeypatch):
    if memory is None:
        monkeypatch.setattr("braintumor_tf.machine.available_memory_bytes", lambda: None)
    assert default_batch_size(cores=cores, memory=memory) == expected


def test_meminfo_is_read_and_a_missing_file_is_none(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n")
    assert available_memory_bytes(str(meminfo)) == 1000 * 1024
    assert available_memory_bytes(str(tmp_path / "missing")) is None
    assert usable_cores() >= 1


def test_predict_without_batch_size_says_what_it_chose(tmp_path, caplog):
    import keras
    import numpy as np
    from PIL import Image

    from braintumor_tf.commands.predict import predict

    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "a.png")
    inputs = keras.Input((32, 32, 1), name="pixels")
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(pooled)).save(tmp_path / "m.keras")
    caplog.set_level("INFO", logger="braintumor_tf")
    records = predict([tmp_path / "a.png"], model_path=tmp_path / "m.keras")
    assert records[0]["error"] is None
    assert f"batch size {default_batch_size()} (from {usable_cores()} usable core(s)" in caplog.text
