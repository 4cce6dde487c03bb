"""In-domain encoder pretraining: the ResNet50 classifier, its encoder weights file, and the
exclusion of near-duplicates of the segmentation slices from its data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import cv2
import keras
import numpy as np
import pytest

from braintumor_tf.config import CONFIG_DIR, ModelConfig, load_config
from braintumor_tf.data.discover import ImageRecord
from braintumor_tf.data.duplicates import best_matches, drop_near_duplicates_of
from braintumor_tf.data.signatures import image_signature
from braintumor_tf.models.classifier import build_classifier
from braintumor_tf.models.resnet50_classifier import build_resnet50_classifier, save_encoder_weights
from braintumor_tf.models.unet import build_resnet50_unet

SIZE = 64


pytestmark = pytest.mark.usefixtures("float32_policy")


def _slices(count, seed, size=96):
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.uint8), (0, 0), 3)
            for _ in range(count)]


def test_best_matches_finds_a_rotated_copy_and_nothing_else():
    images = _slices(6, 0)
    references = [np.rot90(images[2]), _slices(1, 9)[0]]
    index, corr = best_matches(np.stack([image_signature(i) for i in images]),
                               np.stack([image_signature(r) for r in references]), 0.85)
    assert index.tolist() == [-1, -1, 0, -1, -1, -1]
    assert corr[2] > 0.99 and np.all(corr[[0, 1, 3, 4, 5]] < 0.85)


def test_near_duplicates_of_the_excluded_folder_are_dropped(tmp_path):
    images = _slices(8, 1)
    records = []
    for k, image in enumerate(images):
        path = tmp_path / "cls" / "glioma" / f"g{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        records.append(ImageRecord(path=str(path), label=0, source="cls"))
    seg = tmp_path / "seg"
    seg.mkdir()
    # A mirrored, resized, re-encoded copy of g3 and an unrelated slice.
    cv2.imwrite(str(seg / "copy.jpg"), cv2.resize(images[3][:, ::-1], (128, 128)))
    cv2.imwrite(str(seg / "other.png"), _slices(1, 7)[0])
    kept, dropped = drop_near_duplicates_of(records, [str(seg / "copy.jpg"), str(seg / "other.png")],
                                            0.85, tmp_path / "cache")
    assert [r.path for r in kept] == [r.path for k, r in enumerate(records) if k != 3]
    assert len(dropped) == 1 and dropped[0]["path"].endswith("g3.png")
    assert dropped[0]["matches"].endswith("copy.jpg")


@pytest.mark.slow
def test_resnet50_classifier_learns_and_its_encoder_loads_into_the_unet(tmp_path):
    """Bright-disc vs dark-square slices: a separable task the classifier must solve."""
    rng = np.random.default_rng(0)
    x = rng.normal(60, 10, (48, SIZE, SIZE, 1)).astype("float32")
    y = np.arange(48) % 2
    for k in range(48):
        centre = tuple(int(v) for v in rng.integers(16, 48, 2))
        if y[k]:
            cv2.circle(x[k], centre, 10, 230, -1)
    keras.utils.set_random_seed(0)
    model = build_classifier(ModelConfig(name="resnet50", num_classes=2, dropout=0.0), SIZE, 1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert model.output.dtype == "float32"

    path = save_encoder_weights(model, tmp_path / "encoder.weights.h5")
    unet = build_resnet50_unet(SIZE, 1, encoder_weights=path)
    want = model.get_layer("resnet50").get_layer("conv3_block2_2_conv").get_weights()[0]
    got = unet.get_layer("encoder").get_layer("conv3_block2_2_conv").get_weights()[0]
    np.testing.assert_array_equal(got, want)
    # Same front end as the classifier: the encoder sees the same features for the same pixels.
    assert unet.get_layer("imagenet_preprocessing") is not None


def test_constructor_and_config_reject_bad_values():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_resnet50_classifier(image_size=100)
    with pytest.raises(ValueError, match="model.name"):
        load_config(CONFIG_DIR / "encoder_pretraining.yaml", ["model.name=vgg"])
    with pytest.raises(ValueError, match="no 'resnet50' backbone"):
        save_encoder_weights(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]),
                             "x.weights.h5")


def test_pretraining_config_loads_with_the_exclusion():
    config = load_config(CONFIG_DIR / "encoder_pretraining.yaml",
                         ["data.exclude_duplicates_of=[../shared/data/segmentation/pkdarabi]"])
    assert config.model.name == "resnet50" and config.data.image_size == 128
    assert config.data.exclude_duplicates_of == ("../shared/data/segmentation/pkdarabi",)


@pytest.mark.slow
def test_pretraining_run_excludes_copies_and_writes_encoder_weights(tmp_path):
    import csv
    import shutil

    from braintumor_tf.commands.train import train
    from braintumor_tf.data.phantoms import write_phantom_dataset

    data = tmp_path / "phantoms"
    write_phantom_dataset(data, 8, 64, 0)
    excluded_folder = tmp_path / "segmentation_slices"
    excluded_folder.mkdir()
    copied = sorted((data / "glioma").iterdir())[:2]
    for path in copied:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(excluded_folder / f"{path.stem}_flipped.jpg"), image[::-1])
    config = load_config(CONFIG_DIR / "encoder_pretraining.yaml", [
        f"data.root={data}", f"data.exclude_duplicates_of=[{excluded_folder}]",
        "data.image_size=64", "data.val_fraction=0.25", "data.test_fraction=0.0",
        "train.epochs=1", "train.batch_size=8", "train.precision=float32",
        "train.run_eagerly=true", "train.verbose=0"])
    run_dir = tmp_path / "run"
    summary = train(config, run_dir)
    with open(run_dir / "excluded.csv", newline="") as handle:
        excluded = sorted(os.path.basename(row["path"]) for row in csv.DictReader(handle))
    assert excluded == sorted(p.name for p in copied)
    with open(run_dir / "split_manifest.csv", newline="") as handle:
        kept = {os.path.basename(row["path"]) for row in csv.DictReader(handle)}
    assert len(kept) == 30 and not kept & set(excluded)
    assert summary["encoder_weights_file"] == str(run_dir / "encoder.weights.h5")
    build_resnet50_unet(SIZE, 1, encoder_weights=summary["encoder_weights_file"])  # loads
    shutil.rmtree(run_dir / "cache")
