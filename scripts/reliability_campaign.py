"""Rerun the reliability campaign and print its figures (docs/RELIABILITY.md quotes them).

    python scripts/reliability_campaign.py [--out docs/reliability_campaign.json] [--requests 2000]

Four parts, all on data made here (no ../shared needed), in a temporary folder:
1. kill points: a tiny deterministic training killed at each fault point (braintumor_tf.faults),
   resumed, and compared weight for weight with an uninterrupted run;
2. odd files: a class folder of broken, hostile and unusual entries, listed and checked as
   `train` does; each must be used (if it is a good image) or reported with a reason;
3. COCO variants: hostile annotation files, each must end in one clear line (a ValueError);
4. serving: a tiny exported classifier queried from several threads with some garbage and
   pixel bombs mixed in: errors on good requests, refusals of bad ones, resident memory growth.
Takes ~12 minutes on 2 cores, most of it in part 1 (21 tiny trainings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # support.pixel_bombs: the same bombs the tests use

TINY = ["--set", "data.phantom_images_per_class=24", "--set", "data.phantom_image_size=48",
        "--set", "data.image_size=48", "--set", "model.stem_filters=8",
        "--set", "model.block_filters=[8, 16]", "--set", "model.block_kernel_sizes=[3, 3]",
        "--set", "model.block_downsample=[true, false]", "--set", "model.dense_units=16",
        "--set", "train.batch_size=16", "--set", "train.verbose=0", "--set", "train.epochs=3",
        "--set", "train.precision=float32", "--set", "train.deterministic=true"]
KILL_POINTS = [("train_batch", 3), ("train_batch", 7), ("train_batch", 12),
               ("backup_weights_written", 1), ("backup_weights_written", 2),
               ("backup_metadata_written", 2), ("best_saved", 1), ("best_saved", 3),
               ("history_written", 2), ("finish", 1)]


def _train(run_dir: Path, kill_at=None) -> int:
    env = dict(os.environ)
    if kill_at:
        env["BRAINTUMOR_TF_KILL_AT"] = f"{kill_at[0]}:{kill_at[1]}"
    return subprocess.run([sys.executable, "-m", "braintumor_tf.train", "--run", str(run_dir),
                           *TINY], capture_output=True, env=env, timeout=900).returncode


def _weights(run_dir: Path):
    from braintumor_tf.custom_objects import load_model

    return load_model(run_dir / "model.keras", compile=False).get_weights()


def kill_points(work: Path) -> dict:
    assert _train(work / "reference") == 0, "the uninterrupted run failed"
    reference = _weights(work / "reference")
    killed = resumed = identical = 0
    for point, count in KILL_POINTS:
        run_dir = work / f"{point}-{count}"
        killed += _train(run_dir, (point, count)) == -9
        if _train(run_dir) != 0:
            continue
        resumed += 1
        identical += all(np.array_equal(a, b) for a, b in zip(_weights(run_dir), reference,
                                                              strict=True))
    return {"kill_points_tried": len(KILL_POINTS), "killed": killed, "resumed": resumed,
            "identical_weights": identical}


def odd_files(work: Path) -> dict:
    from support import pixel_bombs

    from braintumor_tf.data.decode import check_images
    from braintumor_tf.data.discover import discover_images, odd_entries

    folder = work / "glioma"
    folder.mkdir(parents=True)  # the class folder the listing labels
    image = (np.indices((64, 64)).sum(axis=0) % 255).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    png = cv2.imencode(".png", image)[1].tobytes()
    used = {"good.png": png, "good.jpg": jpeg, "trailing_bytes.jpg": jpeg + b"\x00metadata",
            "sixteen_bit.png": cv2.imencode(".png", image.astype(np.uint16) * 257)[1].tobytes(),
            os.fsdecode(b"not_utf8_\xff.png"): png}
    reported = {"truncated.jpg": jpeg[: len(jpeg) // 2], "truncated.png": png[: len(png) // 2],
                "empty.png": b"", "garbage.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
                "text.jpg": b"this is not an image",
                # .gif is not a training extension (the listing ignores it); serving checks it.
                **{name: data for name, data in pixel_bombs(12000, 12000).items()
                   if not name.endswith(".gif")}}
    for name, data in {**used, **reported}.items():
        (folder / name).write_bytes(data)
    os.mkfifo(folder / "pipe.png")
    (folder / "dangling.png").symlink_to(work / "gone.png")
    (folder / "self.png").symlink_to(folder / "self.png")
    (folder / "folder.jpg").mkdir()
    (folder / "loop").symlink_to(folder)
    entries_reported = {"pipe.png", "dangling.png", "self.png", "folder.jpg", "loop"}
    start = time.perf_counter()
    records = discover_images([work])
    good, bad = check_images([record.path for record in records])
    odd = odd_entries([work])
    seconds = time.perf_counter() - start
    names_good = {os.path.basename(path) for path in good}
    names_reported = ({os.path.basename(row["path"]) for row in bad if row["reason"]}
                      | {os.path.basename(row["path"]) for row in odd if row["reason"]})
    missed = ([name for name in used if name not in names_good]
              + [name for name in [*reported, *entries_reported]
                 if name not in names_reported or name in names_good])
    for name in missed:
        print(f"  odd file not handled as expected: {name!r}")
    handled = len(used) + len(reported) + len(entries_reported) - len(missed)
    return {"odd_files_tried": len(used) + len(reported) + len(entries_reported),
            "odd_files_handled": handled, "odd_files_seconds": round(seconds, 2)}


def coco_variants(work: Path) -> dict:
    from braintumor_tf.data.coco import ANNOTATION_FILE, load_coco_split

    height, width = 40, 50
    image = {"id": 1, "file_name": "a.png", "height": height, "width": width}

    def annotation(segmentation):
        return {"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation,
                "iscrowd": 0}

    def document(annotations, images=None):
        return json.dumps({"images": images or [image], "annotations": annotations,
                           "categories": [{"id": 1, "name": "tumour"}]}).encode()

    variants = {
        "rle counts too large (list)": document([annotation({"size": [height, width],
                                                             "counts": [10 ** 30, 5]})]),
        "rle counts too large (string)": document([annotation({"size": [height, width],
                                                               "counts": "o" * 40 + "0"})]),
        "polygon at 1e9": document([annotation([[0, 0, 1e9, 0, 1e9, 1e9, 0, 1e9]])]),
        "polygon of 10,001 points": document([annotation([[float(v) for v in range(20_002)]])]),
        "odd number of coordinates": document([annotation([[1, 2, 3, 4, 5]])]),
        "segmentation of the wrong type": document([annotation("a string")]),
        "5,000-deep nesting": b"[" * 5000 + b"]" * 5000,
        "not UTF-8": b'{"images": [], "annotations": [], "x": "\xff\xfe"}',
        "no annotations key": json.dumps({"images": [image]}).encode(),
        "annotations not a list": json.dumps({"images": [image], "annotations": {}}).encode(),
        "image size negative": document([], [{**image, "height": -4}]),
        "annotation of an unknown image": document([{**annotation([[1, 1, 5, 1, 5, 5]]),
                                                     "image_id": 99}]),
        "not JSON at all": b"<html>",
        "file_name outside the folder": document([], [{**image, "file_name": "../../etc/passwd"}]),
    }
    clear = tracebacks = accepted = 0
    for index, (name, data) in enumerate(variants.items()):
        folder = work / f"coco{index}"
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / "a.png"), np.full((height, width), 90, np.uint8))
        (folder / ANNOTATION_FILE).write_bytes(data)
        try:
            load_coco_split(folder)
            accepted += 1
            print(f"  COCO variant accepted: {name}")
        except ValueError as error:
            clear += "\n" not in str(error)
        except Exception as error:  # noqa: BLE001 - counting what escapes
            tracebacks += 1
            print(f"  COCO variant gave {type(error).__name__}: {name}")
    return {"coco_variants_tried": len(variants), "coco_clear_errors": clear,
            "coco_tracebacks": tracebacks, "coco_accepted": accepted}


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def serving(work: Path, requests: int, threads: int = 8) -> dict:
    import keras
    import tensorflow as tf
    from support import pixel_bombs

    from braintumor_tf.export.savedmodel import export_classifier

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model_dir = export_classifier(keras.Model(inputs, outputs), work / "served" / "1",
                                  ("glioma", "meningioma", "notumor", "pituitary"))
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    rng = np.random.default_rng(0)
    good = [cv2.imencode(".png", rng.integers(0, 255, (64, 64), dtype=np.uint8))[1].tobytes()
            for _ in range(8)]
    bad = [b"garbage", b"\x89PNG\r\n\x1a\nbroken", *pixel_bombs(20000, 20000).values()]
    plan = ["bad" if rng.random() < 0.05 else "good" for _ in range(requests)]
    counts = {"good": 0, "good_errors": 0, "bad": 0, "bad_refused": 0}
    lock = threading.Lock()

    def worker(items, seed):
        choose = np.random.default_rng(seed)
        for kind in items:
            candidates = bad if kind == "bad" else good
            data = candidates[int(choose.integers(len(candidates)))]
            try:
                serve(images=tf.constant([data]))
                failed = False
            except tf.errors.InvalidArgumentError:
                failed = True
            with lock:
                counts[kind] += 1
                counts["good_errors" if kind == "good" else "bad_refused"] += failed

    worker(plan[:50], 0)  # warm up before measuring memory
    before = _rss_mib()
    chunks = [plan[50 + i::threads] for i in range(threads)]
    pool = [threading.Thread(target=worker, args=(chunk, seed + 1))
            for seed, chunk in enumerate(chunks)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {"serving_requests": counts["good"] + counts["bad"], "serving_threads": threads,
            "serving_errors_on_good_requests": counts["good_errors"],
            "serving_bad_requests": counts["bad"], "serving_bad_refused": counts["bad_refused"],
            "serving_seconds": round(time.perf_counter() - start, 1),
            "serving_rss_growth_mib": round(_rss_mib() - before, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="Also write the figures here as JSON.")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--skip-kills", action="store_true", help="Skip part 1 (the slow one).")
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="reliability-") as work:
        work = Path(work)
        for name, part in [("odd files", lambda: odd_files(work / "odd")),
                           ("COCO variants", lambda: coco_variants(work / "coco")),
                           ("serving", lambda: serving(work / "serving", args.requests)),
                           ("kill points", None if args.skip_kills else
                            lambda: kill_points(work / "kills"))]:
            if part is None:
                continue
            start = time.perf_counter()
            figures.update(part())
            print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print("\n| figure | value |\n|---|---|")
    for key, value in figures.items():
        print(f"| {key} | {value} |")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
