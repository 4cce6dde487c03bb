"""COCO segmentation splits as Roboflow exports them: a folder of images plus
``_annotations.coco.json``.

The JSON is validated once at load time, so a bad field is reported with its path in the file
instead of surfacing as a shape error mid-epoch (masks are drawn in coco_masks.py, RLE decoded in
rle.py). Kept free of TensorFlow, like discover.py.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from braintumor_tf.data import filesystem
from braintumor_tf.data.image_header import header_size
from braintumor_tf.data.rle import decode_rle_string
from braintumor_tf.log import logger

ANNOTATION_FILE = "_annotations.coco.json"


@dataclass(frozen=True, eq=False)
class CocoShape:
    """One annotation's geometry, already parsed: polygons ([N, 2] x/y arrays) or RLE runs."""

    category_id: int
    polygons: tuple[np.ndarray, ...] = ()
    rle_counts: np.ndarray | None = None  # alternating 0/1 run lengths, column-major


@dataclass(frozen=True, eq=False)
class SegRecord:
    image_path: str
    image_id: int
    file_name: str
    height: int
    width: int
    shapes: tuple[CocoShape, ...] = ()

    @property
    def has_annotation(self) -> bool:
        return bool(self.shapes)


@dataclass(frozen=True, eq=False)
class CocoSplit:
    folder: str
    records: list[SegRecord]
    missing: list[str]  # listed in the JSON, not on disk: skipped
    categories: dict[int, str]
    _by_path: dict[str, SegRecord] = field(default_factory=dict, repr=False)

    def record_for(self, image_path: str | os.PathLike) -> SegRecord:
        key = os.path.abspath(os.fspath(image_path))
        try:
            return self._by_path[key]
        except KeyError:
            raise KeyError(f"{image_path} is not an image of the COCO split {self.folder}") from None




def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fail(where: str, message: str, json_path: Path) -> ValueError:
    return ValueError(f"{json_path}: {where}: {message}")


def _checked_file_name(name, where: str, json_path: Path) -> str:
    """Reject names that would read outside the split folder, on either OS's rules."""
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, f"expected a non-empty string, got {_short(name)}", json_path)
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() \
            or PureWindowsPath(name).drive or name.startswith(("/", "\\")):
        raise _fail(where, f"file_name {name!r} is an absolute path; COCO file names must be "
                    "relative to the split folder", json_path)
    depth = 0
    for part in name.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
        elif part not in ("", "."):
            depth += 1
        if depth < 0:
            raise _fail(where, f"file_name {name!r} climbs out of the split folder ('..')", json_path)
    return name


# Far beyond any real outline; keeps hostile files from running for minutes in validation.
MAX_POLYGON_POINTS = 10_000
# All polygons of one image, and of one file: many polygons each under the cap above add up
# (100 x 9,999 points kept evaluate busy past 120 s). A real brain MRI outline has tens of points.
MAX_IMAGE_POINTS = 20_000
MAX_FILE_POINTS = 1_000_000
# Vertices may sit a little outside the image; this far out they are garbage (and would overflow
# OpenCV's fixed-point rasteriser, silently drawing a wrong mask).
MAX_OUTSIDE_FACTOR = 4


def _check_within_reach(polygons, where: str, size: tuple[int, int], json_path: Path) -> None:
    limit = MAX_OUTSIDE_FACTOR * max(size)
    for k, polygon in enumerate(polygons):
        if np.abs(polygon).max() > limit:
            raise _fail(f"{where}[{k}]", f"a coordinate ({np.abs(polygon).max():.4g}) lies far "
                        f"outside the {size[1]}x{size[0]} image", json_path)


def _parse_polygons(seg: list, where: str, json_path: Path) -> tuple[np.ndarray, ...]:
    polygons = []
    for k, poly in enumerate(seg):
        here = f"{where}[{k}]"
        if isinstance(poly, list) and len(poly) > 2 * MAX_POLYGON_POINTS:
            raise _fail(here, f"a polygon of {len(poly) // 2} points; at most {MAX_POLYGON_POINTS} "
                        "are accepted", json_path)
        if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
            raise _fail(here, f"expected a polygon as a flat list of numbers [x1, y1, x2, y2, ...], "
                        f"got {_short(poly)}", json_path)
        if len(poly) % 2 or len(poly) < 6:
            raise _fail(here, f"a polygon needs an even count of at least 6 numbers (3 points), "
                        f"got {len(poly)}", json_path)
        polygons.append(np.asarray(poly, np.float64).reshape(-1, 2))
    return tuple(polygons)


