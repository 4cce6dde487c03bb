import json

import cv2
import numpy as np
import pytest

from braintumor_tf.data.coco import ANNOTATION_FILE, find_coco_splits, load_coco_split
from braintumor_tf.data.coco_masks import coco_mask, coco_mask_fn, is_axis_aligned_box, polygon_area
from braintumor_tf.data.rle import decode_rle_string, rle_to_mask

H, W = 40, 50


def _write_image(path, height=H, width=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), 90, np.uint8))


def _box(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _write_split(folder, images, annotations, categories=None, write_files=True):
    folder.mkdir(parents=True, exist_ok=True)
    for img in images:
        if write_files:
            _write_image(folder / img["file_name"], img["height"], img["width"])
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "tumour"}, {"id": 2, "name": "other"}]}
    (folder / ANNOTATION_FILE).write_text(json.dumps(data))
    return folder


def _image(image_id, name, height=H, width=W):
    return {"id": image_id, "file_name": name, "height": height, "width": width}


def _ann(ann_id, image_id, segmentation, category_id=1):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "segmentation": segmentation, "iscrowd": 0}


@pytest.fixture
def split_folder(tmp_path):
    images = [_image(10, "a.jpg"), _image(11, "b.png"), _image(12, "empty.jpg")]
    annotations = [
        # Annotation ids are chosen to clash with image ids: id 11 belongs to image 10, so a
        # loader joining by annotation id would draw this box on b.png.
        _ann(11, 10, [_box(2, 3, 12, 10), _box(30, 20, 40, 30)]),  # two polygons, one annotation
        _ann(10, 11, [_box(0, 0, 5, 5)]),
        _ann(12, 11, [_box(20, 20, 25, 30)], category_id=2),  # second annotation, same image
    ]
    return _write_split(tmp_path / "train", images, annotations)


def _box_pixels(x0, y0, x1, y1):
    # cv2.fillPoly includes boundary pixels.
    return (x1 - x0 + 1) * (y1 - y0 + 1)


def test_every_polygon_is_rasterised_and_joined_by_image_id(split_folder):
    split = load_coco_split(split_folder)
    by_name = {r.file_name: r for r in split.records}
    assert set(by_name) == {"a.jpg", "b.png", "empty.jpg"}
    assert split.missing == []
    assert split.categories == {1: "tumour", 2: "other"}

    a = coco_mask(by_name["a.jpg"])
    assert a.shape == (H, W) and a.dtype == np.uint8 and set(np.unique(a)) == {0, 1}
    assert a.sum() == _box_pixels(2, 3, 12, 10) + _box_pixels(30, 20, 40, 30)
    assert a[3:11, 2:13].all() and a[20:31, 30:41].all()
    assert a[0:2].sum() == 0  # image 10 does not get image 11's box at the origin

    b = coco_mask(by_name["b.png"])
    assert b.sum() == _box_pixels(0, 0, 5, 5) + _box_pixels(20, 20, 25, 30)
    assert b[0:6, 0:6].all() and b[20:31, 20:26].all()


def test_image_without_annotation_gets_empty_mask(split_folder):
    record = next(r for r in load_coco_split(split_folder).records if r.file_name == "empty.jpg")
    assert not record.has_annotation
    mask = coco_mask(record)
    assert mask.shape == (H, W) and mask.sum() == 0


def test_category_filter_and_stack(split_folder):
    split = load_coco_split(split_folder)
    b = next(r for r in split.records if r.file_name == "b.png")
    only_1 = coco_mask(b, category_ids=[1])
    assert only_1.sum() == _box_pixels(0, 0, 5, 5)
    assert coco_mask(b, category_ids=[2]).sum() == _box_pixels(20, 20, 25, 30)

    filtered = load_coco_split(split_folder, category_ids=[2])
    by_name = {r.file_name: r for r in filtered.records}
    assert coco_mask(by_name["a.jpg"]).sum() == 0
    assert coco_mask(by_name["b.png"]).sum() == _box_pixels(20, 20, 25, 30)
    with pytest.raises(ValueError, match=r"category_ids \[7\]"):
        load_coco_split(split_folder, category_ids=[7])


def test_overlapping_polygons_are_a_union(tmp_path):
    folder = _write_split(tmp_path / "s", [_image(0, "x.jpg")],
                          [_ann(5, 0, [_box(5, 5, 20, 20), _box(10, 10, 30, 30)])])
    mask = coco_mask(load_coco_split(folder).records[0])
    assert mask[12, 12] == 1  # the overlap is not cut out (no even-odd hole)
    assert mask.sum() == _box_pixels(5, 5, 20, 20) + _box_pixels(10, 10, 30, 30) \
        - _box_pixels(10, 10, 20, 20)


