"""The committed release segmenter: its contract, and that the averaging it claims is inside it."""

import json
from pathlib import Path

import numpy as np
import pytest

from braintumor_tf.export.runtimes import load_runtime

RELEASE = Path(__file__).resolve().parents[1] / "savedmodels" / "segmenter"
MODEL = RELEASE / "segmenter_dynamic.tflite"

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="no release segmenter committed")


@pytest.fixture(scope="module")
def runtime():
    return load_runtime(MODEL, num_threads=2)


def _slice(size, seed=0):
    """A bright off-centre blob in a grey head-like disc: nothing symmetric about it."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size] / size
    head = ((rows - 0.5) ** 2 + (cols - 0.5) ** 2 < 0.16) * 90.0
    blob = ((rows - 0.35) ** 2 + (cols - 0.62) ** 2 < 0.004) * 120.0
    image = head + blob + rng.normal(0, 8, (size, size))
    return image.clip(0, 255).astype(np.float32)[None, :, :, None]


def test_contract_matches_the_sidecar_and_the_card(runtime):
    sidecar = json.loads((RELEASE / "segmenter_dynamic.json").read_text())
    assert sidecar["file"] == MODEL.name
    assert sidecar["task"] == "segmentation" and sidecar["test_time_augmentation"] == "mirror"
    assert runtime.task == "segmentation"
    assert (runtime.image_size, runtime.channels) == (sidecar["image_size"], sidecar["channels"])
    assert MODEL.stat().st_size < 40 * 1024 * 1024
    card = (RELEASE / "MODEL_CARD.md").read_text()
    assert f"[N, {runtime.image_size}, {runtime.image_size}, 1]" in card
    assert "**Test-time augmentation: mirror**" in card


def test_masks_follow_the_slice_under_a_left_right_mirror(runtime):
    """Mirror averaging makes the masks mirror-equivariant; a file without it would not be."""
    image = _slice(runtime.image_size)
    mask = runtime.predict(image)
    assert mask.shape == image.shape and 0.0 <= mask.min() and mask.max() <= 1.0
    mirrored = np.ascontiguousarray(image[:, :, ::-1])
    np.testing.assert_allclose(runtime.predict(mirrored), mask[:, :, ::-1], atol=1e-4)


def test_the_committed_keras_file_is_the_source_of_the_release(runtime):
    """savedmodels/segmenter/segmenter.keras is what SERVING.md exports: it must compute the file."""
    source = RELEASE / "segmenter.keras"
    keras_runtime = load_runtime(source, tta="mirror")
    images = np.concatenate([_slice(runtime.image_size, seed) for seed in range(2)])
    float_masks = keras_runtime.predict(images)
    file_masks = runtime.predict(images)
    assert float_masks.shape == file_masks.shape
    # Measured: mean 0.0001 / max 0.04 with mirror averaging; the same weights without it differ
    # from the file by a mean of 0.001 and up to 0.48, another model by far more.
    assert np.abs(float_masks - file_masks).mean() < 0.0005
    assert np.abs(float_masks - file_masks).max() < 0.15


@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_committed_parity_reports_are_what_their_json_generates(task):
    # The markdown is read by people, the JSON by tools: a hand edit to one would leave them
    # telling different stories.
    from braintumor_tf.export.parity import format_parity_markdown

    folder = RELEASE.parent / task
    report = json.loads((folder / "tflite_parity.json").read_text())
    assert format_parity_markdown(report) == (folder / "tflite_parity.md").read_text()
