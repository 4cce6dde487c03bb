"""Peak memory of ``predict --jsonl`` for folders of 1,000 and 10,000 images: it must not grow.

    python scripts/streaming_memory.py --model savedmodels/classifier/2 --out docs/streaming_memory.json

Writes synthetic 256x256 grey PNGs into a temporary folder (the largest count once; smaller runs
use a subset folder of links), runs the CLI in a fresh process per count and reads that
process's peak resident memory (ru_maxrss). Also reports images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def _write_images(folder: Path, count: int) -> None:
    import cv2

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (256, 256)).astype(np.float32), (0, 0), 6)
    for index in range(count):
        noise = rng.normal(0, 10, base.shape)
        image = np.clip(base * (0.5 + index % 7 / 7) + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img_{index:06d}.png"), image)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    counts = sorted(int(c) for c in args.counts.split(","))
    results = []
    with tempfile.TemporaryDirectory(prefix="streaming-") as tmp:
        everything = Path(tmp) / "all"
        everything.mkdir()
        _write_images(everything, counts[-1])
        names = sorted(os.listdir(everything))
        for count in counts:
            folder = Path(tmp) / f"n{count}"
            folder.mkdir()
            for name in names[:count]:
                os.symlink(everything / name, folder / name)
            out = Path(tmp) / f"n{count}.jsonl"
            command = [sys.executable, "-m", "braintumor_tf", "-q", "predict", "--model",
                       args.model, str(folder), "--jsonl", str(out)]
            started = time.perf_counter()
            run = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True,
                                 text=True)
            seconds = time.perf_counter() - started
            if run.returncode != 0:
                print(run.stderr[-2000:])
                return 1
            peak_mib = int(run.stdout.strip().splitlines()[-1]) / 1024
            lines = sum(1 for _ in open(out))
            results.append({"images": count, "records": lines, "peak_rss_mib": round(peak_mib, 1),
                            "seconds": round(seconds, 1),
                            "images_per_second": round(count / seconds, 1)})
            print(json.dumps(results[-1]), flush=True)
    report = {"model": args.model, "runs": results,
              "peak_growth_mib": round(results[-1]["peak_rss_mib"] - results[0]["peak_rss_mib"], 1)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
