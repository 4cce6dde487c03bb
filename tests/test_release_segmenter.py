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
    assert sidecar["task"] == "segmentation" and sidecar["test_time_augmentation"] == "dihedral"
    assert runtime.task == "segmentation"
    assert (runtime.image_size, runtime.channels) == (sidecar["image_size"], sidecar["channels"])
    assert MODEL.stat().st_size < 40 * 1024 * 1024
    card = (RELEASE / "MODEL_CARD.md").read_text()
    assert f"[N, {runtime.image_size}, {runtime.image_size}, 1]" in card


def test_masks_follow_the_slice_under_mirrors_and_turns(runtime):
    """Dihedral averaging makes the masks equivariant; a file without it would not be."""
    image = _slice(runtime.image_size)
    mask = runtime.predict(image)
    assert mask.shape == image.shape and 0.0 <= mask.min() and mask.max() <= 1.0
    for turns, mirror in ((1, False), (2, True), (3, False), (0, True)):
        moved = np.rot90(image, turns, axes=(1, 2))
        expected = np.rot90(mask, turns, axes=(1, 2))
        if mirror:
            moved, expected = moved[:, :, ::-1], expected[:, :, ::-1]
        np.testing.assert_allclose(runtime.predict(np.ascontiguousarray(moved)), expected,
                                   atol=1e-4)
