"""Time and peak memory of the near-duplicate search against N: all pairs vs the index.

Synthetic signatures (as the audit computes from images: unit 4096-vectors) with planted copies
(flipped/rotated, noisy, correlation >= 0.89), so recall can be counted at any N. Each
measurement runs in a fresh process and reads its peak resident memory; signatures for large N
are written to a float16 file and read in row ranges, so the search never holds all of them.

    python scripts/duplicate_scaling.py --exact 10000,30000 --approximate 10000,30000,100000 \
        --out docs/duplicate_scaling.json --figure docs/duplicate_scaling.png
    python scripts/duplicate_scaling.py --approximate 10000,30000,100000,1000000 \
        --merge docs/duplicate_scaling.json --out docs/duplicate_scaling.json \
        --figure docs/duplicate_scaling.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PLANTED_FRACTION = 0.02
CHUNK = 8192


class SignatureFile:
    """float16 rows on disk, read on demand (slices) as float32."""

    def __init__(self, path: Path, n: int):
        self.path, self.n = Path(path), n

    def __len__(self):
        return self.n

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.n)
        with open(self.path, "rb") as handle:
            handle.seek(start * 4096 * 2)
            data = np.fromfile(handle, np.float16, (stop - start) * 4096)
        return data.reshape(-1, 4096).astype(np.float32)


def write_signatures(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """Writes N signatures; returns the planted pairs [P, 2] (i < j)."""
    from braintumor_tf.data.signatures import dihedral_views

    rng = np.random.default_rng(seed)
    planted = max(1, int(n * PLANTED_FRACTION))
    order = rng.permutation(n)
    targets, sources = order[:planted], order[planted:2 * planted]  # a source is never overwritten
    by_chunk = {}
    for source, target in zip(sources, targets, strict=True):
        by_chunk.setdefault(int(target) // CHUNK, []).append((int(source), int(target)))
    noise_seed = np.random.default_rng(seed + 1)
    with open(path, "wb") as handle:
        for start in range(0, n, CHUNK):
            block = _base(start, min(n, start + CHUNK), seed)
            for source, target in by_chunk.get(start // CHUNK, []):
                view = dihedral_views(_base(source, source + 1, seed))[noise_seed.integers(8), 0]
                noise = noise_seed.standard_normal(4096).astype(np.float32) / 64.0  # unit norm
                noisy = view + noise * noise_seed.uniform(0.1, 0.5)
                noisy -= noisy.mean()
                block[target - start] = noisy / np.linalg.norm(noisy)
            block.astype(np.float16).tofile(handle)
    pairs = np.stack([np.minimum(sources, targets), np.maximum(sources, targets)], axis=1)
    return pairs


def _base(start: int, stop: int, seed: int) -> np.ndarray:
    """Row k's random signature depends only on (seed, k): any row can be regenerated alone."""
    rows = np.stack([np.random.default_rng([seed, k]).standard_normal(4096, dtype=np.float32)
                     for k in range(start, stop)])
    rows -= rows.mean(axis=1, keepdims=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def measure(method: str, path: Path, n: int, pairs_file: Path) -> dict:
    """In this (fresh) process: run the search, return time, peak RSS and recall."""
    from braintumor_tf.data.duplicate_search import find_pairs_approximate
    from braintumor_tf.data.duplicates import find_pairs

    signatures = SignatureFile(path, n)
    start = time.perf_counter()
    if method == "exact":
        found = find_pairs(signatures[0:n], 0.85)
    else:
        found = find_pairs_approximate(signatures, 0.85, progress=lambda m: print(m, flush=True))
    seconds = time.perf_counter() - start
    planted = {tuple(p) for p in np.load(pairs_file).tolist()}
    got = set(zip(found[0].tolist(), found[1].tolist(), strict=True))
    return {"method": method, "n": n, "seconds": round(seconds, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "pairs_found": len(got), "planted": len(planted),
            "planted_recall": round(len(planted & got) / len(planted), 5),
            "min_correlation": float(found[2].min()) if len(found[2]) else None,
            "pairs": sorted(got)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact", default="", help="comma-separated N for the all-pairs search")
    parser.add_argument("--approximate", default="", help="comma-separated N for the index")
    parser.add_argument("--out", required=True)
    parser.add_argument("--figure", default=None)
    parser.add_argument("--work", default=None, help="folder for the signature files (large)")
    parser.add_argument("--merge", default=None,
                        help="an earlier --out JSON whose results (of other methods or sizes) are "
                             "kept beside the new ones, in the JSON and the figure")
    parser.add_argument("--_measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        method, path, n, pairs_file = args._measure
        print("RESULT " + json.dumps(measure(method, Path(path), int(n), Path(pairs_file))))
        return 0
    sizes = {"exact": [int(v) for v in args.exact.split(",") if v],
             "approximate": [int(v) for v in args.approximate.split(",") if v]}
    work = Path(args.work or tempfile.mkdtemp(prefix="dup_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sorted(set(sizes["exact"]) | set(sizes["approximate"])):
        path, pairs_file = work / f"signatures_{n}.f16", work / f"planted_{n}.npy"
        if not path.exists():
            print(f"writing {n:,} signatures to {path}", flush=True)
            np.save(pairs_file, write_signatures(path, n))
        by_method = {}
        for method in ("exact", "approximate"):
            if n not in sizes[method]:
                continue
            process = subprocess.run([sys.executable, __file__, "--out", args.out, "--_measure",
                                      method, str(path), str(n), str(pairs_file)],
                                     capture_output=True, text=True, env=dict(os.environ))
            lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
            if process.returncode != 0 or not lines:
                raise SystemExit(f"{method} at N={n} failed:\n{process.stderr[-3000:]}")
            result = json.loads(lines[-1][len("RESULT "):])
            by_method[method] = set(map(tuple, result.pop("pairs")))
            if method == "approximate" and "exact" in by_method:
                exact = by_method["exact"]
                found = by_method[method]
                result["recall_of_exact_pairs"] = round(len(exact & found) / max(1, len(exact)), 5)
                result["pairs_not_in_exact"] = len(by_method[method] - exact)
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.merge:
        measured = {(r["method"], r["n"]) for r in results}
        earlier = json.loads(Path(args.merge).read_text())["results"]
        results = [r for r in earlier if (r["method"], r["n"]) not in measured] + results
        results.sort(key=lambda r: (r["method"], r["n"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threshold": 0.85, "planted_fraction": PLANTED_FRACTION,
                                          "cores": os.cpu_count(), "results": results}, indent=2))
    if args.figure:
        _plot(results, Path(args.figure))
    return 0


def _plot(results, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in (("exact", "o"), ("approximate", "s")):
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["n"])
        if rows:
            left.plot([r["n"] for r in rows], [r["seconds"] for r in rows], marker=marker, label=method)
            right.plot([r["n"] for r in rows], [r["peak_rss_mib"] for r in rows], marker=marker,
                       label=method)
    for axis, label in ((left, "seconds"), (right, "peak RSS (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("signatures (N)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.suptitle("Near-duplicate search: all pairs vs faiss index (2 cores)")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
