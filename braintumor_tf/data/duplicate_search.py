"""Near-duplicate pairs without comparing every pair: a similarity index over short signatures.

``duplicates.find_pairs`` correlates every pair over the 8 flips/rotations: O(N^2) products of
8 x 4096 values, about a minute at 10,000 images and days at a million. Here each 4096-value
signature is projected onto 128 random directions of the subspace that flips and rotations leave
unchanged (``invariant_projection``) and renormalised, so a copy turned any way lands where its
original does; an inverted-file index (faiss ``IndexIVFFlat``, inner product) holds the
projections and each one queries it once for neighbours above a lowered
``candidate_threshold``. Every candidate is then scored exactly on the full signatures over the
8 views, so no pair below ``threshold`` is ever reported and the output has the same form (and
transform codes) as ``find_pairs``.

A random projection keeps correlations unbiased, with a spread of about (1 - rho^2) / sqrt(dims)
(0.025 for a pair at 0.85 with 128 dims, 0.09 for an unrelated pair), so a candidate threshold
0.15 below the real one loses no pair and admits few strangers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from braintumor_tf.data.signatures import SIGNATURE_SIZE, dihedral_views
from braintumor_tf.log import log

DEFAULT_DIMS = 128
# Pixel orbits of a 64x64 thumbnail under the 8 flips/rotations: (4096 + 64 + 64) / 8.
INVARIANT_DIMS = 528
CANDIDATE_MARGIN = 0.15


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError("the approximate near-duplicate search needs faiss: "
                          "pip install 'braintumor_tf[scale]' (faiss-cpu)") from error
    return faiss


def _project(block: np.ndarray, basis: np.ndarray) -> np.ndarray:
    projected = np.asarray(block, np.float32) @ basis
    norms = np.linalg.norm(projected, axis=1, keepdims=True)
    return projected / np.maximum(norms, 1e-12)


def invariant_projection(dims: int = DEFAULT_DIMS, seed: int = 0) -> np.ndarray:
    """[4096, dims] orthonormal columns spanning random directions of the subspace of 64x64
    images that every flip and rotation leaves unchanged (528 dimensions: one per pixel orbit).

    A flip or rotation only permutes pixels, so averaging a random basis over the 8 permutations
    makes each column invariant, and so is any signature's projection: a copy turned any way
    projects onto the same point as its original, and one query per signature finds it (eight
    turned queries per signature cost eight times as much). A copy's noise shrinks with the
    signal in this subspace, so its correlation there stays that of the full signatures."""
    if not 8 <= dims <= INVARIANT_DIMS:
        raise ValueError(f"dims must be in [8, {INVARIANT_DIMS}], got {dims!r}")
    gaussian = np.random.default_rng(seed).standard_normal((SIGNATURE_SIZE, dims))
    pixel_index = np.arange(SIGNATURE_SIZE, dtype=np.float32)[np.newaxis]
    sources = dihedral_views(pixel_index)[:, 0].astype(np.int64)  # view t of x at p is x[sources[t, p]]
    symmetric = np.mean([gaussian[np.argsort(source)] for source in sources], axis=0)
    basis, _ = np.linalg.qr(symmetric)
    return np.ascontiguousarray(basis, np.float32)


class _Rows:
    """Row access for an in-memory array or anything with len() and slicing (a file reader)."""

    def __init__(self, signatures):
        self.source = signatures
        self.n = len(signatures)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.source[start:stop], np.float32)

    def take(self, indices: np.ndarray) -> np.ndarray:
        if isinstance(self.source, np.ndarray):
            return np.asarray(self.source[indices], np.float32)
        return np.stack([self(int(k), int(k) + 1)[0] for k in indices]) if len(indices) else \
            np.zeros((0, SIGNATURE_SIZE), np.float32)


def find_pairs_approximate(
    signatures,
    threshold: float = 0.85,
    dims: int = DEFAULT_DIMS,
    candidate_threshold: float | None = None,
    nprobe: int | None = None,
    chunk: int = 2048,
    seed: int = 0,
    progress: Callable[[str], None] | None = log,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, corr, transform) like ``duplicates.find_pairs``: pairs i < j whose best exact
    correlation over the 8 flips/rotations is >= ``threshold``, found through the index.

    ``signatures``: [N, 4096] array, or any object with ``len()`` and row slicing returning such
    rows (read chunk by chunk, so N signatures need not fit in memory; only the ``dims``-wide
    projections are held: 0.5 GB for a million at 128 dims).
    """
    faiss = _faiss()
    rows = _Rows(signatures)
    n = rows.n
    candidate_threshold = threshold - CANDIDATE_MARGIN if candidate_threshold is None \
        else float(candidate_threshold)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
             np.zeros(0, np.int64))
    if n < 2:
        return empty
    started = time.perf_counter()
    basis = invariant_projection(dims, seed)
    projected = np.zeros((n, dims), np.float32)
    for start in range(0, n, chunk):
        block = rows(start, min(n, start + chunk))
        if block.ndim != 2 or block.shape[1] != SIGNATURE_SIZE:
            raise ValueError(f"signatures must be [N, {SIGNATURE_SIZE}], got rows of {block.shape}")
        projected[start:start + len(block)] = _project(block, basis)
    # Blank images have all-zero signatures: they correlate with nothing (as in find_pairs).
    blank = ~np.any(projected != 0, axis=1)

    # Inverted lists: about sqrt(N) of them, each query looks into nprobe of the nearest.
    lists = int(np.clip(4 * np.sqrt(n), 1, 65536))
    lists = min(lists, max(1, n // 39))  # k-means wants >= 39 points per centroid
    nprobe = nprobe or max(1, min(lists, 16 if lists >= 256 else lists // 4 or 1))
    quantizer = faiss.IndexFlatIP(dims)
    index = faiss.IndexIVFFlat(quantizer, dims, lists, faiss.METRIC_INNER_PRODUCT)
    sample = projected[np.random.default_rng(seed).permutation(n)[:max(lists * 64, 10000)]]
    index.train(sample)
    index.add(projected)
    index.nprobe = nprobe
    if progress:
        progress(f"duplicate index: {n:,} signatures, {dims} dims, {lists} lists, nprobe {nprobe}, "
                 f"{time.perf_counter() - started:.1f} s")

    candidates: list[np.ndarray] = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        limits, _, found = index.range_search(projected[start:stop], candidate_threshold)
        counts = np.diff(limits).astype(np.int64)
        found = found.astype(np.int64)
        query_rows = np.repeat(np.arange(start, stop), counts)
        pairs = np.stack([np.minimum(query_rows, found), np.maximum(query_rows, found)], axis=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        if len(pairs):
            candidates.append(np.unique(pairs, axis=0))
        if progress and (stop == n or (start // chunk) % 16 == 15):
            progress(f"duplicate search: {stop:,}/{n:,} signatures queried, "
                     f"{time.perf_counter() - started:.1f} s")
    if not candidates:
        return empty
    pairs = np.unique(np.concatenate(candidates), axis=0)
    pairs = pairs[~blank[pairs[:, 0]] & ~blank[pairs[:, 1]]]
    return _rescore(rows, pairs, threshold)


def _rescore(rows: _Rows, pairs: np.ndarray, threshold: float, chunk: int = 512):
    """Exact best correlation over the 8 views for each candidate pair; keep >= threshold."""
    out = [[], [], [], []]
    for start in range(0, len(pairs), chunk):
        block = pairs[start:start + chunk]
        first, second = rows.take(block[:, 0]), rows.take(block[:, 1])
        scores = np.einsum("vbd,bd->vb", dihedral_views(first), second)  # [8, B]
        best = scores.max(axis=0)
        keep = best >= threshold
        out[0].append(block[keep, 0])
        out[1].append(block[keep, 1])
        out[2].append(best[keep].astype(np.float32))
        out[3].append(scores[:, keep].argmax(axis=0))
    i, j, c, t = (np.concatenate(part) for part in out)
    order = np.lexsort((j, i))
    return (i[order].astype(np.int64), j[order].astype(np.int64), c[order].astype(np.float32),
            t[order].astype(np.int64))
