"""Near-duplicate groups and group-aware train/val/test splits.

The public MRI sets hold many re-encoded, resized, mirrored, rotated and contrast-changed
copies of the same slice; splitting image by image puts copies on both sides and inflates
test scores. Images are grouped by a cheap structural signature and whole groups are split.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from braintumor_tf.data.decode import DecodeError, error_text, read_image
from braintumor_tf.data.discover import CLASS_NAMES, ImageRecord
from braintumor_tf.data.subjects import renumber_by_first_member, split_units

THUMB = 64
SIGNATURE_SIZE = THUMB * THUMB
SPLIT_NAMES = ("train", "val", "test")
# Index i names what turns image A into its copy B when a pair reports transform i.
TRANSFORM_NAMES = (
    "identity", "rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "anti_transpose",
)
MANIFEST_COLUMNS = ("path", "label", "class_name", "group", "split", "subject")
# Manifests written before subjects existed have no subject column; they still read.
_REQUIRED_MANIFEST_COLUMNS = ("path", "label", "class_name", "group", "split")
_CACHE_NAME = "signatures.npz"


# ----------------------------------------------------------------------------- signatures


def image_signature(image: np.ndarray) -> np.ndarray:
    """High-passed, z-normalised 64x64 thumbnail: a dot product of two is a Pearson
    correlation that ignores brightness/contrast and the low-frequency look of a scanner.

    Rounded to float16 precision so signatures stored in the float16 cache are bit-identical
    to freshly computed ones (a cached run then reproduces an uncached run exactly).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[:, :, 0] if img.shape[2] == 1 else img.mean(axis=2)
    if img.ndim != 2 or min(img.shape) == 0:
        raise ValueError(f"expected a 2-D (or H x W x C) image, got shape {np.shape(image)}")
    thumb = cv2.resize(np.ascontiguousarray(img), (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    # The symmetric (reflect-101) border keeps the filter exact under flips and rotations.
    high = thumb - cv2.blur(thumb, (5, 5), borderType=cv2.BORDER_REFLECT_101)
    high -= high.mean()
    norm = float(np.linalg.norm(high))
    if norm < 1e-2:  # blank (in 0..255 units): correlates with nothing
        return np.zeros(SIGNATURE_SIZE, np.float32)
    sig = (high / norm).ravel()
    return sig.astype(np.float16).astype(np.float32)


def _signature_or_reason(path: str) -> tuple[np.ndarray | None, str]:
    try:
        return image_signature(read_image(path, channels=1)), ""
    except (DecodeError, OSError) as error:
        return None, error_text(path, error)


def compute_signatures(
    paths: Sequence[str], workers: int = 2, progress: bool = True
) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Returns (signatures [M, 4096] of the M readable files, bad files, their indices into
    ``paths``). Threads suffice: OpenCV decoding and resizing release the GIL."""
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    sigs = np.zeros((n, SIGNATURE_SIZE), np.float32)
    ok = np.zeros(n, bool)
    bad: list[dict] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for i, (sig, reason) in enumerate(pool.map(_signature_or_reason, paths, chunksize=16)):
            if sig is None:
                bad.append({"path": paths[i], "reason": reason})
            else:
                sigs[i] = sig
                ok[i] = True
            done = i + 1
            if progress and (done % 500 == 0 or done == n):
                print(f"signatures: {done}/{n} images, {len(bad)} bad, "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    ok_index = np.flatnonzero(ok)
    return sigs[ok_index], bad, ok_index


# ----------------------------------------------------------------------------- duplicates


def _dihedral_views(block: np.ndarray) -> np.ndarray:
    """[B, 4096] -> [8, B, 4096] in TRANSFORM_NAMES order."""
    t = block.reshape(-1, THUMB, THUMB)
    views = (
        t,
        np.rot90(t, 1, axes=(1, 2)),
        np.rot90(t, 2, axes=(1, 2)),
        np.rot90(t, 3, axes=(1, 2)),
        t[:, :, ::-1],
        t[:, ::-1, :],
        t.transpose(0, 2, 1),
        np.rot90(t, 2, axes=(1, 2)).transpose(0, 2, 1),
    )
    return np.stack([v.reshape(len(block), -1) for v in views])


def find_pairs(
    signatures: np.ndarray, threshold: float = 0.85, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j whose best correlation over the 8 flips/rotations is >= threshold.

    Returns parallel arrays (i, j, corr, transform). Only the upper triangle is computed
    (max over a group of transforms is symmetric) and only the row block is transformed, so
    memory stays at about 8 x block_size x 4096 floats whatever N is.
    """
    sigs = np.ascontiguousarray(signatures, dtype=np.float32)
    if sigs.ndim != 2 or sigs.shape[1] != SIGNATURE_SIZE:
        raise ValueError(f"signatures must be [N, {SIGNATURE_SIZE}], got {sigs.shape}")
    n = len(sigs)
    out_i, out_j, out_c, out_t = [], [], [], []
    for r0 in range(0, n, block_size):
        rows = sigs[r0:r0 + block_size]
        b = len(rows)
        views = _dihedral_views(rows).reshape(8 * b, SIGNATURE_SIZE)
        for c0 in range(r0, n, block_size):
            cols = sigs[c0:c0 + block_size]
            prod = (views @ cols.T).reshape(8, b, len(cols))
            best = prod.max(axis=0)
            ii, jj = np.nonzero(best >= threshold)
            gi, gj = ii + r0, jj + c0
            keep = gj > gi
            ii, jj, gi, gj = ii[keep], jj[keep], gi[keep], gj[keep]
            if len(ii):
                out_i.append(gi)
                out_j.append(gj)
                out_c.append(best[ii, jj])
                out_t.append(prod[:, ii, jj].argmax(axis=0))
    if not out_i:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, np.float32), empty.copy()
    i = np.concatenate(out_i).astype(np.int64)
    j = np.concatenate(out_j).astype(np.int64)
    c = np.concatenate(out_c).astype(np.float32)
    t = np.concatenate(out_t).astype(np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order], c[order], t[order]


def best_matches(
    signatures: np.ndarray, references: np.ndarray, threshold: float = 0.85, block_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """For each signature, the reference it correlates best with over the 8 flips/rotations:
    (index into ``references`` or -1 below ``threshold``, that correlation)."""
    sigs = np.ascontiguousarray(signatures, dtype=np.float32)
    refs = np.ascontiguousarray(references, dtype=np.float32)
    for name, array in (("signatures", sigs), ("references", refs)):
        if array.ndim != 2 or array.shape[1] != SIGNATURE_SIZE:
            raise ValueError(f"{name} must be [N, {SIGNATURE_SIZE}], got {array.shape}")
    best_index = np.full(len(sigs), -1, np.int64)
    best_corr = np.full(len(sigs), -np.inf, np.float32)
    for r0 in range(0, len(refs), block_size):
        rows = refs[r0:r0 + block_size]
        views = _dihedral_views(rows).reshape(8 * len(rows), SIGNATURE_SIZE)
        corr = (views @ sigs.T).reshape(8, len(rows), len(sigs)).max(axis=0)  # [refs, sigs]
        block_best = corr.argmax(axis=0)
        block_corr = corr[block_best, np.arange(len(sigs))]
        better = block_corr > best_corr
        best_index[better] = block_best[better] + r0
        best_corr[better] = block_corr[better]
    best_index[best_corr < threshold] = -1
    return best_index, best_corr


def groups_from_pairs(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph; group ids are numbered by each group's first
    member, so they only depend on the input order."""
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return renumber_by_first_member(labels)


def find_duplicate_groups(signatures: np.ndarray, threshold: float = 0.85) -> np.ndarray:
    i, j, _, _ = find_pairs(signatures, threshold)
    return groups_from_pairs(len(signatures), i, j)


# ----------------------------------------------------------------------------- splits


def _check_split_args(labels, groups, val_fraction: float, test_fraction: float):
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be < 1 to leave training data")
    labels = np.asarray(labels, dtype=np.int64).ravel()
    groups = np.asarray(groups, dtype=np.int64).ravel()
    if labels.shape != groups.shape:
        raise ValueError(f"labels and groups differ in length: {len(labels)} vs {len(groups)}")
    return labels, groups


def group_split(
    labels, groups, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Whole groups to one split, stratified by each group's majority label.

    Per class, groups are visited largest first (random order among equal sizes) and each
    goes to the split furthest below its image target, so every split ends close to the
    requested fraction of every class.
    """
    labels, groups = _check_split_args(labels, groups, val_fraction, test_fraction)
    out = np.empty(len(labels), dtype="<U5")
    if len(labels) == 0:
        return out
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    uniq, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse)
    # Majority label per group, ties to the smaller label.
    lab_vals, lab_idx = np.unique(labels, return_inverse=True)
    table = np.zeros((len(uniq), len(lab_vals)), np.int64)
    np.add.at(table, (inverse, lab_idx), 1)
    group_class = table.argmax(axis=1)
    rng = np.random.default_rng(seed)
    group_split_idx = np.zeros(len(uniq), np.int64)
    for c in range(len(lab_vals)):
        members = np.flatnonzero(group_class == c)
        members = members[rng.permutation(len(members))]
        members = members[np.argsort(-sizes[members], kind="stable")]
        target = fractions * sizes[members].sum()
        filled = np.zeros(3)
        for g in members:
            deficit = np.where(fractions > 0, target - filled, -np.inf)
            s = int(np.argmax(deficit))
            group_split_idx[g] = s
            filled[s] += sizes[g]
    out[:] = np.asarray(SPLIT_NAMES)[group_split_idx[inverse]]
    return out


def random_split(
    labels, groups, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Image-by-image stratified split that ignores groups: the leaky baseline."""
    labels, groups = _check_split_args(labels, groups, val_fraction, test_fraction)
    return group_split(labels, np.arange(len(labels)), val_fraction, test_fraction, seed)


# ----------------------------------------------------------------------------- manifest


def write_manifest(path, records: Sequence[ImageRecord], groups, splits,
                   class_names: Sequence[str] = CLASS_NAMES, subjects: Sequence[str] | None = None
                   ) -> None:
    """One row per image so a run can be repeated on exactly the same split.

    ``class_names`` names the labels in the class_name column (SEGMENTATION_LABELS for
    segmentation records); ``subjects`` fills the subject column ("" where none is known)."""
    groups = np.asarray(groups).ravel()
    splits = np.asarray(splits).ravel()
    subjects = [""] * len(records) if subjects is None else list(subjects)
    if not len(records) == len(groups) == len(splits) == len(subjects):
        raise ValueError("records, groups, splits and subjects must have the same length")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for rec, g, s, subject in zip(records, groups, splits, subjects, strict=True):
            name = class_names[rec.label] if 0 <= rec.label < len(class_names) else ""
            writer.writerow([rec.path, rec.label, name, int(g), str(s), subject])


def read_manifest(path) -> list[dict]:
    """Rows as dicts with int label and group (subject "" when the manifest has none)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(_REQUIRED_MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a split manifest, missing columns {sorted(missing)}")
        rows = []
        for row in reader:
            if row["split"] not in SPLIT_NAMES:
                raise ValueError(f"{path}: unknown split {row['split']!r} for {row['path']}")
            rows.append({
                "path": row["path"],
                "label": int(row["label"]),
                "class_name": row["class_name"],
                "group": int(row["group"]),
                "split": row["split"],
                "subject": row.get("subject") or "",
            })
    return rows


# ----------------------------------------------------------------------------- convenience


# Segmentation images are stratified by whether they show a tumour at all.
SEGMENTATION_LABELS = ("empty", "tumour")


def manifest_split(path, split: str | None = None) -> list[dict]:
    """The rows of one split (every row when ``split`` is None), paths resolved: as written when
    they exist from here, else relative to the manifest's folder (training may have been started
    elsewhere)."""
    path = Path(path)
    rows = read_manifest(path)
    if split is not None:
        known = sorted({row["split"] for row in rows})
        rows = [row for row in rows if row["split"] == split]
        if not rows:
            raise ValueError(f"no rows with split {split!r} in {path}; it has {', '.join(known)}")
    for row in rows:
        image = Path(row["path"])
        if not image.is_absolute() and not image.exists() and (path.parent / image).exists():
            row["path"] = str(path.parent / image)
    return rows


def segmentation_records(image_paths: Sequence[str], has_tumour: Sequence[bool],
                         source: str = "") -> list[ImageRecord]:
    """ImageRecords for make_split: label 1 when the mask is non-empty, so train/val/test get
    the same share of tumour-free slices (write the manifest with SEGMENTATION_LABELS)."""
    if len(image_paths) != len(has_tumour):
        raise ValueError(f"got {len(image_paths)} images but {len(has_tumour)} tumour flags")
    return [ImageRecord(path=os.fspath(p), label=int(bool(t)), source=source)
            for p, t in zip(image_paths, has_tumour, strict=True)]


@dataclass(frozen=True)
class SplitResult:
    records: list[ImageRecord]  # readable images only
    groups: np.ndarray  # near-duplicate group of each record
    splits: np.ndarray
    bad: list[dict]
    subjects: list[str]  # subject of each record, "" where none is known
    units: np.ndarray  # what was split whole: subject joined with near-duplicate group


def _file_key(path: str) -> str:
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def cached_signatures(
    paths: Sequence[str], cache_dir=None, workers: int = 2, progress: bool = True
) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """compute_signatures with an on-disk cache keyed by path, size and mtime, so a changed
    file is recomputed and a repeated run on the same data skips decoding.

    Stored as float16 (half the disk of float32; signatures are already float16-exact).
    Bad files are not cached: there are few, and a fixed file should be picked up.
    """
    paths = [os.fspath(p) for p in paths]
    if cache_dir is None:
        return compute_signatures(paths, workers, progress)
    cache_file = Path(cache_dir) / _CACHE_NAME
    cached: dict[str, np.ndarray] = {}
    stored_keys, stored_sigs = np.zeros(0, str), np.zeros((0, SIGNATURE_SIZE), np.float16)
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as data:
                stored_keys, stored_sigs = data["keys"], data["signatures"]
            cached = {k: r for r, k in enumerate(stored_keys.tolist())}
        except (OSError, KeyError, ValueError) as exc:
            print(f"ignoring unreadable signature cache {cache_file}: {exc}", file=sys.stderr)
            cached = {}
    keys = []
    for p in paths:
        try:
            keys.append(_file_key(p))
        except OSError:
            keys.append("")  # unreadable: compute_signatures reports it
    todo = [k for k, key in enumerate(keys) if key not in cached]
    sigs = np.zeros((len(paths), SIGNATURE_SIZE), np.float32)
    ok = np.zeros(len(paths), bool)
    for k, key in enumerate(keys):
        if key in cached:
            sigs[k] = stored_sigs[cached[key]].astype(np.float32)
            ok[k] = True
    bad_all: list[dict] = []
    if todo:
        new_sigs, bad_all, new_ok = compute_signatures([paths[k] for k in todo], workers, progress)
        done = np.asarray(todo, np.int64)[new_ok]
        sigs[done] = new_sigs
        ok[done] = True
        fresh = [r for r, k in enumerate(done) if keys[k]]
        if fresh:
            # Drop entries of files that changed since, so the cache does not grow stale rows.
            current, wanted = set(paths), set(keys)
            keep = [r for r, key in enumerate(stored_keys.tolist())
                    if key in wanted or key.rsplit("|", 2)[0] not in current]
            all_keys = np.array(
                [stored_keys[r] for r in keep] + [keys[done[r]] for r in fresh], dtype=str)
            all_sigs = np.concatenate(
                [stored_sigs[keep], new_sigs[fresh].astype(np.float16)], axis=0)
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=all_keys, signatures=all_sigs)
            os.replace(tmp, cache_file)
    # Keep bad-file order identical to an uncached run.
    order = {p: k for k, p in enumerate(paths)}
    bad_all.sort(key=lambda b: order[b["path"]])
    ok_index = np.flatnonzero(ok)
    return sigs[ok_index], bad_all, ok_index


def drop_near_duplicates_of(
    records: Sequence[ImageRecord], reference_paths: Sequence[str], threshold: float = 0.85,
    cache_dir=None,
) -> tuple[list[ImageRecord], list[dict]]:
    """``records`` minus every image that is a near-duplicate (any flip/rotation) of a reference
    image; returns (kept, dropped rows with the matched reference and correlation). Unreadable
    records are kept here: make_split reports them."""
    records = list(records)
    reference_paths = [os.fspath(p) for p in reference_paths]
    ref_sigs, _, ref_ok = cached_signatures(reference_paths, cache_dir, progress=False)
    sigs, _, ok_index = cached_signatures([r.path for r in records], cache_dir, progress=False)
    if len(ref_sigs) == 0 or len(sigs) == 0:
        return records, []
    match, corr = best_matches(sigs, ref_sigs, threshold)
    dropped_index = {int(ok_index[k]): (reference_paths[int(ref_ok[m])], float(corr[k]))
                     for k, m in enumerate(match.tolist()) if m >= 0}
    kept = [r for k, r in enumerate(records) if k not in dropped_index]
    dropped = [{"path": records[k].path, "matches": ref, "correlation": round(c, 4)}
               for k, (ref, c) in sorted(dropped_index.items())]
    return kept, dropped


def _cached_groups(sigs: np.ndarray, paths: list[str], threshold: float, cache_dir) -> np.ndarray:
    """The all-pairs search dominates a re-run (~30 s for 8,000 images), so its result is
    cached too, keyed by every file's path/size/mtime and the threshold."""
    if cache_dir is None:
        return find_duplicate_groups(sigs, threshold)
    digest = hashlib.sha1(f"{threshold!r}\n".encode())
    for p in paths:
        digest.update(_file_key(p).encode() + b"\n")
    cache_file = Path(cache_dir) / f"groups_{digest.hexdigest()[:16]}.npy"
    if cache_file.exists():
        try:
            groups = np.load(cache_file, allow_pickle=False)
            if groups.shape == (len(paths),):
                return groups
        except (OSError, ValueError):
            pass
    groups = find_duplicate_groups(sigs, threshold)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, groups)
    os.replace(tmp, cache_file)
    return groups


def make_split(
    records: Sequence[ImageRecord],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group_aware: bool = True,
    threshold: float = 0.85,
    cache_dir=None,
    workers: int = 2,
    progress: bool = True,
    subjects: Sequence[str] | None = None,
) -> SplitResult:
    """Signatures are computed even when not group-aware: they double as the bad-file check.

    ``subjects`` (one per record, "" for unknown) makes the split patient-level: whole subjects,
    with every near-duplicate group touching them, go to one side. Without subjects the units are
    the near-duplicate groups."""
    records = list(records)
    _check_split_args([], [], val_fraction, test_fraction)
    if subjects is not None and len(subjects) != len(records):
        raise ValueError(f"got {len(records)} records but {len(subjects)} subjects")
    sigs, bad, ok_index = cached_signatures(
        [r.path for r in records], cache_dir, workers, progress)
    kept = [records[k] for k in ok_index]
    kept_subjects = [""] * len(kept) if subjects is None else [subjects[k] for k in ok_index]
    labels = np.array([r.label for r in kept], np.int64)
    if group_aware:
        groups = _cached_groups(sigs, [r.path for r in kept], threshold, cache_dir)
        units = split_units(groups, kept_subjects) if any(kept_subjects) else groups
        splits = group_split(labels, units, val_fraction, test_fraction, seed)
    else:
        groups = np.arange(len(kept), dtype=np.int64)
        units = groups
        splits = random_split(labels, groups, val_fraction, test_fraction, seed)
    return SplitResult(records=kept, groups=groups, splits=splits, bad=bad, subjects=kept_subjects,
                       units=units)
