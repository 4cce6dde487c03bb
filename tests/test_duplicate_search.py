"""The indexed near-duplicate search finds what the all-pairs search finds, and nothing below it."""

import sys

import numpy as np
import pytest

from braintumor_tf.data.duplicate_search import find_pairs_approximate, invariant_projection
from braintumor_tf.data.duplicates import find_duplicate_groups, find_pairs
from braintumor_tf.data.signatures import dihedral_views

pytest.importorskip("faiss")


def planted_signatures(n, copies, seed=0, noise=0.5):
    """Random unit signatures, ``copies`` of which are flipped/rotated noisy copies of others
    (noise <= 0.5 of the signal keeps every copy's correlation above 0.89)."""
    rng = np.random.default_rng(seed)
    signatures = rng.standard_normal((n, 4096)).astype(np.float32)
    sources = rng.choice(n, copies, replace=False)
    targets = rng.choice(np.setdiff1d(np.arange(n), sources), copies, replace=False)
    for source, target in zip(sources, targets, strict=True):
        view = dihedral_views(signatures[source:source + 1])[rng.integers(8), 0]
        signatures[target] = view + rng.standard_normal(4096).astype(np.float32) * rng.uniform(0.1, noise)
    signatures -= signatures.mean(axis=1, keepdims=True)
    signatures /= np.linalg.norm(signatures, axis=1, keepdims=True)
    return signatures, set(zip(np.minimum(sources, targets).tolist(),
                               np.maximum(sources, targets).tolist(), strict=True))


def test_same_pairs_correlations_and_transforms_as_the_exact_search():
    signatures, planted = planted_signatures(2500, 200)
    signatures[7] = 0.0  # a blank image correlates with nothing
    exact = find_pairs(signatures, 0.85)
    approximate = find_pairs_approximate(signatures, 0.85, progress=None)
    exact_pairs = set(zip(exact[0].tolist(), exact[1].tolist(), strict=True))
    found = set(zip(approximate[0].tolist(), approximate[1].tolist(), strict=True))
    assert exact_pairs and found == exact_pairs  # recall 1 and nothing extra
    assert planted <= found  # every planted copy, whatever its flip or rotation
    np.testing.assert_allclose(approximate[2], exact[2], atol=1e-5)
    np.testing.assert_array_equal(approximate[3], exact[3])
    assert approximate[2].min() >= 0.85


def test_a_lower_threshold_finds_more_and_every_pair_is_rescored_exactly():
    signatures, _ = planted_signatures(1500, 150, seed=1, noise=1.5)
    high = find_pairs_approximate(signatures, 0.85, progress=None)
    low = find_pairs_approximate(signatures, 0.5, progress=None)
    assert len(low[0]) > len(high[0])
    exact_low = find_pairs(signatures, 0.5)
    assert set(zip(low[0].tolist(), low[1].tolist(), strict=True)) == set(
        zip(exact_low[0].tolist(), exact_low[1].tolist(), strict=True))


def test_signatures_can_be_read_chunk_by_chunk_from_any_sliceable():
    signatures, _ = planted_signatures(1200, 100, seed=2)

    class Reader:  # e.g. a file read in row ranges: never the whole array at once
        def __init__(self):
            self.largest = 0

        def __len__(self):
            return len(signatures)

        def __getitem__(self, rows):
            block = signatures[rows]
            self.largest = max(self.largest, len(block))
            return block

    reader = Reader()
    from_reader = find_pairs_approximate(reader, 0.85, chunk=256, progress=None)
    from_array = find_pairs_approximate(signatures, 0.85, progress=None)
    for a, b in zip(from_reader, from_array, strict=True):
        np.testing.assert_array_equal(a, b)
    assert reader.largest <= 256


def test_groups_by_either_method_agree_and_bad_method_is_refused():
    signatures, _ = planted_signatures(1000, 120, seed=3)
    np.testing.assert_array_equal(find_duplicate_groups(signatures, method="approximate"),
                                  find_duplicate_groups(signatures, method="exact"))
    with pytest.raises(ValueError, match="auto, exact or approximate"):
        find_duplicate_groups(signatures, method="fast")


def test_projection_is_orthonormal_seeded_and_blind_to_flips_and_rotations():
    basis = invariant_projection(64, seed=5)
    np.testing.assert_allclose(basis.T @ basis, np.eye(64), atol=1e-5)
    np.testing.assert_array_equal(basis, invariant_projection(64, seed=5))
    signature = np.random.default_rng(0).standard_normal((1, 4096)).astype(np.float32)
    projected = dihedral_views(signature)[:, 0] @ basis  # the 8 turned copies
    np.testing.assert_allclose(projected, np.repeat(projected[:1], 8, axis=0), atol=1e-4)
    with pytest.raises(ValueError, match="dims"):
        invariant_projection(600)


def test_without_faiss_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"braintumor_tf\[scale\]"):
        find_pairs_approximate(np.zeros((10, 4096), np.float32))


def test_adding_images_to_an_audited_set_computes_only_the_new_signatures(tmp_path, monkeypatch):
    import cv2

    from braintumor_tf.data import signatures as signature_module

    rng = np.random.default_rng(0)
    paths = []
    for index in range(30):
        path = tmp_path / f"slice_{index:02d}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (48, 48), dtype=np.uint8))
        paths.append(str(path))
    cache = tmp_path / "cache"
    first, _, _ = signature_module.cached_signatures(paths[:20], cache, progress=False)
    decoded = []
    original = signature_module.read_image
    monkeypatch.setattr(signature_module, "read_image",
                        lambda path, *a, **k: decoded.append(path) or original(path, *a, **k))
    both, _, ok = signature_module.cached_signatures(paths, cache, progress=False)
    assert sorted(decoded) == paths[20:]  # the 20 audited before come from the cache
    assert len(ok) == 30 and np.array_equal(both[:20], first)
