import json

import numpy as np
import pytest

from braintumor_tf.training.seg_metrics import (
    SegmentationAccumulator,
    format_segmentation_report,
    mean_dice,
    mean_iou,
    micro_iou,
    pixel_accuracy,
    segmentation_report,
)


def _masks(*rows):
    return np.array(rows, dtype=np.float32)


# Image 0: truth 4 px, prediction 2 of them -> I 2, U 4: IoU 0.5, Dice 2*2/6 = 2/3.
# Image 1: truth 1 px, prediction 1 px elsewhere -> I 0, U 2: IoU 0, Dice 0.
TRUTH = _masks([[1, 1], [1, 1]], [[1, 0], [0, 0]])
PREDICTED = _masks([[0.9, 0.6], [0.4, 0.1]], [[0.0, 0.7], [0.2, 0.3]])


def test_hand_computed_values():
    report = segmentation_report(TRUTH, PREDICTED)
    assert report["micro_iou"] == pytest.approx(2 / 6)
    assert report["mean_iou"] == pytest.approx(0.25)
    assert report["mean_dice"] == pytest.approx((2 / 3 + 0) / 2)
    assert report["micro_dice"] == pytest.approx(2 * 2 / (5 + 3))
    assert report["pixel_accuracy"] == pytest.approx(4 / 8)  # image 0: 2 right, image 1: 2 right
    assert report["per_image_dice"] == pytest.approx([2 / 3, 0.0])
    assert report["fraction_dice_below_0_1"] == 0.5
    json.dumps(report)
    assert "mean dice" in format_segmentation_report(report)


def test_empty_masks_both_empty_is_perfect_and_one_empty_is_zero():
    empty = np.zeros((2, 2))
    full = np.ones((2, 2))
    truth = np.stack([empty, empty, full])
    predicted = np.stack([empty, full, empty])
    report = segmentation_report(truth, predicted)
    assert report["per_image_iou"] == [1.0, 0.0, 0.0]
    assert report["per_image_dice"] == [1.0, 0.0, 0.0]
    assert report["n_empty_truth"] == 2 and report["n_empty_prediction"] == 2
    assert micro_iou(empty[None], empty[None]) == 1.0


def test_micro_and_mean_iou_differ_when_sizes_differ():
    # A large tumour segmented perfectly, a small one missed: micro IoU is dominated by the large one.
    truth = np.zeros((2, 10, 10))
    truth[0] = 1
    truth[1, 0, 0] = 1
    predicted = truth.copy()
    predicted[1] = 0
    assert micro_iou(truth, predicted) == pytest.approx(100 / 101)
    assert mean_iou(truth, predicted) == pytest.approx(0.5)
    assert mean_dice(truth, predicted) == pytest.approx(0.5)
    assert pixel_accuracy(truth, predicted) == pytest.approx(199 / 200)


def test_accumulating_batches_equals_one_pass_and_accepts_channel_axis_and_255_masks():
    rng = np.random.default_rng(0)
    truth = (rng.random((7, 8, 8, 1)) > 0.6).astype(np.uint8) * 255
    probabilities = rng.random((7, 8, 8, 1)).astype(np.float32)
    accumulator = SegmentationAccumulator()
    for start in range(0, 7, 3):
        accumulator.update(truth[start:start + 3], probabilities[start:start + 3])
    assert accumulator.report() == segmentation_report(truth[..., 0] > 0, probabilities)


def test_threshold_is_strictly_greater():
    truth = np.ones((1, 1, 2))
    assert mean_dice(truth, np.array([[[0.5, 0.51]]])) == pytest.approx(2 / 3)
    assert mean_dice(truth, np.array([[[0.5, 0.51]]]), threshold=0.4) == 1.0


@pytest.mark.parametrize("truth, predicted, message", [
    (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), "differ in shape"),
    (np.zeros((4, 4)), np.zeros((4, 4)), r"\[N, H, W\]"),
    (np.zeros((1, 2, 2)), np.full((1, 2, 2), np.nan), "NaN"),
])
def test_malformed_input_is_rejected(truth, predicted, message):
    with pytest.raises(ValueError, match=message):
        segmentation_report(truth, predicted)


def test_empty_accumulator_and_bad_threshold_are_rejected():
    with pytest.raises(ValueError, match="no images"):
        SegmentationAccumulator().report()
    with pytest.raises(ValueError, match="threshold"):
        SegmentationAccumulator(threshold=1.5)


def test_hausdorff_95_in_pixels():
    from braintumor_tf.training.seg_metrics import hausdorff_95

    truth = np.zeros((40, 40), bool)
    truth[10:20, 10:20] = True
    shifted = np.roll(truth, 3, axis=1)
    assert hausdorff_95(truth, truth) == 0.0
    assert hausdorff_95(truth, shifted) == pytest.approx(3.0)
    assert hausdorff_95(shifted, truth) == pytest.approx(3.0)  # symmetric
    assert np.isnan(hausdorff_95(truth, np.zeros_like(truth)))
    report = segmentation_report(np.stack([truth, truth, np.zeros_like(truth)]),
                                 np.stack([truth, shifted, truth]).astype(np.float32))
    assert report["median_hd95"] == pytest.approx(1.5) and report["n_hd95_undefined"] == 1
    assert report["per_image_hd95"][2] is None
