import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import pytest
from support import disc_images

from braintumor_tf.models.layers import IMAGENET_BGR_MEANS, CaffePreprocessing, GreyToRGB
from braintumor_tf.models.macs import count_macs_nested
from braintumor_tf.models.unet import build_resnet50_unet
from braintumor_tf.training.losses import BCEDiceLoss, DiceCoefficient

SIZE = 64  # ResNet50 downsamples 32x: the smallest size with a 2x2 bottleneck


pytestmark = pytest.mark.usefixtures("float32_policy")


@pytest.fixture(scope="module")
def scratch_unet():
    keras.mixed_precision.set_global_policy("float32")
    return build_resnet50_unet(SIZE, channels=1, encoder_weights="none")


def _blobs(count, seed=0):
    return disc_images(count, SIZE, seed)


def test_builds_with_the_documented_contract(scratch_unet):
    assert scratch_unet.input_shape == (None, SIZE, SIZE, 1)
    assert scratch_unet.output_shape == (None, SIZE, SIZE, 1)
    names = [layer.name for layer in scratch_unet.layers]
    assert names[:4] == ["pixels", "rescale", "grey_to_rgb", "encoder"]
    assert "imagenet_preprocessing" not in names  # random encoder: plain /255 scaling
    encoder = scratch_unet.get_layer("encoder")
    assert [tensor.shape[1] for tensor in encoder.outputs] == [32, 16, 8, 4, 2]
    assert count_macs_nested(scratch_unet) > 2 * count_macs_nested(encoder) > 0
    outputs = scratch_unet(np.full((2, SIZE, SIZE, 1), 128.0, np.float32))
    assert outputs.dtype == "float32" and tuple(outputs.shape) == (2, SIZE, SIZE, 1)


def test_mixed_bfloat16_gives_float32_masks_and_a_finite_loss():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_resnet50_unet(SIZE, channels=1, encoder_weights="none", decoder_filters=(32, 16, 16, 8, 8))
    assert model.get_layer("encoder").get_layer("conv1_conv").compute_dtype == "bfloat16"
    images, masks = _blobs(2)
    model.compile(optimizer="adam", loss=BCEDiceLoss(), run_eagerly=True)
    assert model(images).dtype == "float32"
    assert np.isfinite(model.train_on_batch(images, masks))


@pytest.mark.slow
def test_trains_on_blob_masks_and_the_loss_falls(scratch_unet):
    images, masks = _blobs(8)
    scratch_unet.compile(optimizer=keras.optimizers.Adam(1e-3), loss=BCEDiceLoss(),
                         metrics=[DiceCoefficient()], run_eagerly=True)  # skips a ~45 s graph trace
    history = scratch_unet.fit(images, masks, batch_size=8, epochs=6, verbose=0).history
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["dice"][-1] > history["dice"][0]


def test_keras_file_round_trip_keeps_custom_layers_and_outputs(scratch_unet, tmp_path):
    images, _ = _blobs(2, seed=3)
    if scratch_unet.loss is None:  # compiled by the (slow) training test when that one ran first
        scratch_unet.compile(optimizer="adam", loss=BCEDiceLoss(), metrics=[DiceCoefficient()])
    path = tmp_path / "unet.keras"
    scratch_unet.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("grey_to_rgb"), GreyToRGB)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), scratch_unet.predict(images, verbose=0),
                               atol=1e-5)
    assert loaded.loss.get_config() == BCEDiceLoss().get_config()


def test_preprocessing_layers_compute_and_serialise():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)  # R, G, B
    layer = CaffePreprocessing()
    expected = [30.0 - IMAGENET_BGR_MEANS[0], 20.0 - IMAGENET_BGR_MEANS[1], 10.0 - IMAGENET_BGR_MEANS[2]]
    np.testing.assert_allclose(np.asarray(layer(pixel))[0, 0, 0], expected, rtol=1e-6)
    clone = CaffePreprocessing.from_config(layer.get_config())
    assert clone.means == layer.means
    grey = GreyToRGB()(np.full((1, 2, 2, 1), 7.0, np.float32))
    assert tuple(grey.shape) == (1, 2, 2, 3) and np.all(np.asarray(grey) == 7.0)


