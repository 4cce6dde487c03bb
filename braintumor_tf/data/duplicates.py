"""Near-duplicate pairs and groups: correlations of signatures over the 8 flips/rotations.

The public MRI sets hold many re-encoded, resized, mirrored, rotated and contrast-changed copies
of the same slice; a group holds every copy of one slice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from braintumor_tf.data.discover import ImageRecord
from braintumor_tf.data.signatures import (
    SIGNATURE_SIZE,
    _file_key,
    cached_signatures,
    dihedral_views,
)
from braintumor_tf.data.subjects import renumber_by_first_member
from braintumor_tf.log import logger

# Index i names what turns image A into its copy B when a pair reports transform i.
TRANSFORM_NAMES = (
    "identity", "rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "anti_transpose",
)


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
        views = dihedral_views(rows).reshape(8 * b, SIGNATURE_SIZE)
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
        views = dihedral_views(rows).reshape(8 * len(rows), SIGNATURE_SIZE)
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


# Above this many images the all-pairs search takes minutes to hours; the index takes seconds.
APPROXIMATE_ABOVE = 20000


def find_duplicate_groups(signatures: np.ndarray, threshold: float = 0.85,
                          method: str = "auto") -> np.ndarray:
    """``method``: ``exact`` (all pairs), ``approximate`` (duplicate_search, needs faiss) or
    ``auto`` (approximate above APPROXIMATE_ABOVE images when faiss is installed)."""
    if method not in ("auto", "exact", "approximate"):
        raise ValueError(f"method must be auto, exact or approximate, got {method!r}")
    if method == "auto":
        method = "exact"
        if len(signatures) > APPROXIMATE_ABOVE:
            try:
                import faiss  # noqa: F401

                method = "approximate"
            except ImportError:
                logger.warning(f"{len(signatures):,} images: the all-pairs duplicate search is slow at "
                               "this size; pip install 'braintumor_tf[scale]' for the indexed one")
    if method == "approximate":
        from braintumor_tf.data.duplicate_search import find_pairs_approximate

        i, j, _, _ = find_pairs_approximate(signatures, threshold)
    else:
        i, j, _, _ = find_pairs(signatures, threshold)
    return groups_from_pairs(len(signatures), i, j)


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


def cached_groups(sigs: np.ndarray, paths: list[str], threshold: float, cache_dir) -> np.ndarray:
    """The all-pairs search dominates a re-run (~30 s for 8,000 images), so its result is
    cached too, keyed by every file's path/size/mtime and the threshold."""
    if cache_dir is None:
        return find_duplicate_groups(sigs, threshold)
    digest = hashlib.sha1(f"{threshold!r}\n".encode())
    for p in paths:
        digest.update(os.fsencode(_file_key(p)) + b"\n")  # any file name
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
