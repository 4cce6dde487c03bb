"""Rerun the reliability campaign and print its figures (docs/RELIABILITY.md quotes them).

    python scripts/reliability_campaign.py [--out docs/reliability_campaign.json] [--requests 2000]

Four parts, all on data made here (no ../shared needed), in a temporary folder:
1. kill points: a tiny deterministic training killed at each fault point (braintumor_tf.faults),
   resumed, and compared weight for weight with an uninterrupted run;
2. odd files: a class folder of broken, hostile and unusual entries, listed and checked as
   `train` does; each must be used (if it is a good image) or reported with a reason;
3. COCO variants: hostile annotation files, each must end in one clear line (a ValueError);
4. serving: a tiny exported classifier queried from several threads with some garbage and
   pixel bombs mixed in: errors on good requests, refusals of bad ones, resident memory growth;
5. hostile inputs (issue 30), each a real command in a subprocess with a deadline and a 6 GB
   address-space cap, counted as hangs (deadline passed), tracebacks and peak resident memory per
   class: FIFOs, links out of the data root, sparse giant files, YAML alias bombs, volume bombs,
   slow clients against the demo (in this process), oversize REST answers, damaged run files.
   ``--only new`` runs this part alone (a few minutes).
Takes ~12 minutes on 2 cores without part 5, most of it in part 1 (21 tiny trainings).
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


DEADLINE = 180  # seconds; a probe still running then is a hang
AS_CAP = 6 << 30  # address-space cap of every probe: a runaway allocation fails, it cannot OOM us


def _probe(args: list[str], env: dict | None = None, deadline: float = DEADLINE,
           module: str = "braintumor_tf") -> dict:
    """Run ``python -m <module> *args``; its exit code, whether it hung or printed a
    traceback, its peak resident memory (its own, from wait4) and its last stderr line."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (AS_CAP, AS_CAP))
        os.nice(5)

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", module, *args], stdout=out,
                                   stderr=err, stdin=subprocess.DEVNULL, preexec_fn=cap,
                                   env={**os.environ, **(env or {})})
        hung = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > deadline:
                hung = True
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {"exit": process.returncode, "hung": hung, "traceback": "Traceback (most" in stderr,
            "peak_mib": round(usage.ru_maxrss / 1024, 1),
            "seconds": round(time.perf_counter() - start, 1),
            "last_line": lines[-1][:300] if lines else ""}