def _perturbed_resnet50(path: Path) -> dict:
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(5)
    resnet.set_weights([rng.normal(0.0, 0.05, w.shape).astype(np.float32) for w in resnet.get_weights()])
    if path.name.endswith(".weights.h5"):
        resnet.save_weights(path)
    else:  # Keras' published "_notop.h5" files use the legacy layout (weights matched by order)
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as handle:
            legacy_h5_format.save_weights_to_hdf5_group(handle, resnet)
    return {layer.name: layer.get_weights() for layer in resnet.layers if layer.weights}


@pytest.mark.parametrize("file_name", ["encoder.weights.h5", "resnet50_notop.h5"])
def test_a_local_weights_file_loads_into_the_encoder(tmp_path, file_name, scratch_unet):
    path = tmp_path / file_name
    saved = _perturbed_resnet50(path)
    model = build_resnet50_unet(SIZE, channels=1, encoder_weights=str(path), freeze_encoder=True)
    assert isinstance(model.get_layer("imagenet_preprocessing"), CaffePreprocessing)
    encoder = model.get_layer("encoder")
    assert not encoder.trainable
    for name in ("conv1_conv", "conv2_block3_3_conv", "conv4_block6_3_bn", "conv5_block3_3_conv"):
        for loaded, expected, fresh in zip(encoder.get_layer(name).get_weights(), saved[name],
                                           scratch_unet.get_layer("encoder").get_layer(name).get_weights(),
                                           strict=True):
            np.testing.assert_array_equal(loaded, expected)
            assert not np.allclose(loaded, fresh)
    assert not encoder.trainable_weights and model.trainable_weights  # only the decoder trains


def test_imagenet_offline_fails_fast_with_one_clear_message():
    cache_dirs = [Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")), Path("/tmp/.keras")]
    if any((d / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").exists()
           for d in cache_dirs):
        pytest.skip("ImageNet ResNet50 weights are cached on this machine")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="could not be downloaded") as caught:
        build_resnet50_unet(SIZE, channels=1, encoder_weights="imagenet")
    assert time.perf_counter() - start < 60
    message = str(caught.value)
    assert "encoder_weights: none" in message and ".weights.h5" in message and "notop.h5" in message


@pytest.mark.parametrize("bad, message", [
    (dict(image_size=100), "multiple of 32"),
    (dict(channels=2), "channels"),
    (dict(decoder_filters=(64, 32, 16, 8)), "decoder_filters"),
    (dict(encoder_weights="imagnet"), "no such file"),
    (dict(encoder_weights=None), "encoder_weights"),
    (dict(encoder_bn_momentum=1.0), "encoder_bn_momentum"),
])
def test_constructor_rejects_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        build_resnet50_unet(**{"image_size": SIZE, "encoder_weights": "none", **bad})


def _encoder_bn_momenta(model):
    encoder = model.get_layer("encoder")
    return {layer.momentum for layer in encoder.layers
            if isinstance(layer, keras.layers.BatchNormalization)}


def test_encoder_bn_momentum_applies_to_every_encoder_norm_and_survives_saving(scratch_unet, tmp_path):
    assert _encoder_bn_momenta(scratch_unet) == {0.99}  # Keras' ResNet50 default when not set
    model = build_resnet50_unet(SIZE, channels=1, encoder_weights="none", encoder_bn_momentum=0.9)
    assert _encoder_bn_momenta(model) == {0.9}
    model.save(tmp_path / "unet.keras")
    assert _encoder_bn_momenta(keras.models.load_model(tmp_path / "unet.keras")) == {0.9}
