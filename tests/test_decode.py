import csv
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from support import pixel_bombs

from braintumor_tf.data.decode import (
    DecodeError,
    check_images,
    decode_bytes,
    make_tf_loader,
    read_image,
    write_bad_file_report,
)
from braintumor_tf.data.image_header import header_size

H, W = 7, 5  # non-square, odd


def rgb_image(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path, img_opencv_order):
    ok, buf = cv2.imencode(path.suffix, img_opencv_order)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def jpeg_bytes(h=32, w=24):
    ok, buf = cv2.imencode(".jpg", rgb_image(h, w)[:, :, ::-1])
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_rgb_roundtrip(tmp_path, ext):
    rgb = rgb_image()
    path = write(tmp_path / f"a{ext}", rgb[:, :, ::-1].copy())
    out = read_image(path, channels=3)
    assert out.dtype == np.float32 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, rgb.astype(np.float32))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".jpg"])
def test_grey_to_1_and_3_channels(tmp_path, ext):
    grey = np.full((H, W), 120, np.uint8)
    path = write(tmp_path / f"g{ext}", grey)
    one = read_image(path, channels=1)
    three = read_image(path, channels=3)
    assert one.shape == (H, W, 1) and three.shape == (H, W, 3)
    np.testing.assert_allclose(one[:, :, 0], 120, atol=2)
    for c in range(3):
        np.testing.assert_array_equal(three[:, :, c], one[:, :, 0])


def test_jpeg_rgb_close(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 30
    out = read_image(write(tmp_path / "c.jpg", rgb[:, :, ::-1].copy()), channels=3)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), [200, 100, 30], atol=3)


def test_rgba_drops_alpha(tmp_path):
    rgb = rgb_image()
    bgra = np.dstack([rgb[:, :, ::-1], np.zeros((H, W), np.uint8)])
    out = read_image(write(tmp_path / "a.png", bgra), channels=3)
    np.testing.assert_array_equal(out, rgb.astype(np.float32))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_uses_the_images_own_range(tmp_path, ext):
    """A 12-bit scan in a 16-bit file: divided by 257 it would arrive almost black (0..16)."""
    scan = np.tile(np.linspace(0, 4095, W), (H, 1)).astype(np.uint16)
    out = read_image(write(tmp_path / f"d{ext}", scan), channels=1)[..., 0]
    assert out.min() == 0.0 and out.max() == 255.0
    assert np.all(np.diff(out[0]) >= 0)  # order kept
    np.testing.assert_allclose(out[0, W // 2], 127.5, atol=4)
    flat = read_image(write(tmp_path / f"f{ext}", np.full((H, W), 3000, np.uint16)), channels=1)
    np.testing.assert_array_equal(flat, 0.0)
    assert read_image(tmp_path / f"d{ext}", channels=3).shape == (H, W, 3)


def test_red_to_grey_is_luminance(tmp_path):
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[..., 2] = 255  # pure red
    out = read_image(write(tmp_path / "r.png", bgr), channels=1)
    np.testing.assert_allclose(out, 0.299 * 255, atol=0.5)


@pytest.mark.parametrize("size", [3, 5, 16])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_shape_and_range(tmp_path, size, channels):
    path = write(tmp_path / "a.png", rgb_image(H, W)[:, :, ::-1].copy())
    out = read_image(path, channels=channels, image_size=size)
    assert out.shape == (size, size, channels) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0


def test_resize_keeps_constant_image(tmp_path):
    path = write(tmp_path / "a.png", np.full((9, 13), 77, np.uint8))
    for size in (4, 20):
        np.testing.assert_allclose(read_image(path, 1, size), 77, atol=1e-3)


def test_decode_bytes_matches_read_image(tmp_path):
    path = tmp_path / "ü ñ.jpg"  # non-ASCII path
    path.write_bytes(jpeg_bytes())
    np.testing.assert_array_equal(decode_bytes(path.read_bytes(), 3, 8), read_image(path, 3, 8))


def test_jpeg_trailing_padding_is_fine():
    assert decode_bytes(jpeg_bytes() + b"\x00" * 10, 3).shape == (32, 24, 3)


def test_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        decode_bytes(jpeg_bytes(), 2)


def bad_files(tmp_path):
    png = cv2.imencode(".png", rgb_image(32, 32))[1].tobytes()
    data = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg_bytes()[:300],
        "text.jpg": b"this is not an image\n" * 5,
        "garbage.png": png[:16] + bytes(range(256)) * 4 + png[-12:],
        "cut.png": png[: len(png) // 2],
    }
    paths = {}
    for name, content in data.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(content)
    return paths


@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty.jpg", "empty"),
        ("truncated.jpg", "truncated JPEG"),
        ("text.jpg", "not a readable image"),
        ("garbage.png", "not a readable image"),
        ("cut.png", "truncated PNG"),
    ],
)
def test_broken_files_raise(tmp_path, name, reason):
    path = bad_files(tmp_path)[name]
    with pytest.raises(DecodeError, match=reason) as info:
        read_image(path, 3)
    assert str(path) in str(info.value)