def test_uncompressed_rle_is_column_major(tmp_path):
    # 3 background pixels then 4 foreground, down the first column and into the second.
    counts = [3, 4, H * W - 7]
    folder = _write_split(tmp_path / "s", [_image(0, "x.jpg")],
                          [_ann(0, 0, {"counts": counts, "size": [H, W]})])
    mask = coco_mask(load_coco_split(folder).records[0])
    assert mask.sum() == 4
    assert mask[3:7, 0].all()


def test_compressed_rle_string_matches_hand_encoding():
    # Runs [5, 40, 3, 20, 32] encoded by hand: 5 -> '5'; 40 -> 5-bit groups 8 (+32 "more")
    # and 1 -> 'X1'; 3 -> '3'; 20 is stored as 20 - 40 = -20 -> groups 12 (+32) and 31 ->
    # '\\O'; 32 is stored as 32 - 3 = 29, whose bit 4 would read as a sign, so it takes an
    # extra group: 29 + 32 and 0 -> 'm0'.
    assert decode_rle_string("5X13\\Om0").tolist() == [5, 40, 3, 20, 32]
    expected = np.zeros(100, np.uint8)
    expected[5:45] = 1
    expected[48:68] = 1
    np.testing.assert_array_equal(rle_to_mask(np.array([5, 40, 3, 20, 32]), 10, 10),
                                  expected.reshape(10, 10, order="F"))


def test_compressed_rle_in_json(tmp_path):
    folder = _write_split(tmp_path / "s", [_image(0, "x.jpg", 10, 10)],
                          [_ann(0, 0, {"counts": "5X13\\Om0", "size": [10, 10]})])
    mask = coco_mask(load_coco_split(folder).records[0])
    assert mask.sum() == 60
    assert mask[5:10, 0].all() and mask[:, 1:4].all() and mask[:5, 4].all() and mask[8:, 4].all()


def test_rle_that_does_not_cover_the_image_is_rejected(tmp_path):
    folder = _write_split(tmp_path / "s", [_image(0, "x.jpg")],
                          [_ann(0, 0, {"counts": [3, 4], "size": [H, W]})])
    with pytest.raises(ValueError, match=r"annotations\[0\]\.segmentation\.counts"):
        load_coco_split(folder)


@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "..\\outside.jpg",
                                  "/etc/passwd", "C:\\data\\x.jpg"])
def test_file_name_outside_the_folder_is_rejected(tmp_path, name):
    folder = _write_split(tmp_path / "s", [_image(0, name)], [], write_files=False)
    with pytest.raises(ValueError) as info:
        load_coco_split(folder)
    assert repr(name) in str(info.value) and "images[0].file_name" in str(info.value)


def test_subfolder_file_name_is_fine(tmp_path):
    folder = _write_split(tmp_path / "s", [_image(0, "sub/../sub/x.jpg")], [],
                          write_files=False)
    _write_image(folder / "sub" / "x.jpg")
    assert len(load_coco_split(folder).records) == 1


@pytest.mark.parametrize("segmentation, field", [
    ("not a polygon", r"annotations\[1\]\.segmentation: expected a list of polygons or an RLE"),
    ([[1, 2, 3, 4]], r"annotations\[1\]\.segmentation\[0\]: a polygon needs"),
    ([[1, 2, "x", 4, 5, 6]], r"annotations\[1\]\.segmentation\[0\]: expected a polygon"),
    ({"counts": [H * W]}, r"annotations\[1\]\.segmentation\.size"),
    ({"counts": 7, "size": [H, W]}, r"annotations\[1\]\.segmentation\.counts"),
])
def test_malformed_segmentation_names_the_field(tmp_path, segmentation, field):
    folder = _write_split(tmp_path / "s", [_image(0, "x.jpg")],
                          [_ann(0, 0, [_box(1, 1, 5, 5)]), _ann(1, 0, segmentation)])
    with pytest.raises(ValueError, match=field):
        load_coco_split(folder)