def _tiny_classifier(path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(path)
    return path


def _class_folder(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(1)
    for k in range(count):
        folder = root / ("glioma", "notumor")[k % 2]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{k}.png"), rng.integers(0, 255, (48, 48), dtype=np.uint8))
    return root


def _sparse(path: Path, size: int = 3 << 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _volume_bomb(path: Path, side: int = 640) -> Path:
    import gzip

    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    slab = bytes(side * side * 16)
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(header.binaryblock + bytes(352 - len(header.binaryblock)))
        for _ in range(side // 16):
            handle.write(slab)
    return path


class _OversizeServer:
    """A REST 'server' answering every request with a 2 GB Content-Length it never sends, or
    with a chunked body that never ends."""

    def __init__(self, mode: str):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.do_POST()

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if mode == "length":
                    self.send_header("Content-Length", str(2 << 30))
                    self.end_headers()
                    self.wfile.write(b'{"predictions": [' + b" " * 65536)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"[" * 65536
                try:
                    for _ in range(2 << 14):  # 2 GB of '[' unless the client hangs up first
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _demo_slow_clients(work: Path, model: Path) -> dict:
    """20 clients sending half their headers and 5 dripping their bodies, then 20 ordinary
    requests (a page load and a prediction each): how many are answered, how fast; and an
    upload of 200 files."""
    import socket
    import urllib.error
    import urllib.request

    from braintumor_tf.api import load
    from braintumor_tf.demo.app import create_app, create_server, stop_server

    server = create_server(create_app(load(model)), "127.0.0.1", 0, channel_timeout=30)
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    port = server.effective_port
    png = cv2.imencode(".png", np.random.default_rng(2).integers(0, 255, (48, 48),
                                                                dtype=np.uint8))[1].tobytes()

    def form(count):
        parts = [b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"%d.png\""
                 b"\r\nContent-Type: image/png\r\n\r\n%s\r\n" % (k, png) for k in range(count)]
        return b"".join(parts) + b"--b--\r\n"

    def post(count, timeout=30):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=form(count),
                                         headers={"Content-Type": "multipart/form-data; "
                                                                  "boundary=b"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    before = _rss_mib()
    stalled = []
    for k in range(25):
        sock = socket.create_connection(("127.0.0.1", port))
        if k < 20:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
        else:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                         b"form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n")
        stalled.append(sock)
    answered, slowest = 0, 0.0
    for _ in range(20):
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=10):
                pass
            answered += post(1, timeout=10) == 200
        except OSError:
            pass
        slowest = max(slowest, time.perf_counter() - start)
    start = time.perf_counter()
    status_200 = post(200)
    refused_seconds = time.perf_counter() - start
    for sock in stalled:
        sock.close()
    stop_server(server, loop)
    return {"tried": 20 + 25 + 1, "hangs": 20 - answered, "tracebacks": 0,
            "peak_mib": round(_rss_mib(), 1), "rss_growth_mib": round(_rss_mib() - before, 1),
            "note": f"{answered}/20 ordinary requests answered beside 25 stalled connections, "
                    f"slowest {slowest:.2f} s; 200 files in one request: HTTP {status_200} in "
                    f"{refused_seconds:.2f} s"}


def _damaged_runs(work: Path) -> list[tuple[str, dict]]:
    """A tiny finished run, copied and damaged, then the same train command again."""
    import shutil

    base = work / "run"
    if _train(base) != 0:
        return [("training the base run", {"exit": 1, "hung": False, "traceback": True,
                                           "peak_mib": 0, "seconds": 0, "last_line": "failed"})]
    damages = {
        "empty summary.json": lambda run: (run / "summary.json").write_bytes(b""),
        "cut-short split.json": lambda run: (run / "split.json").write_bytes(
            (run / "split.json").read_bytes()[:20]),
        "empty subjects.json": lambda run: (run / "subjects.json").write_bytes(b"")
        if (run / "subjects.json").exists() else None,
        "zeroed best.keras, empty summary.json": lambda run: (
            (run / "best.keras").write_bytes(bytes((run / "best.keras").stat().st_size)),
            (run / "summary.json").write_bytes(b"")),
        "backup/ left after summary.json": lambda run: (run / "backup").mkdir(exist_ok=True),
        "cut-short split_manifest.csv": lambda run: (run / "split_manifest.csv").write_bytes(
            (run / "split_manifest.csv").read_bytes()[:200]),
    }
    results = []
    reference = _weights(base)
    for k, (name, damage) in enumerate(damages.items()):
        run = work / f"damaged{k}"
        shutil.copytree(base, run)
        damage(run)
        result = _probe(["--run", str(run), *TINY], module="braintumor_tf.train")
        # Nothing lost: the rerun ends with the base run's model and readable records.
        try:
            result["same_weights"] = all(np.array_equal(a, b)
                                         for a, b in zip(_weights(run), reference, strict=True))
            for record in ("summary.json", "split.json", "subjects.json"):
                if (base / record).exists():
                    json.loads((run / record).read_text())
            result["records_readable"] = True
        except Exception as error:  # noqa: BLE001 - reported, not raised
            result.setdefault("same_weights", False)
            result["records_readable"] = False
            result["last_line"] += f" [after the rerun: {type(error).__name__}: {error}]"[:300]
        results.append((name, result))
    return results


def hostile_inputs(work: Path) -> dict:
    """Part 5: the classes of issue 30, each probe a real command (see _probe)."""
    work.mkdir(parents=True)
    model = _tiny_classifier(work / "tiny.keras")
    good = _class_folder(work / "good")
    good_png = str(next((good / "glioma").iterdir()))
    classes: dict[str, list[tuple[str, dict]]] = {}

    # What ordinary inputs cost, to read the peaks below against (TensorFlow is most of it)
    classes["baseline: ordinary inputs"] = [
        ("data audit", _probe(["data", "audit", str(good), "--out", str(work / "a_good")])),
        ("predict a PNG", _probe(["predict", good_png, "--model", str(model)])),
    ]
    # FIFOs
    fifo_data = _class_folder(work / "fifo_data")
    os.mkfifo(fifo_data / "glioma" / "scan")  # extensionless: the DICOM sniff used to open it
    os.mkfifo(work / "some.fifo.png")
    classes["FIFOs"] = [
        ("data audit, FIFO in a class folder",
         _probe(["data", "audit", str(fifo_data), "--out", str(work / "a_fifo")])),
        ("evaluate, FIFO in a class folder",
         _probe(["evaluate", "--model", str(model), "--data", str(fifo_data)])),
        ("predict a FIFO named .png", _probe(["predict", str(work / "some.fifo.png"),
                                              "--model", str(model)])),
        ("predict --server a FIFO", _probe(["predict", str(work / "some.fifo.png"), "--server",
                                            "http://127.0.0.1:9", "--model-name", "classifier",
                                            "--timeout", "5"])),
    ]
    # Links out of the data root
    linked = _class_folder(work / "linked")
    os.symlink("/", linked / "glioma" / "root")
    os.symlink("/etc/passwd", linked / "notumor" / "passwd.png")
    classes["links out of the root"] = [
        ("data audit, link to / in a class folder",
         _probe(["data", "audit", str(linked), "--out", str(work / "a_links")])),
        ("data audit /proc/self", _probe(["data", "audit", "/proc/self",
                                          "--out", str(work / "a_proc")])),
        ("predict a folder with a link to /", _probe(["predict", str(linked), "--model",
                                                       str(model)])),
    ]
    # Sparse giant files
    sparse_data = _class_folder(work / "sparse_data")
    _sparse(sparse_data / "glioma" / "huge.jpg")
    huge = _sparse(work / "huge.jpg")
    classes["sparse giant files (3 GB)"] = [
        ("data audit", _probe(["data", "audit", str(sparse_data), "--out",
                               str(work / "a_sparse")])),
        ("evaluate", _probe(["evaluate", "--model", str(model), "--data", str(sparse_data)])),
        ("predict", _probe(["predict", str(huge), "--model", str(model)])),
        ("predict --server", _probe(["predict", str(huge), "--server", "http://127.0.0.1:9",
                                     "--model-name", "classifier", "--timeout", "5"])),
        ("predict a sparse .nii", _probe(["predict", str(_sparse(work / "huge.nii")),
                                          "--model", str(model)])),
    ]
    # YAML alias bombs and other hostile configs
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + k)}: &{chr(98 + k)} [*{chr(97 + k)},*{chr(97 + k)},*{chr(97 + k)},"
        f"*{chr(97 + k)},*{chr(97 + k)},*{chr(97 + k)},*{chr(97 + k)},*{chr(97 + k)},"
        f"*{chr(97 + k)}]\n" for k in range(8))
    configs = {"alias bomb in a section": "data:\n" + "".join(
        f"  {line}\n" for line in bomb.splitlines()),
        "alias bomb at top level": bomb,
        "duplicate key": "train:\n  epochs: 1\n  epochs: 2\n",
        "top-level list": "- 1\n- 2\n",
        "1 MB config": "train:\n  monitor: " + "x" * (1 << 20) + "\n",
        "500 KB value echoed in an error": "train:\n  epochs: " + "x" * 500_000 + "\n"}
    classes["YAML configs"] = []
    for name, text in configs.items():
        path = work / f"{name.replace(' ', '_')}.yaml"
        path.write_text(text)
        classes["YAML configs"].append(
            (name, _probe(["train", "--config", str(path), "--run", str(work / f"r_{path.stem}")])))
    classes["YAML configs"].append(
        ("alias in --set", _probe(["train", "--run", str(work / "r_set"), "--set",
                                   "train.epochs=&a [*a]"])))
    # Volume bombs
    classes["volume bombs"] = [
        ("predict a 255 KB .nii.gz of 640³ zeros",
         _probe(["predict", str(_volume_bomb(work / "bomb.nii.gz")), "--model", str(model)])),
    ]
    # Slow clients against the demo (in this process)
    demo = _demo_slow_clients(work, model)
    # Oversize REST answers
    classes["oversize REST answers"] = []
    for mode, name in (("length", "2 GB Content-Length"), ("chunked", "endless chunked body")):
        server = _OversizeServer(mode)
        try:
            classes["oversize REST answers"].append(
                (name, _probe(["predict", good_png, "--server", server.url, "--model-name",
                         "classifier", "--timeout", "60"])))
        finally:
            server.close()
    # Damaged run files
    classes["damaged run files"] = _damaged_runs(work / "runs")

    figures = {}
    print("\n| class | probes | hangs | tracebacks | peak RSS (MiB) | slowest (s) |")
    print("|---|---|---|---|---|---|")
    for name, probes in classes.items():
        results = [result for _, result in probes]
        row = {"tried": len(results), "hangs": sum(r["hung"] for r in results),
               "tracebacks": sum(r["traceback"] for r in results),
               "peak_mib": max(r["peak_mib"] for r in results),
               "slowest_seconds": max(r["seconds"] for r in results),
               "probes": {probe: result for probe, result in probes}}
        if name == "damaged run files":
            row["same_weights_after_rerun"] = sum(r.get("same_weights", False) for r in results)
        figures[name] = row
        print(f"| {name} | {row['tried']} | {row['hangs']} | {row['tracebacks']} | "
              f"{row['peak_mib']} | {row['slowest_seconds']} |")
        for probe, result in probes:
            if result["hung"] or result["traceback"]:
                print(f"  {probe}: {'HUNG' if result['hung'] else 'TRACEBACK'}: "
                      f"{result['last_line']}")
    figures["slow clients against the demo"] = demo
    print(f"| slow clients against the demo | {demo['tried']} | {demo['hangs']} | 0 | "
          f"{demo['peak_mib']} (the campaign process) | {demo['note']} |", flush=True)
    return {"hostile_inputs": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="Also write the figures here as JSON.")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--skip-kills", action="store_true", help="Skip part 1 (the slow one).")
    parser.add_argument("--only", choices=["new"], default=None,
                        help="new: part 5 alone (issue 30's classes of hostile input).")
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="reliability-") as work:
        work = Path(work)
        parts = [("odd files", lambda: odd_files(work / "odd")),
                 ("COCO variants", lambda: coco_variants(work / "coco")),
                 ("serving", lambda: serving(work / "serving", args.requests)),
                 ("hostile inputs", lambda: hostile_inputs(work / "hostile")),
                 ("kill points", None if args.skip_kills else
                  lambda: kill_points(work / "kills"))]
        for name, part in parts:
            if part is None or (args.only == "new" and name != "hostile inputs"):
                continue
            start = time.perf_counter()
            figures.update(part())
            print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print("\n| figure | value |\n|---|---|")
    for key, value in figures.items():
        if key != "hostile_inputs":
            print(f"| {key} | {value} |")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