def _parse_rle(seg: dict, where: str, size: tuple[int, int], json_path: Path) -> np.ndarray:
    if "size" not in seg:
        raise _fail(f"{where}.size", "missing (an RLE needs size [height, width])", json_path)
    rle_size = seg["size"]
    if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(_is_int(v) for v in rle_size)):
        raise _fail(f"{where}.size", f"expected [height, width], got {_short(rle_size)}", json_path)
    if tuple(rle_size) != size:
        raise _fail(f"{where}.size", f"{rle_size} does not match the image's [height, width] "
                    f"{list(size)}", json_path)
    if "counts" not in seg:
        raise _fail(f"{where}.counts", "missing", json_path)
    counts = seg["counts"]
    if isinstance(counts, str):
        try:
            runs = decode_rle_string(counts)
        except ValueError as exc:
            raise _fail(f"{where}.counts", str(exc), json_path) from None
        except OverflowError:
            raise _fail(f"{where}.counts", "a run length too large for the image", json_path) from None
    elif isinstance(counts, list) and all(_is_int(v) for v in counts):
        if any(abs(v) > size[0] * size[1] for v in counts):
            raise _fail(f"{where}.counts", "a run length larger than the image", json_path)
        runs = np.asarray(counts, np.int64)
    else:
        raise _fail(f"{where}.counts", f"expected a list of run lengths or a compressed string, "
                    f"got {_short(counts)}", json_path)
    if runs.size and runs.min() < 0:
        raise _fail(f"{where}.counts", "negative run length", json_path)
    if int(runs.sum()) != size[0] * size[1]:
        raise _fail(f"{where}.counts", f"run lengths add up to {int(runs.sum())}, expected "
                    f"height*width = {size[0] * size[1]}", json_path)
    return runs


def _parse_segmentation(seg, where: str, size: tuple[int, int], json_path: Path):
    if isinstance(seg, list):
        return _parse_polygons(seg, where, json_path), None
    if isinstance(seg, dict):
        return (), _parse_rle(seg, where, size, json_path)
    raise _fail(where, f"expected a list of polygons or an RLE dict, got {_short(seg)}", json_path)


def _require(obj: dict, key: str, check, expected: str, where: str, json_path: Path):
    if key not in obj:
        raise _fail(f"{where}.{key}", "missing", json_path)
    value = obj[key]
    if not check(value):
        raise _fail(f"{where}.{key}", f"expected {expected}, got {_short(value)}", json_path)
    return value


def _header_size(path: str) -> tuple[int, int] | None:
    """(height, width) from the file header only: decoding every image just to check sizes
    would cost seconds per split. None when the header is unreadable (check_images reports it)."""
    remote = filesystem.is_remote(path)
    try:
        head = filesystem.read_bytes(path, 1 << 16)  # regular files only
        size = header_size(head)
    except OSError:
        return None
    if size is not None:
        return size[1], size[0]
    from PIL import Image  # formats (or header layouts) image_header does not parse

    try:
        with Image.open(io.BytesIO(filesystem.read_bytes(path)) if remote
                        else filesystem.open_regular(path)) as img:
            width, height = img.size
    except (OSError, ValueError, SyntaxError):
        return None
    return height, width




def load_coco_split(folder: str | os.PathLike, category_ids: Iterable[int] | None = None,
                    check_sizes: bool = True) -> CocoSplit:
    """Records joined by ``image_id``; with ``category_ids`` only those annotations are kept.

    Images listed but absent are returned in ``missing`` and skipped, so one lost file does
    not stop a run; anything wrong in the JSON itself raises, since guessing would train on
    wrong masks. A ``scheme://`` folder (gs://, ...) is read through tf.io.gfile (filesystem.py).
    """
    remote = filesystem.is_remote(folder)
    folder_path = folder if remote else Path(folder)
    json_path = filesystem.join(folder, ANNOTATION_FILE) if remote else folder_path / ANNOTATION_FILE
    data = _read_json(json_path, folder)
    categories = _parse_categories(data, json_path)
    wanted = None
    if category_ids is not None:
        wanted = {int(c) for c in category_ids}
        unknown = sorted(wanted - set(categories))
        if unknown:
            raise ValueError(f"{json_path}: category_ids {unknown} not among the categories "
                             f"{categories}")
    image_info = _parse_images(data, json_path)
    shapes = _parse_annotations(data, image_info, categories, wanted, json_path)
    records, missing = _records(folder_path, image_info, shapes, check_sizes, json_path)
    by_path = {os.path.abspath(r.image_path): r for r in records}
    return CocoSplit(str(folder_path), records, missing, categories, by_path)


