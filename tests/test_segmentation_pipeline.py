"""Segmentation as a user runs it: configs, a tiny CLI training on phantom masks, evaluate on COCO."""

import json
import os

import cv2
import numpy as np
import pytest
from support import run_python, write_png

from braintumor_tf.config import CONFIG_DIR, load_config

SEG_CONFIG = CONFIG_DIR / "segmentation.yaml"
TINY = [
    "--config", str(SEG_CONFIG),
    "--set", "data.phantom_images_per_class=8", "--set", "data.phantom_image_size=64",
    "--set", "data.image_size=64", "--set", "segmentation.decoder_filters=[16, 8, 8, 4, 4]",
    "--set", "train.batch_size=8", "--set", "train.precision=float32",
    "--set", "train.run_eagerly=true", "--set", "train.verbose=2",
]




# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["segmentation.yaml", "segmentation_seed.yaml",
                                  "segmentation_release.yaml", "segmentation_mobile.yaml"])
def test_segmentation_configs_load(name):
    config = load_config(CONFIG_DIR / name)
    assert config.task == "segmentation"
    assert config.train.monitor == "val_dice"
    assert config.data.image_size % 32 == 0
    assert "segmentation" in config.to_dict()


def test_release_config_is_the_default_trained_on_the_expert_outlines():
    # The release's card and RESULTS call it "the baseline on the outlines": a setting changed in
    # one file and not the other would make that untrue without anyone noticing.
    release = load_config(CONFIG_DIR / "segmentation_release.yaml").to_dict()
    default = load_config(CONFIG_DIR / "segmentation.yaml", ["segmentation.targets=masks"]).to_dict()
    assert release == default
    assert load_config(CONFIG_DIR / "segmentation.yaml").segmentation.targets == "annotations"


def test_seed_config_is_the_study():
    config = load_config(CONFIG_DIR / "segmentation_seed.yaml")
    assert (config.data.image_size, config.data.channels) == (224, 1)
    assert (config.train.batch_size, config.train.epochs) == (64, 30)
    assert (config.optimizer.name, config.optimizer.learning_rate) == ("adam", 0.001)
    assert config.segmentation.loss == "bce" and config.segmentation.encoder_weights == "imagenet"
    schedule = config.schedule
    assert (schedule.warmup_fraction, schedule.decay_fraction, schedule.floor_factor) == (0.2, 0.3, 0.1)


def test_classification_config_has_no_segmentation_section():
    assert "segmentation" not in load_config().to_dict()


@pytest.mark.parametrize("override, message", [
    ("segmentation.loss=focal", "segmentation.loss"),
    ("segmentation.targets=boxes", "segmentation.targets"),
    ("segmentation.decoder_filters=[8, 8]", "decoder_filters"),
    ("segmentation.augment.zoom=1.5", "segmentation.augment.zoom"),
    ("segmentation.augment.shear=0.1", "unknown config key.*segmentation.augment.shear"),
    ("segmentation.encoder=vgg16", "segmentation.encoder must be one of"),
    ("segmentation.train_crop=100", "segmentation.train_crop"),
    ("segmentation.train_crop=256", "below data.image_size"),
    ("segmentation.crop_tumour_fraction=2", "segmentation.crop_tumour_fraction"),
    ("segmentation.threshold=1", "segmentation.threshold"),
    ("data.image_size=100", "multiple of 32"),
    ("train.monitor=val_accuracy", "train.monitor"),
    ("task=detection", "task must be one of"),
])
def test_bad_segmentation_values_give_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(SEG_CONFIG, [override])


def test_mask_targets_need_a_mask_folder_for_real_data():
    with pytest.raises(ValueError, match="mask_root"):
        load_config(SEG_CONFIG, ["segmentation.targets=masks", "data.root=/data"])
    config = load_config(SEG_CONFIG, ["segmentation.targets=masks", "data.root=/data",
                                      "segmentation.mask_root=/masks"])
    assert config.segmentation.mask_root == "/masks"


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("seg") / "run"
    run_python("-m", "braintumor_tf.train", "--run", str(run_dir), *TINY, "--set", "train.epochs=3")
    return run_dir


