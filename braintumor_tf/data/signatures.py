"""Image signatures for near-duplicate search: high-passed 64x64 thumbnails, cached per file.

A dot product of two signatures is a Pearson correlation that ignores brightness, contrast and the
low-frequency look of a scanner; the cache is keyed by path, size and mtime.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from braintumor_tf import writes
from braintumor_tf.data import filesystem
from braintumor_tf.data.decode import DecodeError, error_text, read_image
from braintumor_tf.log import log, logger

THUMB = 64
SIGNATURE_SIZE = THUMB * THUMB
_CACHE_NAME = "signatures.npz"


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


def dihedral_views(block: np.ndarray) -> np.ndarray:
    """[B, 4096] -> [8, B, 4096]: identity, rot90, rot180, rot270, flip_lr, flip_ud, transpose,
    anti_transpose (duplicates.TRANSFORM_NAMES)."""
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
                log(f"signatures: {done}/{n} images, {len(bad)} bad, "
                    f"{time.perf_counter() - start:.1f} s")
    ok_index = np.flatnonzero(ok)
    return sigs[ok_index], bad, ok_index


def _file_key(path: str) -> str:
    size, mtime_ns = filesystem.size_and_mtime(path)  # remote files too (gs://, ...)
    return f"{path}|{size}|{mtime_ns}"


def _store(cache_file: Path, keys: np.ndarray, sigs: np.ndarray) -> None:
    """Write the cache beside itself and move it over. A disk that refuses the write (full,
    read-only) costs only the cache: one warning naming it, and the run goes on."""
    tmp = cache_file.with_name(f".{cache_file.stem}.{os.getpid()}.tmp.npz")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, keys=keys, signatures=sigs)
        os.replace(tmp, cache_file)
    except OSError as error:
        refused = writes.failure(cache_file, error, "the signature cache")
        if refused is None:
            raise
        tmp.unlink(missing_ok=True)
        logger.warning(f"{refused}; going on without caching (signatures are computed again "
                       "next time)")


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
            logger.warning(f"ignoring unreadable signature cache {cache_file}: {exc}")
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
            _store(cache_file, all_keys, all_sigs)
    # Keep bad-file order identical to an uncached run.
    order = {p: k for k, p in enumerate(paths)}
    bad_all.sort(key=lambda b: order[b["path"]])
    ok_index = np.flatnonzero(ok)
    return sigs[ok_index], bad_all, ok_index