def _read_json(json_path: Path | str, folder) -> dict:
    if not (filesystem.is_file(json_path) if filesystem.is_remote(json_path)
            else json_path.is_file()):
        raise FileNotFoundError(f"no {ANNOTATION_FILE} in {folder}: not a COCO split folder")
    try:
        with filesystem.open_text(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path}: not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{json_path}: not UTF-8 text (byte {exc.start}): not a COCO file") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"{json_path}: not a usable COCO file: "
                         f"{str(exc).splitlines()[0][:200]}") from None
    except RecursionError:
        raise ValueError(f"{json_path}: JSON nested too deeply to be a COCO file") from None
    if not isinstance(data, dict):
        raise _fail("top level", f"expected an object, got {type(data).__name__}", json_path)
    return data


def _parse_categories(data: dict, json_path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    raw_categories = data.get("categories", [])
    if not isinstance(raw_categories, list):
        raise _fail("categories", f"expected a list, got {_short(raw_categories)}", json_path)
    for k, cat in enumerate(raw_categories):
        where = f"categories[{k}]"
        if not isinstance(cat, dict):
            raise _fail(where, f"expected an object, got {_short(cat)}", json_path)
        cat_id = _require(cat, "id", _is_int, "an integer", where, json_path)
        categories[cat_id] = str(cat.get("name", cat_id))
    return categories


def _parse_images(data: dict, json_path: Path) -> dict[int, tuple[str, int, int]]:
    """image id -> (file name, height, width)."""
    images = data.get("images")
    if not isinstance(images, list):
        raise _fail("images", f"expected a list, got {_short(images)}", json_path)
    image_info: dict[int, tuple[str, int, int]] = {}
    seen_names: dict[str, int] = {}
    positive = lambda v: _is_int(v) and v > 0  # noqa: E731
    for k, img in enumerate(images):
        where = f"images[{k}]"
        if not isinstance(img, dict):
            raise _fail(where, f"expected an object, got {_short(img)}", json_path)
        image_id = _require(img, "id", _is_int, "an integer", where, json_path)
        if image_id in image_info:
            raise _fail(f"{where}.id", f"duplicate image id {image_id}", json_path)
        if "file_name" not in img:
            raise _fail(f"{where}.file_name", "missing", json_path)
        name = _checked_file_name(img["file_name"], f"{where}.file_name", json_path)
        if name in seen_names:
            raise _fail(f"{where}.file_name", f"{name!r} is listed twice (also images"
                        f"[{seen_names[name]}])", json_path)
        seen_names[name] = k
        height = _require(img, "height", positive, "a positive integer", where, json_path)
        width = _require(img, "width", positive, "a positive integer", where, json_path)
        image_info[image_id] = (name, height, width)
    return image_info


def _parse_annotations(data: dict, image_info, categories, wanted, json_path: Path
                       ) -> dict[int, list[CocoShape]]:
    """image id -> its shapes (of the wanted categories; all are validated)."""
    if "annotations" not in data:
        raise _fail("annotations", "missing: a COCO segmentation file lists its annotations "
                    "(an empty list when no image has a tumour)", json_path)
    annotations = data["annotations"]
    if not isinstance(annotations, list):
        raise _fail("annotations", f"expected a list, got {_short(annotations)}", json_path)
    shapes: dict[int, list[CocoShape]] = {}
    image_points: dict[int, int] = {}
    file_points = 0
    empty: list[int] = []
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        if not isinstance(ann, dict):
            raise _fail(where, f"expected an object, got {_short(ann)}", json_path)
        image_id = _require(ann, "image_id", _is_int, "an integer", where, json_path)
        if image_id not in image_info:
            raise _fail(f"{where}.image_id", f"no image has id {image_id}", json_path)
        cat_id = _require(ann, "category_id", _is_int, "an integer", where, json_path)
        if categories and cat_id not in categories:
            raise _fail(f"{where}.category_id", f"{cat_id} is not a listed category", json_path)
        if "segmentation" not in ann:
            raise _fail(f"{where}.segmentation", "missing", json_path)
        _, height, width = image_info[image_id]
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list | dict) and not segmentation:
            empty.append(k)  # no outline: it would be scored as a perfect empty mask
            continue
        if isinstance(segmentation, list):  # counted before any number is checked
            points = sum(len(poly) // 2 for poly in segmentation if isinstance(poly, list))
            image_points[image_id] = image_points.get(image_id, 0) + points
            file_points += points
            if image_points[image_id] > MAX_IMAGE_POINTS:
                raise _fail(f"{where}.segmentation", f"image id {image_id} has "
                            f"{image_points[image_id]:,} polygon points so far; at most "
                            f"{MAX_IMAGE_POINTS:,} per image are accepted", json_path)
            if file_points > MAX_FILE_POINTS:
                raise _fail(f"{where}.segmentation", f"{file_points:,} polygon points so far in "
                            f"the file; at most {MAX_FILE_POINTS:,} are accepted", json_path)
        polygons, rle = _parse_segmentation(segmentation, f"{where}.segmentation",
                                            (height, width), json_path)
        _check_within_reach(polygons, f"{where}.segmentation", (height, width), json_path)
        if wanted is not None and cat_id not in wanted:
            continue  # validated all the same: a bad file is bad whatever is asked of it
        shapes.setdefault(image_id, []).append(CocoShape(cat_id, polygons, rle))
    if empty:
        raise _fail(f"annotations[{empty[0]}].segmentation",
                    f"empty: {len(empty)} annotation(s) have no polygon or RLE, and an outline "
                    "that is not there cannot be scored (it would count as a perfect empty mask); "
                    "remove them or give their outlines", json_path)
    return shapes


def _records(folder_path: Path | str, image_info, shapes, check_sizes: bool, json_path: Path
             ) -> tuple[list[SegRecord], list[str]]:
    """Records of the images on disk (inside the folder, sizes as the JSON says) and the missing.

    A remote folder has no links, so only the file name check (no '..') keeps reads inside it."""
    records: list[SegRecord] = []
    missing: list[str] = []
    mismatched: list[str] = []
    remote = filesystem.is_remote(folder_path)
    folder_real = None if remote else os.path.realpath(folder_path)
    for image_id, (name, height, width) in image_info.items():
        if remote:
            path = filesystem.join(folder_path, name)
            if not filesystem.is_file(path):
                missing.append(path)
                continue
        else:
            path = str(folder_path / name)
            if not os.path.isfile(path):
                missing.append(path)
                continue
        if not remote and os.path.commonpath([folder_real, os.path.realpath(path)]) != folder_real:
            raise ValueError(f"{json_path}: file_name {name!r} is a link to a file outside the split "
                             "folder; COCO images must be inside it")
        if check_sizes:
            actual = _header_size(path)
            if actual is not None and actual != (height, width):
                mismatched.append(f"{name}: JSON says {height}x{width}, file is "
                                  f"{actual[0]}x{actual[1]}")
        records.append(SegRecord(path, image_id, name, height, width,
                                 tuple(shapes.get(image_id, ()))))
    if mismatched:
        more = f" (and {len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        raise ValueError(f"{json_path}: image sizes differ from the JSON's height/width, so the "
                         f"annotations would not line up: {'; '.join(mismatched[:5])}{more}")
    if missing:
        logger.warning(f"{json_path}: {len(missing)} listed image(s) not found, skipped: "
                       f"{', '.join(os.path.basename(m) for m in missing[:5])}")
    return records, missing