@pytest.mark.slow
def test_cli_training_writes_the_run_directory(seg_run):
    for name in ("config.yaml", "split_manifest.csv", "bad_files.csv", "history.csv",
                 "training_curves.png", "learning_rate.png", "best.keras", "model.keras",
                 "summary.json", "test/metrics.json", "test/predictions.csv",
                 "test/overlays_masks_best.png", "test/overlays_masks_worst.png"):
        assert (seg_run / name).exists(), name
    assert any((seg_run / "logs").rglob("*tfevents*"))
    assert load_config(seg_run / "config.yaml").task == "segmentation"
    summary = json.loads((seg_run / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["targets"] == "masks"
    assert summary["parameters"] > 0 and summary["macs_per_image"] > 0
    test = summary["test"]
    assert test["n"] == summary["test_images"] > 0
    for key in ("micro_iou", "mean_iou", "mean_dice"):
        assert 0.0 <= test["vs_masks"][key] <= 1.0
    assert "vs_annotations" not in test  # phantoms come with masks only
    manifest = (seg_run / "split_manifest.csv").read_text()
    assert ",tumour," in manifest and ",empty," in manifest


@pytest.mark.slow
def test_cli_training_lowers_the_loss(seg_run):
    from braintumor_tf.training.callbacks import read_history

    history = read_history(seg_run / "history.csv")
    assert len(history["loss"]) == 3
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    assert "val_dice" in history


# ----------------------------------------------------------------------------- split


def _split_folders_with_a_straddling_duplicate(root, masks_root, per_folder=12, size=64):
    """train/valid/test folders of distinct random slices; test holds a mirrored copy of a
    training slice, as the public pkdarabi folders do."""
    rng = np.random.default_rng(3)
    first_train = None
    for split in ("train", "valid", "test"):
        for k in range(per_folder):
            image = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.uint8), (0, 0), 3)
            if split == "test" and k == 0:
                image = first_train[:, ::-1]
            elif split == "train" and k == 0:
                first_train = image
            mask = (image > np.median(image)).astype(np.uint8) * 255
            write_png(root / split / f"{split}_{k}.png", image)
            write_png(masks_root / split / f"{split}_{k}.png", mask)


@pytest.mark.parametrize("use_split_folders", [False, True])
def test_split_folders_are_pooled_group_aware_unless_asked_to_keep_them(tmp_path, use_split_folders):
    from braintumor_tf.tasks.segmentation import SegmentationTask

    root, masks = tmp_path / "data", tmp_path / "masks"
    _split_folders_with_a_straddling_duplicate(root, masks)
    overrides = [f"data.root={root}", f"segmentation.mask_root={masks}", "segmentation.targets=masks"]
    if use_split_folders:
        overrides.append("segmentation.use_split_folders=true")
    config = load_config(SEG_CONFIG, overrides)
    assert config.segmentation.use_split_folders is use_split_folders  # default: pooled
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = SegmentationTask().prepare_data(config, run_dir).rows
    split_of = {os.path.basename(row["path"]): row["split"] for row in rows}
    assert len(rows) == 36
    if use_split_folders:
        assert {name: split_of[name] for name in ("train_0.png", "valid_3.png", "test_0.png")} == {
            "train_0.png": "train", "valid_3.png": "val", "test_0.png": "test"}
    else:
        assert split_of["train_0.png"] == split_of["test_0.png"]  # the copy follows its original
        moved = sum(split_of[name] != name.split("_")[0].replace("valid", "val") for name in split_of)
        assert moved > 0  # really re-split, not the folders
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], set()).add(row["split"])
    straddling = sum(len(splits) > 1 for splits in groups.values())
    assert straddling == (1 if use_split_folders else 0)


# ----------------------------------------------------------------------------- evaluate




