"""The light UNet encoders and crop training: shapes, preprocessing, any-size weights, learning."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import pytest
import tensorflow as tf
from support import disc_images

from braintumor_tf.config import SEGMENTATION_ENCODERS
from braintumor_tf.data.augment import make_tumour_crop
from braintumor_tf.models.unet import BACKBONES, build_unet
from braintumor_tf.training.losses import BCEDiceLoss, DiceCoefficient

pytestmark = pytest.mark.usefixtures("float32_policy")
SIZE = 64
DECODER = (16, 8, 8, 4, 4)


def test_config_and_model_list_the_same_encoders():
    assert tuple(BACKBONES) == SEGMENTATION_ENCODERS


@pytest.mark.parametrize("encoder", ["mobilenetv2", "efficientnetb0"])
def test_light_encoders_tap_five_scales_and_scale_pixels_as_their_weights_expect(encoder):
    model = build_unet(SIZE, 1, encoder, "none", DECODER, encoder_bn_momentum=0.9)
    assert model.name == f"{encoder}_unet"
    assert model.output_shape == (None, SIZE, SIZE, 1)
    sides = [tensor.shape[1] for tensor in model.get_layer("encoder").outputs]
    assert sides == [32, 16, 8, 4, 2]
    names = [layer.name for layer in model.layers]
    if encoder == "mobilenetv2":  # published weights expect [-1, 1]
        rescale = model.get_layer("rescale")
        assert rescale(np.array([[0.0, 255.0]])).numpy().tolist() == [[-1.0, 1.0]]
    else:  # EfficientNet rescales inside itself: raw pixels go in
        assert "rescale" not in names
    momenta = {layer.momentum for layer in model.get_layer("encoder").layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}


def test_bad_encoder_names_the_choices():
    with pytest.raises(ValueError, match="encoder must be one of"):
        build_unet(SIZE, 1, "vgg16", "none", DECODER)


def test_any_size_model_shares_weights_with_the_fixed_one_and_runs_at_other_sizes():
    keras.utils.set_random_seed(3)
    open_model = build_unet(SIZE, 1, "mobilenetv2", "none", DECODER, any_size=True)
    fixed = build_unet(SIZE, 1, "mobilenetv2", "none", DECODER)
    fixed.set_weights(open_model.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 1)).astype(np.float32)
    np.testing.assert_allclose(open_model(images), fixed(images), atol=1e-6)
    assert open_model(np.zeros((1, 96, 96, 1), np.float32)).shape == (1, 96, 96, 1)


def _disc_batch(count, size, seed=0):
    return disc_images(count, size, seed, radius=(3, 6))


def test_tumour_crops_are_exact_copies_that_show_the_tumour():
    images, masks = _disc_batch(16, 96)
    crop = make_tumour_crop(32, tumour_fraction=1.0, seed=0)
    cropped_images, cropped_masks = (t.numpy() for t in crop(images, masks, tf.constant([1, 2])))
    assert cropped_images.shape == (16, 32, 32, 1) and cropped_masks.shape == (16, 32, 32, 1)
    assert all(cropped_masks[i].sum() > 0 for i in range(16))  # every crop holds tumour
    for i in range(16):  # a crop is the original's pixels at some offset, not a resampling
        found = any(np.array_equal(cropped_images[i], images[i, top:top + 32, left:left + 32])
                    and np.array_equal(cropped_masks[i], masks[i, top:top + 32, left:left + 32])
                    for top in range(65) for left in range(65))
        assert found, i
    again = crop(images, masks, tf.constant([1, 2]))[0].numpy()
    np.testing.assert_array_equal(again, cropped_images)  # stateless: same seed, same crops
    other = crop(images, masks, tf.constant([5, 2]))[0].numpy()
    assert not np.array_equal(other, cropped_images)


def test_uniform_crops_often_miss_a_small_tumour():
    images, masks = _disc_batch(64, 128, seed=1)
    crop = make_tumour_crop(32, tumour_fraction=0.0, seed=0)
    _, cropped_masks = crop(images, masks, tf.constant([0, 0]))
    with_tumour = int(np.sum(cropped_masks.numpy().reshape(64, -1).max(axis=1) > 0))
    assert with_tumour < 48  # uniform centres: most crops of a 128-px image miss a 3-6 px disc


@pytest.mark.slow
def test_a_crop_trained_light_unet_learns_whole_image_masks():
    keras.utils.set_random_seed(0)
    model = build_unet(SIZE, 1, "mobilenetv2", "none", (32, 16, 16, 8, 8), encoder_bn_momentum=0.9,
                       any_size=True)
    images, masks = _disc_batch(64, SIZE, seed=2)
    crop = make_tumour_crop(32, tumour_fraction=0.7, seed=0)
    dataset = (tf.data.Dataset.from_tensor_slices((images, masks)).repeat().batch(16)
               .enumerate().map(lambda step, batch: crop(batch[0], batch[1], tf.stack([step, 0])),
                                num_parallel_calls=tf.data.AUTOTUNE))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=BCEDiceLoss(),
                  metrics=[DiceCoefficient()])
    before = model.evaluate(images, masks, verbose=0, return_dict=True)["dice"]
    model.fit(dataset, steps_per_epoch=20, epochs=6, verbose=0)
    after = model.evaluate(images, masks, verbose=0, return_dict=True)["dice"]
    assert after > 0.5 and after > before + 0.3, (before, after)