def find_coco_splits(root: str | os.PathLike) -> list[Path]:
    """A split folder itself, or every split folder below ``root`` (e.g. train/valid/test).

    Paths are ``str`` for a remote ``root`` (``scheme://``), else Path."""
    if filesystem.is_remote(root):
        return _find_remote_coco_splits(root)
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if (root_path / ANNOTATION_FILE).is_file():
        return [root_path]
    found = sorted(p.parent for p in root_path.rglob(ANNOTATION_FILE) if p.is_file())
    if not found:
        raise ValueError(f"no {ANNOTATION_FILE} in {root} or any folder below it: expected a COCO "
                         "split folder (images + _annotations.coco.json) or a folder of them")
    return found


def _find_remote_coco_splits(root: str) -> list[str]:
    if not filesystem.is_dir(root):
        raise FileNotFoundError(f"data folder not found: {root}")
    if filesystem.is_file(filesystem.join(root, ANNOTATION_FILE)):
        return [root]
    found = sorted(dirpath for dirpath, _, filenames in filesystem.walk(root)
                   if ANNOTATION_FILE in filenames)
    if not found:
        raise ValueError(f"no {ANNOTATION_FILE} in {root} or any folder below it: expected a COCO "
                         "split folder (images + _annotations.coco.json) or a folder of them")
    return found
