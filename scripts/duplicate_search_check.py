"""The indexed near-duplicate search against the all-pairs one on real images.

Every image under the given folders (default ../shared/data/classification: ~9,900 slices full of
re-encoded, resized, mirrored and rotated copies) gets its signature (cached under --cache),
then both searches run at the audit's threshold and the pair sets are compared.

    python scripts/duplicate_search_check.py --out docs/duplicate_search_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from braintumor_tf.data.duplicate_search import find_pairs_approximate
from braintumor_tf.data.duplicates import find_pairs
from braintumor_tf.data.signatures import cached_signatures

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=["../shared/data/classification"])
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--cache", default="runs/duplicate_check_cache")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    missing = [folder for folder in args.folders if not Path(folder).is_dir()]
    if missing:
        print(f"no such folder: {', '.join(missing)} (the real data sets live in ../shared/data; "
              "give another folder of images)", file=sys.stderr)
        return 2
    paths = sorted(str(p) for folder in args.folders for p in Path(folder).rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES)
    signatures, bad, _ = cached_signatures(paths, args.cache)
    print(f"{len(signatures):,} signatures ({len(bad)} unreadable files)")
    results = {"images": len(signatures), "threshold": args.threshold}
    found = {}
    for name, search in (("exact", lambda: find_pairs(signatures, args.threshold)),
                         ("approximate", lambda: find_pairs_approximate(signatures, args.threshold))):
        start = time.perf_counter()
        i, j, corr, _ = search()
        found[name] = set(zip(i.tolist(), j.tolist(), strict=True))
        results[name] = {"seconds": round(time.perf_counter() - start, 2), "pairs": len(i),
                         "min_correlation": float(corr.min()) if len(corr) else None}
    both = found["exact"] & found["approximate"]
    results["recall_of_exact_pairs"] = round(len(both) / max(1, len(found["exact"])), 5)
    results["pairs_only_in_approximate"] = len(found["approximate"] - found["exact"])
    missed = sorted(found["exact"] - found["approximate"])
    if missed:
        exact = find_pairs(signatures, args.threshold)
        lookup = {pair: c for pair, c in zip(zip(exact[0].tolist(), exact[1].tolist(), strict=True),
                                             exact[2].tolist(), strict=True)}
        results["missed_correlations"] = sorted(round(lookup[pair], 4) for pair in missed)[:50]
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
