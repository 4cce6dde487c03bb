"""Distillation into a smaller student: weights carried over, answers copied."""

import json

import keras
import numpy as np
import pytest

from braintumor_tf.models.classifier import build_residual_cnn
from braintumor_tf.models.tta import with_test_time_augmentation
from braintumor_tf.training.distill import distill, soft_targets, transfer_weights

SMALL = dict(image_size=32, channels=1, num_classes=3, stem_filters=8, stem_stride=2,
             block_kernel_sizes=(3, 3, 3), dense_units=16, dropout=0.0)


def _teacher():
    return build_residual_cnn(block_filters=(8, 16, 32), block_downsample=(True, True, False),
                              **SMALL)


def _student():
    return build_residual_cnn(block_filters=(8, 16), block_downsample=(True, True),
                              **{**SMALL, "block_kernel_sizes": (3, 3)})


def _bars(count, seed):
    """Three classes by where a bright bar lies (top, middle, bottom third): a teacher learns it
    in a few epochs, and its answers do not depend on a left-right flip."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    images = rng.uniform(0, 60, (count, 32, 32, 1)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        top = 2 + label * 10 + rng.integers(0, 3)
        image[top:top + 4, 4:28] += 180
    return images, labels


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


def test_soft_targets_refuses_what_is_not_probabilities():
    pixels = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match="probability row"):
        soft_targets(lambda x: np.ones((len(x), 3)), pixels)
    with pytest.raises(ValueError, match="no images"):
        soft_targets(lambda x: x, pixels[:0])
    assert soft_targets(lambda x: np.full((len(x), 2), 0.5), pixels, batch_size=2).shape == (5, 2)


@pytest.mark.slow
def test_student_learns_the_teachers_answers(tmp_path):
    keras.utils.set_random_seed(0)
    train, labels = _bars(256, seed=0)
    held_out, held_labels = _bars(96, seed=1)
    teacher = _teacher()
    teacher.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    teacher.fit(train, labels, epochs=5, batch_size=32, verbose=0)
    teacher_top1 = teacher.predict(held_out, verbose=0).argmax(axis=1)
    assert np.mean(teacher_top1 == held_labels) > 0.85    # a teacher worth copying (1.0 here)

    student = _student()
    before = np.mean(student.predict(held_out, verbose=0).argmax(axis=1) == teacher_top1)
    summary = distill(student, train, soft_targets(lambda x: teacher.predict(x, verbose=0), train),
                      held_out, soft_targets(lambda x: teacher.predict(x, verbose=0), held_out),
                      tmp_path, epochs=5, learning_rate=3e-3, verbose=0)
    assert summary["val_agreement"] >= 0.9 > before   # 1.0 in runs on an idle machine
    saved = keras.saving.load_model(tmp_path / "model.keras")
    after = np.mean(saved.predict(held_out, verbose=0).argmax(axis=1) == teacher_top1)
    assert after == pytest.approx(summary["val_agreement"])   # the best epoch is what was saved
    assert json.loads((tmp_path / "distill.json").read_text())["best_epoch"] >= 1
    assert len((tmp_path / "distill_history.csv").read_text().splitlines()) == 6


def test_distill_checks_its_inputs(tmp_path):
    student = _student()
    images = np.zeros((4, 32, 32, 1), np.float32)
    with pytest.raises(ValueError, match="classes"):
        distill(student, images, np.full((4, 2), 0.5), images, np.full((4, 2), 0.5), tmp_path)
    with pytest.raises(ValueError, match="one target row"):
        distill(student, images, np.full((3, 3), 1 / 3), images, np.full((4, 3), 1 / 3), tmp_path)
    with pytest.raises(ValueError, match="epochs"):
        distill(student, images, np.full((4, 3), 1 / 3), images, np.full((4, 3), 1 / 3), tmp_path,
                epochs=0)
    targets = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="not both or neither"):
        distill(student, images, None, images, targets, tmp_path)
    with pytest.raises(ValueError, match="not both or neither"):
        distill(student, images, targets, images, targets, tmp_path, teacher=student)
    with pytest.raises(ValueError, match="mixup"):
        distill(student, images, targets, images, targets, tmp_path, mixup=0.4)


@pytest.mark.slow
def test_consistent_matching_copies_a_teacher_asked_on_every_batch(tmp_path):
    """The teacher answers each augmented, mixed batch inside the training step; no fixed
    targets exist, yet the student ends up giving the teacher's answers on new images."""
    keras.utils.set_random_seed(0)
    train, labels = _bars(256, seed=0)
    held_out, _ = _bars(96, seed=1)
    teacher = _teacher()
    teacher.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    teacher.fit(train, labels, epochs=5, batch_size=32, verbose=0)
    held_targets = teacher.predict(held_out, verbose=0)

    student = _student()
    before = np.mean(student.predict(held_out, verbose=0).argmax(axis=1)
                     == held_targets.argmax(axis=1))
    summary = distill(student, train, None, held_out, held_targets, tmp_path, epochs=6,
                      learning_rate=3e-3, verbose=0, teacher=teacher, mixup=0.4)
    assert summary["mode"] == "consistent"
    assert summary["val_agreement"] >= 0.9 > before
    saved = keras.saving.load_model(tmp_path / "model.keras")   # the student, not the wrapper
    assert saved.count_params() == student.count_params()