def test_check_images_and_report(tmp_path):
    bad = bad_files(tmp_path)
    good = write(tmp_path / "ok.png", rgb_image())
    missing = tmp_path / "missing.png"
    paths = [good, *bad.values(), missing]
    ok, failed = check_images(paths)
    assert ok == [str(good)]
    assert [b["path"] for b in failed] == [str(p) for p in [*bad.values(), missing]]
    assert all(b["reason"] and not b["reason"].startswith(str(tmp_path)) for b in failed)

    report = tmp_path / "bad.csv"
    write_bad_file_report(failed, report)
    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [b["path"] for b in failed]
    write_bad_file_report([], report)
    assert report.read_text().strip() == "path,reason"


def test_tf_loader_matches_read_image(tmp_path):
    paths = [
        write(tmp_path / "a.png", rgb_image(H, W)[:, :, ::-1].copy()),
        write(tmp_path / "b.jpg", np.full((40, 30), 90, np.uint8)),
        write(tmp_path / "c.tif", np.full((8, 8), 257 * 50, np.uint16)),
    ]
    for channels in (1, 3):
        load = make_tf_loader(channels, 12)
        ds = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        assert ds.element_spec.shape == (12, 12, channels)
        got = [x.numpy() for x in ds]
        for p, arr in zip(paths, got, strict=True):
            np.testing.assert_array_equal(arr, read_image(p, channels, 12))


def test_tf_loader_error_can_be_ignored(tmp_path):
    good = write(tmp_path / "a.png", rgb_image())
    bad = bad_files(tmp_path)["truncated.jpg"]
    ds = tf.data.Dataset.from_tensor_slices([str(good), str(bad), str(good)])
    ds = ds.map(make_tf_loader(3, 4), num_parallel_calls=tf.data.AUTOTUNE)
    with pytest.raises(tf.errors.OpError):
        list(ds)
    assert len(list(ds.ignore_errors())) == 2


def test_a_file_name_that_is_not_utf8_is_handled_like_any_other(tmp_path):
    """Linux allows any bytes in a name; it reaches Python with surrogate escapes, which neither a
    UTF-8 CSV nor a tf.string could hold before."""
    from braintumor_tf.data.datasets import image_dataset
    from braintumor_tf.data.discover import ImageRecord, discover_images
    from braintumor_tf.data.manifest import read_manifest, write_manifest

    folder = tmp_path / "glioma"
    folder.mkdir()
    name = os.fsdecode(b"scan_\xff.png")
    cv2.imwrite(str(tmp_path / "plain.png"), np.full((20, 20), 7, np.uint8))
    os.rename(tmp_path / "plain.png", folder / name)
    records = discover_images(tmp_path)
    assert [os.path.basename(r.path) for r in records] == [name]
    write_manifest(tmp_path / "m.csv", [ImageRecord(records[0].path, 0, "x")], [0], ["train"],
                   subjects=["S1"])
    assert read_manifest(tmp_path / "m.csv")[0]["path"] == records[0].path
    good, bad = check_images([records[0].path])
    assert good == [records[0].path] and bad == []
    batch = next(iter(image_dataset([records[0].path], 16, 1, 1)))
    assert batch.shape == (1, 16, 16, 1) and float(batch.numpy().mean()) == 7.0


def test_a_jpeg_with_bytes_after_its_end_marker_is_used(tmp_path):
    ok, encoded = cv2.imencode(".jpg", np.full((24, 24), 100, np.uint8))
    path = tmp_path / "trailing.jpg"
    path.write_bytes(encoded.tobytes() + b"trailing metadata written by some scanner software")
    good, bad = check_images([str(path)])
    assert good == [str(path)] and bad == []
    assert abs(float(read_image(str(path), 1).mean()) - 100) < 2


def test_pixel_bombs_are_refused_from_their_header_before_decoding(monkeypatch):
    import time

    for name, data in pixel_bombs(12000, 12000).items():
        start = time.perf_counter()
        with pytest.raises(DecodeError, match=rf"{name}: 12000 x 12000 pixels declared in its "
                           r"header, more than the 50,000,000-pixel limit"):
            decode_bytes(data, channels=1, name=name)
        assert time.perf_counter() - start < 0.05, name  # nothing was decoded
    # The limit is configurable both ways; header sizes are read right for every format.
    small = np.full((30, 40, 3), 90, np.uint8)
    for extension in (".png", ".jpg", ".bmp", ".tiff", ".webp"):
        ok, encoded = cv2.imencode(extension, small)
        assert header_size(encoded.tobytes()) == (40, 30), extension
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DecodeError, match="40 x 30 pixels"):
        decode_bytes(cv2.imencode(".png", small)[1].tobytes(), channels=1)
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_IMAGE_PIXELS", "1200")
    assert decode_bytes(cv2.imencode(".png", small)[1].tobytes(), channels=1).shape == (30, 40, 1)
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="BRAINTUMOR_TF_MAX_IMAGE_PIXELS must be a whole number"):
        decode_bytes(cv2.imencode(".png", small)[1].tobytes(), channels=1)
