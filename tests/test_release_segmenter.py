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
    assert sidecar["task"] == "segmentation"
    assert runtime.task == "segmentation"
    assert (runtime.image_size, runtime.channels) == (sidecar["image_size"], sidecar["channels"])
    assert MODEL.stat().st_size < 40 * 1024 * 1024
    card = (RELEASE / "MODEL_CARD.md").read_text()
    assert f"[N, {runtime.image_size}, {runtime.image_size}, 1]" in card
    assert f"**Test-time augmentation: {sidecar['test_time_augmentation']}.**" in card
    assert f"Threshold: {sidecar['threshold']:g}" in card


def test_the_cards_test_numbers_are_the_committed_report_of_this_file():
    """The card is read by people, test_metrics.json was written by `evaluate` on this file: a
    retrained release with a card left behind would fail here."""
    report = json.loads((RELEASE / "test_metrics.json").read_text())
    sidecar = json.loads((RELEASE / "segmenter_dynamic.json").read_text())
    assert (report["image_size"], report["threshold"]) == (sidecar["image_size"], sidecar["threshold"])
    assert report["resolution"] == "native" and report["model_kind"] == "tflite"
    card = (RELEASE / "MODEL_CARD.md").read_text()
    masks, boxes = report["vs_masks"], report["vs_annotations"]
    assert (f"| expert outlines (its training target) | **{masks['mean_dice']:.3f}** | "
            f"{masks['median_dice']:.3f} | {100 * masks['fraction_dice_below_0_1']:.1f} % |") in card
    assert f"| COCO boxes | {boxes['mean_dice']:.3f} | {boxes['median_dice']:.3f} |" in card
    assert f"{masks['mean_hd95']:.1f} / {masks['median_hd95']:.1f}" in card
    for size, row in masks["by_tumour_size"].items():
        assert (f"| {size} | {row['n']} | {row['mean_dice']:.3f} | "
                f"{100 * row['fraction_dice_below_0_1']:.1f} % |") in card


def test_the_release_file_writes_masks_at_each_images_own_size(tmp_path):
    """What the card tells users to run, on the committed file: a mask per image, at the image's
    size (not the model's), with the bright blob inside the grey disc found where it is."""
    from click.testing import CliRunner
    from PIL import Image

    from braintumor_tf.cli import main

    scans = tmp_path / "scans"
    scans.mkdir()
    sizes = {"wide": (300, 200), "square": (256, 256)}
    for name, (width, height) in sizes.items():
        image = _slice(max(width, height))[0, :height, :width, 0]
        Image.fromarray(image.astype(np.uint8)).save(scans / f"{name}.png")
    result = CliRunner().invoke(main, ["predict", "--model", str(MODEL), str(scans),
                                       "--masks-out", str(tmp_path / "masks"),
                                       "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 0, result.output
    for name, (width, height) in sizes.items():
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{name}_mask.png"))
        assert mask.shape[:2] == (height, width)
        assert set(np.unique(mask)) <= {0, 255}
        side = max(width, height)
        rows, cols = np.mgrid[:height, :width] / side
        blob = (rows - 0.35) ** 2 + (cols - 0.62) ** 2 < 0.004  # _slice's blob
        found = mask > 0
        # Measured: Dice ~0.9 on both (the file marks the blob and a thin rim around it).
        assert 2 * (found & blob).sum() / (found.sum() + blob.sum()) > 0.7


@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_committed_parity_reports_are_what_their_json_generates(task):
    # The markdown is read by people, the JSON by tools: a hand edit to one would leave them
    # telling different stories.
    from braintumor_tf.export.parity import format_parity_markdown

    folder = RELEASE.parent / task
    report = json.loads((folder / "tflite_parity.json").read_text())
    assert format_parity_markdown(report) == (folder / "tflite_parity.md").read_text()