def test_malformed_image_and_annotation_fields(tmp_path):
    folder = _write_split(tmp_path / "a", [{"id": 0, "file_name": "x.jpg", "width": W}], [],
                          write_files=False)
    with pytest.raises(ValueError, match=r"images\[0\]\.height: missing"):
        load_coco_split(folder)
    folder = _write_split(tmp_path / "b", [_image(0, "x.jpg")], [_ann(0, 3, [_box(1, 1, 5, 5)])])
    with pytest.raises(ValueError, match=r"annotations\[0\]\.image_id: no image has id 3"):
        load_coco_split(folder)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ANNOTATION_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco_split(tmp_path / "c")


def test_size_mismatch_between_json_and_file(tmp_path):
    folder = _write_split(tmp_path / "s", [_image(0, "x.jpg")], [], write_files=False)
    _write_image(folder / "x.jpg", 20, 20)
    with pytest.raises(ValueError, match=r"x\.jpg: JSON says 40x50, file is 20x20"):
        load_coco_split(folder)


def test_missing_image_is_reported_and_skipped(split_folder):
    (split_folder / "b.png").unlink()
    split = load_coco_split(split_folder)
    assert [r.file_name for r in split.records] == ["a.jpg", "empty.jpg"]
    assert split.missing == [str(split_folder / "b.png")]


def test_find_splits_and_mask_fn(tmp_path, split_folder):
    other = _write_split(tmp_path / "valid", [_image(0, "v.jpg")], [_ann(0, 0, [_box(1, 1, 3, 3)])])
    assert find_coco_splits(tmp_path) == [split_folder, other]
    assert find_coco_splits(other) == [other]
    with pytest.raises(ValueError, match="no _annotations.coco.json"):
        find_coco_splits(_empty(tmp_path))
    fn = coco_mask_fn([load_coco_split(p) for p in find_coco_splits(tmp_path)])
    assert fn(str(other / "v.jpg")).sum() == 9
    assert fn(str(split_folder / "a.jpg").encode()).sum() > 0


def _empty(tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    return folder


def test_polygon_helpers():
    box = np.array(_box(2, 3, 12, 10), float).reshape(-1, 2)
    assert polygon_area(box) == 70
    assert is_axis_aligned_box(box)
    assert not is_axis_aligned_box(np.array([[0, 0], [10, 0], [0, 10]], float))


@pytest.mark.parametrize("segmentation, message", [
    ({"size": [H, W], "counts": [10 ** 30, 5]}, "run length larger than the image"),
    ({"size": [H, W], "counts": "o" * 40 + "0"}, "run length too large"),
    ([[0, 0, 1e9, 0, 1e9, 1e9, 0, 1e9]], "far outside the 50x40 image"),
    ([[float(v) for v in range(2 * 10_001)]], "at most 10000 are accepted"),
])
def test_hostile_shapes_are_refused_with_the_field_named(tmp_path, segmentation, message):
    folder = _write_split(tmp_path / "s", [_image(1, "a.png")], [_ann(1, 1, segmentation)])
    with pytest.raises(ValueError, match=message) as error:
        load_coco_split(folder)
    assert "annotations[0].segmentation" in str(error.value) and "\n" not in str(error.value)


def test_hostile_json_files_give_one_line_naming_the_file(tmp_path):
    folder = _write_split(tmp_path / "s", [_image(1, "a.png")], [])
    json_path = folder / ANNOTATION_FILE
    json_path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match="nested too deeply"):
        load_coco_split(folder)
    json_path.write_bytes(b'{"images": [], "annotations": [], "x": "\xff\xfe"}')
    with pytest.raises(ValueError, match=f"{ANNOTATION_FILE}: not UTF-8"):
        load_coco_split(folder)
    json_path.write_text(json.dumps({"images": [_image(1, "a.png")]}))
    with pytest.raises(ValueError, match="annotations: missing"):
        load_coco_split(folder)


def test_a_file_name_linking_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.png"
    _write_image(outside)
    folder = _write_split(tmp_path / "s", [_image(1, "a.png")], [], write_files=False)
    (folder / "a.png").symlink_to(outside)
    with pytest.raises(ValueError, match="link to a file outside the split folder"):
        load_coco_split(folder)


def test_our_rle_codec_agrees_with_pycocotools():
    """Our decoder stays (it refuses hostile run lengths before allocating; pycocotools' C decoder
    trusts them), but on valid input it must give exactly the reference implementation's masks."""
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for height, width in [(40, 50), (1, 1), (64, 17), (128, 128)]:
        mask = np.zeros((height, width), np.uint8)
        for _ in range(rng.integers(0, 6)):
            y, x = rng.integers(0, height), rng.integers(0, width)
            mask[y:y + rng.integers(1, 30), x:x + rng.integers(1, 30)] = 1
        encoded = mask_api.encode(np.asfortranarray(mask))
        runs = decode_rle_string(encoded["counts"].decode("ascii"))
        np.testing.assert_array_equal(rle_to_mask(runs, height, width), mask)
        np.testing.assert_array_equal(rle_to_mask(runs, height, width), mask_api.decode(encoded))