def _write_coco_and_masks(root, masks_root, size=80):
    """Two split folders of grey images with a bright disc: COCO boxes around it, masks of it."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("valid", 3)):
        images, annotations = [], []
        for k in range(count):
            name = f"{split}_{k}.jpg"
            image = rng.normal(60, 8, (size, size)).clip(0, 255).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            if k:  # the first image of each split has no tumour and no annotation
                centre, radius = (20 + 15 * k, 40), 8 + 2 * k
                cv2.circle(image, centre, radius, 220, -1)
                cv2.circle(mask, centre, radius, 255, -1)
                x0, y0 = centre[0] - radius, centre[1] - radius
                x1, y1 = centre[0] + radius, centre[1] + radius
                annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": 1,
                                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
            write_png(root / split / name, image)
            write_png(masks_root / split / f"{split}_{k}.png", mask)
            images.append({"id": k, "file_name": name, "height": size, "width": size})
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "tumour"}]}
        (root / split / "_annotations.coco.json").write_text(json.dumps(coco))


@pytest.mark.slow
def test_evaluate_scores_annotations_and_masks_and_writes_overlays(seg_run, tmp_path):
    data, masks = tmp_path / "coco", tmp_path / "masks"
    _write_coco_and_masks(data, masks)
    out_json, out_dir = tmp_path / "seg.json", tmp_path / "eval"
    run_python("-m", "braintumor_tf", "evaluate", "--model", str(seg_run / "model.keras"),
        "--data", str(data), "--masks", str(masks), "--json", str(out_json), "--out", str(out_dir))
    report = json.loads(out_json.read_text())
    assert report["n"] == 6
    for key in ("vs_annotations", "vs_masks"):
        assert report[key]["n"] == 6
        for metric in ("micro_iou", "mean_iou", "mean_dice"):
            assert 0.0 <= report[key][metric] <= 1.0, (key, metric)
    for name in ("annotations", "masks"):
        for which in ("best", "worst"):
            assert (out_dir / f"overlays_{name}_{which}.png").stat().st_size > 0


@pytest.mark.slow
def test_evaluate_takes_a_run_manifest_and_scores_only_its_split(seg_run, tmp_path):
    data, masks = tmp_path / "coco", tmp_path / "masks"
    _write_coco_and_masks(data, masks)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = ["path,label,class_name,group,split"]
    for group, (split, k) in enumerate([(s, k) for s in ("train", "valid") for k in range(3)]):
        chosen = "test" if (split, k) in {("train", 1), ("valid", 2)} else "train"
        # Relative to the run directory, as if training had been started from there.
        lines.append(f"../coco/{split}/{split}_{k}.jpg,1,tumour,{group},{chosen}")
    (run_dir / "split_manifest.csv").write_text("\n".join(lines) + "\n")
    out_json = tmp_path / "seg.json"
    run_python("-m", "braintumor_tf", "evaluate", "--model", str(seg_run / "model.keras"),
        "--data", str(run_dir / "split_manifest.csv"), "--split", "test", "--masks", str(masks),
        "--json", str(out_json))
    report = json.loads(out_json.read_text())
    assert report["n"] == 2 and report["vs_annotations"]["n"] == 2 and report["vs_masks"]["n"] == 2


def test_evaluate_pipeline_matches_hand_scores_for_a_perfect_model(tmp_path):
    """A stand-in runtime that returns the truth itself scores 1 everywhere vs masks, and the boxes
    (which contain the discs) score below 1 vs annotations."""
    from braintumor_tf.data.segmentation import find_segmentation_images, mask_at_size
    from braintumor_tf.evaluation.segmentation import evaluate_segmentation_images
    from braintumor_tf.export.runtimes import Runtime

    data, masks = tmp_path / "coco", tmp_path / "masks"
    _write_coco_and_masks(data, masks)
    source = find_segmentation_images(data, masks)
    reader = source.mask_reader("masks")

    class TruthRuntime:
        task, kind, path, image_size, channels, threshold = "segmentation", "stub", "truth", 64, 1, 0.5
        expect_task = Runtime.expect_task

        def __init__(self):
            self.queue = []

        def predict(self, pixels):
            out = np.stack([mask_at_size(reader, p, 64) for p in self.queue[:len(pixels)]])
            self.queue = self.queue[len(pixels):]
            return out[..., None].astype(np.float32)

    runtime = TruthRuntime()
    runtime.queue = list(source.image_paths)
    report = evaluate_segmentation_images(runtime, source.image_paths, source, batch_size=16,
                                          verbose=False)
    # At the model's size the stand-in is the truth itself; at each image's own size (80 px) its
    # 64-px map is resized back, so the outlines move by about a pixel.
    at_model_size = report["at_model_size"]["vs_masks"]
    assert at_model_size["mean_dice"] == pytest.approx(1.0)
    assert at_model_size["micro_iou"] == pytest.approx(1.0) and at_model_size["median_hd95"] == 0.0
    native = report["vs_masks"]
    assert 0.9 < native["mean_dice"] <= 1.0 and native["n"] == at_model_size["n"]
    assert native["n_empty_truth"] == 2 and native["n_hd95_undefined"] == 2
    assert native["mean_hd95"] <= 2.0
    assert 0.5 < report["vs_annotations"]["micro_iou"] < 1.0
    sizes = native["by_tumour_size"]        # empty truths have no size: left out of every bin
    assert sum(row["n"] for row in sizes.values()) == native["n"] - native["n_empty_truth"]


def test_dice_by_tumour_size_bins_each_slice_once():
    from braintumor_tf.evaluation.segmentation import by_tumour_size, format_size_breakdown

    dice = [0.0, 0.5, 0.9, 0.8, 0.7, 0.3]
    fractions = [0.002, 0.009, 0.02, 0.05, 0.5, 0.0]     # the last slice has no tumour
    breakdown = by_tumour_size(dice, fractions)
    assert [breakdown[b]["n"] for b in ("small", "medium", "large")] == [2, 1, 2]
    assert breakdown["small"]["mean_dice"] == pytest.approx(0.25)
    assert breakdown["small"]["fraction_dice_below_0_1"] == pytest.approx(0.5)
    assert breakdown["large"]["median_dice"] == pytest.approx(0.75)
    assert "small" in format_size_breakdown(breakdown)
    assert by_tumour_size([], [])["medium"] == {"tumour_fraction": [0.01, 0.03], "n": 0,
                                                "mean_dice": None, "median_dice": None,
                                                "fraction_dice_below_0_1": None}
    with pytest.raises(ValueError, match="tumour sizes"):
        by_tumour_size([0.5], [0.1, 0.2])


# ----------------------------------------------------------------------------- export


@pytest.mark.slow
def test_savedmodel_export_matches_keras_and_serves_masks_at_the_input_size(seg_run, tmp_path):
    import tensorflow as tf

    from braintumor_tf.data.discover import CLASS_NAMES
    from braintumor_tf.export.runtimes import load_runtime
    from braintumor_tf.export.savedmodel import export_segmenter

    keras_runtime = load_runtime(seg_run / "model.keras", class_names=CLASS_NAMES)
    assert keras_runtime.task == "segmentation" and keras_runtime.image_size == 64
    export_segmenter(keras_runtime.keras_model, tmp_path / "sm")
    saved_runtime = load_runtime(tmp_path / "sm")
    assert saved_runtime.task == "segmentation"
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 1)).astype(np.float32)
    expected = keras_runtime.predict(pixels)
    assert expected.shape == (3, 64, 64, 1)
    np.testing.assert_allclose(saved_runtime.predict(pixels), expected, atol=1e-4)

    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    image = np.random.default_rng(1).integers(0, 255, (80, 96), dtype=np.uint8)
    encoded = cv2.imencode(".png", image)[1].tobytes()
    served = loaded.signatures["serving_default"](images=tf.constant([encoded, encoded]))
    assert tuple(served["mask_probability"].shape) == (2, 80, 96, 1)
    assert served["mask"].dtype == tf.uint8
    by_pixels = loaded.signatures["predict_pixels"](pixels=tf.constant(image[None, :, :, None],
                                                                        tf.float32))
    np.testing.assert_allclose(by_pixels["mask_probability"].numpy()[0],
                               served["mask_probability"].numpy()[0], atol=1e-4)
