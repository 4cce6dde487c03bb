import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import pytest
import tensorflow as tf

from braintumor_tf.training.losses import (
    BCEDiceLoss,
    DiceCoefficient,
    DiceLoss,
    make_segmentation_loss,
)
from braintumor_tf.training.seg_metrics import mean_dice

# Image 0: truth 2 px, prediction 0.5 on both and 0.5 on a third -> soft Dice 2*1/(2+1.5).
# Image 1: truth empty, prediction 0 -> soft Dice (0+1)/(0+1) = 1 with smooth 1, loss 0.
TRUTH = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], np.float32)[..., None]
PREDICTED = np.array([[[0.5, 0.5], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)[..., None]


def _bce_by_hand(truth, predicted, eps=1e-7):
    p = np.clip(predicted, eps, 1 - eps)
    return float(np.mean(-(truth * np.log(p) + (1 - truth) * np.log(1 - p))))


def test_dice_loss_matches_hand_computed_values():
    image0 = 1 - (2 * 1.0 + 1) / (2 + 1.5 + 1)
    assert float(DiceLoss()(TRUTH, PREDICTED)) == pytest.approx((image0 + 0.0) / 2, abs=1e-6)
    no_smooth = 1 - 2 * 1.0 / 3.5
    assert float(DiceLoss(smooth=0.0)(TRUTH[:1], PREDICTED[:1])) == pytest.approx(no_smooth, abs=1e-6)


def test_bce_dice_is_the_weighted_sum():
    bce = _bce_by_hand(TRUTH, PREDICTED)
    dice = float(DiceLoss()(TRUTH, PREDICTED))
    assert float(make_segmentation_loss("bce")(TRUTH, PREDICTED)) == pytest.approx(bce, rel=1e-5)
    assert float(BCEDiceLoss()(TRUTH, PREDICTED)) == pytest.approx(bce + dice, rel=1e-5)
    weighted = BCEDiceLoss(bce_weight=0.5, dice_weight=2.0)(TRUTH, PREDICTED)
    assert float(weighted) == pytest.approx(0.5 * bce + 2.0 * dice, rel=1e-5)


@pytest.mark.parametrize("name", ["bce", "dice", "bce_dice"])
def test_losses_are_float32_under_bfloat16_inputs(name):
    loss = make_segmentation_loss(name)
    value = loss(tf.constant(TRUTH, tf.bfloat16), tf.constant(PREDICTED, tf.bfloat16))
    assert value.dtype == tf.float32
    assert float(value) == pytest.approx(float(loss(TRUTH, PREDICTED)), rel=1e-5)


def test_losses_and_metric_round_trip_through_their_config():
    for obj in (DiceLoss(smooth=0.5), BCEDiceLoss(0.3, 0.7), DiceCoefficient(threshold=0.4)):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(clone) is type(obj) and clone.get_config() == obj.get_config()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="bce_dice"):
        make_segmentation_loss("focal")
    with pytest.raises(ValueError, match="smooth"):
        DiceLoss(smooth=-1)
    with pytest.raises(ValueError, match="not both 0"):
        BCEDiceLoss(0, 0)
    with pytest.raises(ValueError, match="threshold"):
        DiceCoefficient(threshold=1.0)


def test_dice_metric_matches_numpy_mean_dice_over_several_batches():
    rng = np.random.default_rng(1)
    truth = (rng.random((10, 8, 8, 1)) > 0.7).astype(np.float32)
    truth[3] = 0  # an empty truth predicted empty and one predicted non-empty
    truth[4] = 0
    probabilities = rng.random((10, 8, 8, 1)).astype(np.float32)
    probabilities[3] = 0.1
    metric = DiceCoefficient()
    assert metric.name == "dice"
    for start, stop in ((0, 4), (4, 7), (7, 10)):
        metric.update_state(truth[start:stop], tf.constant(probabilities[start:stop], tf.bfloat16))
    expected = mean_dice(truth, tf.constant(probabilities, tf.bfloat16).numpy().astype(np.float32))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