def test_polygon_boundary_convention_differs_from_pycocotools_by_design(tmp_path):
    """Documented, not accidental: polygons are filled with OpenCV (vertices and edges included,
    as the training masks always were); pycocotools covers pixel centres strictly inside, so a
    box from x0 to x1 is one pixel wider here. Switching would move every mask edge."""
    mask_api = pytest.importorskip("pycocotools.mask")
    polygon = _box(2, 3, 12, 10)
    folder = _write_split(tmp_path / "s", [_image(1, "a.png")], [_ann(1, 1, [polygon])])
    ours = coco_mask(load_coco_split(folder).records[0])
    reference = mask_api.decode(mask_api.merge(mask_api.frPyObjects([polygon], H, W)))
    assert ours.sum() == _box_pixels(2, 3, 12, 10) == 11 * 8
    assert reference.sum() == 10 * 7
    assert np.all(ours[reference > 0] == 1)  # the reference mask lies inside ours


def _polygon(points: int, offset: float = 0.0):
    """A closed ``points``-point outline inside the 50x40 test image, as COCO's flat list."""
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    xy = np.stack([25 + 10 * np.cos(angles) + offset, 20 + 10 * np.sin(angles)], axis=1)
    return [round(float(v), 3) for v in xy.ravel()]


def test_polygon_points_are_capped_per_image_and_per_file(tmp_path, monkeypatch):
    import time

    from braintumor_tf.data import coco

    # 100 polygons of 9,999 points on one image: each under the polygon cap, together not.
    many = [_polygon(9_999, k / 100) for k in range(100)]
    folder = _write_split(tmp_path / "image", [_image(1, "a.png")],
                          [_ann(k, 1, [poly]) for k, poly in enumerate(many)])
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"annotations\[2\]\.segmentation: image id 1 has 29,997 "
                                         r"polygon points so far; at most 20,000 per image"):
        load_coco_split(folder)
    assert time.monotonic() - start < 10
    # Spread over many images, each under the image cap: the file's total is capped.
    monkeypatch.setattr(coco, "MAX_FILE_POINTS", 50_000)
    images = [_image(k, f"{k}.png") for k in range(8)]
    folder = _write_split(tmp_path / "file", images,
                          [_ann(k, k, [_polygon(9_000)]) for k in range(8)])
    with pytest.raises(ValueError, match=r"annotations\[5\]\.segmentation: 54,000 polygon points "
                                         r"so far in the file; at most 50,000") as error:
        load_coco_split(folder)
    assert ANNOTATION_FILE in str(error.value) and "\n" not in str(error.value)
    # Under both caps: read as before.
    folder = _write_split(tmp_path / "fine", [_image(1, "a.png")],
                          [_ann(0, 1, [_polygon(9_000)]), _ann(1, 1, [_polygon(9_000, 1)])])
    assert coco_mask(load_coco_split(folder).records[0]).sum() > 0


@pytest.mark.parametrize("empty", [[], {}])
def test_an_empty_segmentation_is_refused_and_counted_not_scored_as_a_perfect_mask(tmp_path,
                                                                                     empty):
    folder = _write_split(tmp_path / "s", [_image(1, "a.png"), _image(2, "b.png")],
                          [_ann(0, 1, [_box(1, 1, 5, 5)]), _ann(1, 2, empty), _ann(2, 1, empty)])
    with pytest.raises(ValueError, match=r"annotations\[1\]\.segmentation: empty: 2 annotation"
                                         r"\(s\) have no polygon or RLE") as error:
        load_coco_split(folder)
    assert ANNOTATION_FILE in str(error.value) and "\n" not in str(error.value)


def test_a_5000_digit_integer_names_the_file(tmp_path):
    folder = _write_split(tmp_path / "s", [_image(1, "a.png")], [])
    json_path = folder / ANNOTATION_FILE
    json_path.write_text('{"images": [], "annotations": [], "x": ' + "7" * 5000 + "}")
    with pytest.raises(ValueError) as error:
        load_coco_split(folder)
    message = str(error.value)
    assert message.startswith(f"{json_path}: not a usable COCO file") and "4300" in message
    assert "\n" not in message
