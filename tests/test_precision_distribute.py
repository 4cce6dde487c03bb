import subprocess
import sys
import textwrap

import pytest

from braintumor_tf.training.distribute import make_strategy
from braintumor_tf.training.precision import cpu_supports_bfloat16, resolve_precision


def test_auto_precision_never_picks_float16_on_a_cpu():
    assert resolve_precision("auto", has_gpu=False, cpu_bf16=True) == "mixed_bfloat16"
    assert resolve_precision("auto", has_gpu=False, cpu_bf16=False) == "float32"
    assert resolve_precision("auto", has_gpu=True, cpu_bf16=True) == "mixed_float16"
    assert resolve_precision("float32", has_gpu=True) == "float32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("half")


def test_cpu_flags_are_read(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert cpu_supports_bfloat16(cpuinfo)
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx2\n")
    assert not cpu_supports_bfloat16(cpuinfo)
    assert not cpu_supports_bfloat16(tmp_path / "missing")


def test_strategy_choice():
    assert make_strategy("auto", tf_config="").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="distribute"):
        make_strategy("tpu")
    # Several workers train (tests/test_multi_worker.py); asking for them without a cluster in
    # TF_CONFIG is said up front.
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        make_strategy("multi_worker", tf_config="")


def test_training_under_mirrored_strategy_on_two_logical_cpus():
    """Logical devices must be configured before TF starts, hence a fresh process."""
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from braintumor_tf.training.distribute import make_strategy
        from braintumor_tf.models.classifier import build_residual_cnn
        strategy = make_strategy("mirrored")
        assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
        keras.utils.set_random_seed(0)
        labels = np.arange(128) % 2
        x = np.random.default_rng(0).normal(60, 10, (128, 16, 16, 1)).astype("float32")
        x[labels == 1, :, :8] += 120
        y = keras.utils.to_categorical(labels, 2)
        with strategy.scope():
            model = build_residual_cnn(16, 1, 2, 4, 1, (8,), (3,), (True,))
            model.compile(optimizer=keras.optimizers.Adam(3e-3),
                          loss="categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
        print("LOSS", history.history["loss"][0], history.history["loss"][-1])
        assert history.history["loss"][-1] < history.history["loss"][0]
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert "OK" in result.stdout, result.stderr[-3000:]
