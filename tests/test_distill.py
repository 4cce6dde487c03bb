"""Distillation through the training driver (train.teacher): weights carried over, answers
copied."""

from pathlib import Path

import keras
import numpy as np
import pytest
from support import write_png

from braintumor_tf.commands.train import train
from braintumor_tf.config import load_config
from braintumor_tf.data.decode import read_image
from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.models.classifier import build_residual_cnn
from braintumor_tf.models.tta import with_test_time_augmentation
from braintumor_tf.spec import read_spec, spec_for, write_keras_spec
from braintumor_tf.tasks.classification import load_teacher
from braintumor_tf.training.callbacks import read_history
from braintumor_tf.training.distill import transfer_weights

SMALL = dict(image_size=32, channels=1, num_classes=3, stem_filters=8, stem_stride=2,
             block_kernel_sizes=(3, 3, 3), dense_units=16, dropout=0.0)


def _teacher():
    return build_residual_cnn(block_filters=(8, 16, 32), block_downsample=(True, True, False),
                              **SMALL)


def _student():
    return build_residual_cnn(block_filters=(8, 16), block_downsample=(True, True),
                              **{**SMALL, "block_kernel_sizes": (3, 3)})


def test_transfer_copies_shared_layers_and_skips_reshaped_ones():
    keras.utils.set_random_seed(1)
    teacher, student = _teacher(), _student()
    copied = transfer_weights(with_test_time_augmentation(teacher, "mirror"), student)
    assert "stem_conv" in copied and "block2_conv2" in copied
    assert "block3_conv1" not in copied            # the student has no third block
    assert "dense" not in copied                   # 16 inputs in the student, 32 in the teacher
    np.testing.assert_array_equal(student.get_layer("block2_conv2").get_weights()[0],
                                  teacher.get_layer("block2_conv2").get_weights()[0])
    assert not np.allclose(student.get_layer("dense").get_weights()[0][:16],
                           teacher.get_layer("dense").get_weights()[0][:16])


def _bar_folders(root, count, seed):
    """The four classes as folders of PNGs, the class by where a bright bar lies (quarters)."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % 4
        image = rng.uniform(0, 60, (32, 32)).astype(np.float32)
        top = 1 + label * 8 + rng.integers(0, 3)
        image[top:top + 4, 4:28] += 180
        write_png(root / CLASS_NAMES[label] / f"bar{index}.png", image.astype(np.uint8))
    return root


def _bar_pixels(paths):
    return np.stack([read_image(path, 1) for path in paths])


def test_the_training_driver_distils_a_student_that_answers_like_its_teacher(tmp_path):
    """The teacher gives each bar position the *next* class, so a student that learnt the folder
    labels would disagree with it everywhere: agreeing shows it learnt the teacher."""
    keras.utils.set_random_seed(0)
    data = _bar_folders(tmp_path / "data", 160, seed=0)
    paths = sorted(str(p) for p in data.rglob("*.png"))
    labels = np.array([CLASS_NAMES.index(Path(p).parent.name) for p in paths])
    teacher = build_residual_cnn(block_filters=(8, 16, 32), block_downsample=(True, True, False),
                                 **{**SMALL, "num_classes": 4})
    teacher.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    teacher.fit(_bar_pixels(paths), (labels + 1) % 4, epochs=8, batch_size=32, verbose=0)
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    write_keras_spec(teacher_path, spec_for("classification", CLASS_NAMES, 32, 1))
    held_out = sorted(str(p) for p in _bar_folders(tmp_path / "new", 40, seed=1).rglob("*.png"))
    teacher_top1 = teacher.predict(_bar_pixels(held_out), verbose=0).argmax(axis=1)
    held_labels = np.array([CLASS_NAMES.index(Path(p).parent.name) for p in held_out])
    assert np.mean(teacher_top1 == (held_labels + 1) % 4) > 0.9  # a teacher worth copying

    config = load_config(None, [
        f"data.root={data}", "data.subjects=none", "data.image_size=32", "data.cache=false",
        "data.augment.rotation=0", "data.augment.zoom=0", "model.stem_filters=8",
        "model.stem_stride=2", "model.stem_kernel_size=2", "model.block_filters=[8, 16]",
        "model.block_kernel_sizes=[3, 3]", "model.block_downsample=[true, true]",
        "model.dense_units=16", "model.dropout=0", "train.batch_size=16", "train.epochs=14",
        "train.verbose=0", "train.precision=float32", "optimizer.learning_rate=0.003",
        f"train.teacher={teacher_path}"])
    summary = train(config, tmp_path / "run")
    history = read_history(tmp_path / "run" / "history.csv")
    assert history["loss"][-1] < history["loss"][0] / 2  # the KL to the teacher falls
    assert max(history["val_accuracy"]) >= 0.9  # accuracy here means agreement with the teacher
    student = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert student.count_params() < teacher.count_params() and summary["epochs"] == 14
    student_top1 = student.predict(_bar_pixels(held_out), verbose=0).argmax(axis=1)
    assert np.mean(student_top1 == teacher_top1) >= 0.9
    assert np.mean(student_top1 == held_labels) <= 0.1
    spec = read_spec(tmp_path / "run" / "model.keras")
    assert spec.training_data["teacher"] == str(teacher_path)


def test_a_teacher_must_be_a_classifier_of_the_students_channels(tmp_path):
    from support import bright_segmenter

    segmenter = bright_segmenter(tmp_path / "segmenter.keras", 32)
    with pytest.raises(ValueError, match="is a segmentation model, not a classifier"):
        load_teacher(segmenter, channels=1)
    teacher = build_residual_cnn(block_filters=(8,), block_downsample=(True,),
                                 **{**SMALL, "num_classes": 4, "block_kernel_sizes": (3,)})
    teacher.save(tmp_path / "teacher.keras")
    with pytest.raises(ValueError, match="takes 1-channel images, the student 3"):
        load_teacher(tmp_path / "teacher.keras", channels=3)
    with pytest.raises(ValueError, match="train.teacher .* is for classification"):
        load_config("segmentation", [f"train.teacher={tmp_path / 'teacher.keras'}"])
