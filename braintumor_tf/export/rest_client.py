"""Client for TF Serving's REST predict API, on the standard library and numpy only.

Deployers can copy this one file next to their own code. Request (row format, one named
input ``images``, binary values as base64)::

    POST /v1/models/NAME[/versions/N]:predict
    {"signature_name": "serving_default", "instances": [{"b64": "..."}, ...]}

Response for several named outputs: ``{"predictions": [{"probabilities": [...],
"class_id": 2, "class_name": "notumor"}, ...]}`` from the classifier, ``{"predictions":
[{"mask_probability": [[[p], ...], ...], "mask": [[[0], ...], ...]}]}`` (at the image's size) from
the segmenter; on failure ``{"error": "..."}``. The segmenter stacks the masks of one request into
one tensor, so images of different sizes go one per request (``predict_files`` does this).

Nothing here trusts the server or the files: an answer is read up to ``max_response_bytes()``
($BRAINTUMOR_TF_MAX_RESPONSE_BYTES, 64 MB) and checked (probabilities in [0, 1] summing to 1,
a class id among them, 0/1 masks), an input file is read only if it is a regular file no larger
than ``max_file_bytes()`` ($BRAINTUMOR_TF_MAX_FILE_BYTES, 512 MB). Images the SavedModel's graph
does not decode as the Python loaders do (DICOM, TIFF, 16-bit PNG, WebP...) are decoded here by
``braintumor_tf.data.decode`` and sent as 8-bit PNG (``servable_bytes``); a copy of this file
without the package sends them as they are.
"""

from __future__ import annotations

import base64
import errno
import http.client
import json
import os
import socket
import stat
import threading
import urllib.parse
from collections.abc import Callable, Sequence

import numpy as np

from braintumor_tf.machine import environment_limit

MAX_RESPONSE_BYTES_VARIABLE = "BRAINTUMOR_TF_MAX_RESPONSE_BYTES"
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_FILE_BYTES_VARIABLE = "BRAINTUMOR_TF_MAX_FILE_BYTES"  # as data.filesystem reads it
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
_PROBABILITY_SLACK = 1e-2  # float16 models round; a softmax still sums to 1 within this
# What the SavedModel decodes itself exactly as data.decode does: JPEG, BMP, GIF, 8-bit PNG.
_SENT_AS_IS = (b"\xff\xd8\xff", b"BM", b"GIF8")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ServingError(RuntimeError):
    """One request failed: a bad image, a malformed or late answer. Other requests may work."""


class ServerUnavailable(ServingError, ConnectionError):
    """No request can work: the server cannot be reached, or it does not serve this model.
    (A ConnectionError too, so the CLI reports it in one line like other environment errors.)"""


def _byte_limit(variable: str, default: int) -> int:
    return environment_limit(variable, default, "bytes")


def max_response_bytes() -> int:
    """The largest answer read: $BRAINTUMOR_TF_MAX_RESPONSE_BYTES, else 64 MB."""
    return _byte_limit(MAX_RESPONSE_BYTES_VARIABLE, DEFAULT_MAX_RESPONSE_BYTES)


def max_file_bytes() -> int:
    """The largest input file read: $BRAINTUMOR_TF_MAX_FILE_BYTES, else 512 MB."""
    return _byte_limit(MAX_FILE_BYTES_VARIABLE, DEFAULT_MAX_FILE_BYTES)


def predict_url(server: str, model_name: str, version: int | None = None) -> str:
    """``http(s)://host[:port]/v1/models/NAME[/versions/N]:predict``, the name escaped; any other
    scheme (``file://``, ...) or a URL without a host is a ServerUnavailable, in one line."""
    base = server.strip()
    if "://" not in base:
        base = "http://" + base
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise ServerUnavailable(f"--server {server[:200]!r} is not a valid URL: {error}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ServerUnavailable(f"--server must be an http:// or https:// address with a host, "
                                f"e.g. http://localhost:8501; got {server[:200]!r}")
    base = base.rstrip("/")
    suffix = f"/versions/{int(version)}" if version is not None else ""
    return f"{base}/v1/models/{urllib.parse.quote(str(model_name), safe='')}{suffix}:predict"


def predict_encoded(
    server: str,
    model_name: str,
    images: Sequence[bytes],
    signature_name: str = "serving_default",
    version: int | None = None,
    timeout: float = 60.0,
) -> list[dict]:
    """One request for all ``images``; TF Serving fails the whole batch if one image is bad.

    ``timeout`` is a deadline for the whole request (connect, send, every byte of the answer):
    a server that drips its answer is cut off at the deadline, not after each slow read.
    """
    body = json.dumps({
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in images],
    }).encode("utf-8")
    url = urllib.parse.urlsplit(predict_url(server, model_name, version))
    connection_type = (http.client.HTTPSConnection if url.scheme == "https"
                       else http.client.HTTPConnection)
    connection = connection_type(url.hostname, url.port, timeout=timeout)
    opened: list[socket.socket] = []  # the socket, which http.client hands to the response
    fired = threading.Event()
    watchdog = threading.Timer(timeout, _cut_off, [opened, fired])
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            connection.connect()
        except OSError as error:
            raise ServerUnavailable(f"cannot reach {server}: {error.strerror or error}") from None
        opened.append(connection.sock)
        connection.request("POST", url.path, body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        status, reason, raw = response.status, response.reason, _read_capped(response, server)
    except (ServerUnavailable, _TooLarge):
        raise
    except (OSError, http.client.HTTPException) as error:
        if fired.is_set():
            raise ServingError(f"no complete answer from {server} within {timeout:g} s "
                               "(--timeout)") from None
        raise ServingError(f"the connection to {server} broke: {error}") from None
    finally:
        watchdog.cancel()
        connection.close()
    payload = _json_or_none(raw)
    if status != 200:
        detail = payload.get("error", "") if isinstance(payload, dict) else ""
        message = f"HTTP {status}: {detail or reason}"
        if status == 404:  # unknown model or version: no other request will do better
            raise ServerUnavailable(f"{message} (is --model-name right?)")
        raise ServingError(message)
    if not isinstance(payload, dict):
        shown = raw[:120].decode("utf-8", "replace")
        raise ServingError(f"the server's answer is not a JSON object: {shown!r}")
    if "error" in payload:
        raise ServingError(str(payload["error"]))
    predictions = payload.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(images):
        raise ServingError(f"unexpected response: expected {len(images)} predictions, got {payload!r:.200}")
    return [_parse_prediction(item) for item in predictions]


class _TooLarge(ServingError):
    pass


def _read_capped(response, server: str) -> bytes:
    """The body, refused at once if its Content-Length is over the cap, and cut off when more
    arrives than the cap (a chunked or lying answer): never more than the cap in memory."""
    limit = max_response_bytes()
    message = (f"the answer from {server} is larger than {limit} bytes; refused (raise "
               f"{MAX_RESPONSE_BYTES_VARIABLE} if the model's answers are really that big)")
    declared = response.getheader("Content-Length", "").strip()
    declared_bytes = int(declared) if declared.isdigit() and len(declared) < 30 else None
    if declared_bytes is not None and declared_bytes > limit:
        raise _TooLarge(message)
    raw = response.read(limit + 1)
    if len(raw) > limit:
        raise _TooLarge(message)
    if declared_bytes is not None and len(raw) < declared_bytes:  # read(n) returns what came
        raise http.client.IncompleteRead(raw, declared_bytes - len(raw))
    return raw


def _cut_off(opened: list, fired: threading.Event) -> None:
    """At the deadline: shut the socket so the blocked read in the other thread returns."""
    fired.set()
    for sock in opened:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _json_or_none(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _parse_prediction(item) -> dict:
    """Classifier rows become ``{"task": "classification", probabilities, class_id, class_name}``,
    segmenter rows ``{"task": "segmentation", "mask": uint8 [H, W], "mask_probability": [H, W]}``.
    Anything a real model cannot answer (a class id out of range, probabilities outside [0, 1] or
    not summing to 1, a mask not 0/1) is a ServingError for that input."""
    try:
        if isinstance(item, dict) and "probabilities" in item:
            return _parse_classification(item)
        if isinstance(item, dict) and "mask" in item:
            return _parse_segmentation(item)
    except (ValueError, TypeError, OverflowError) as error:  # ragged lists, strings, huge ints
        raise ServingError(f"unexpected prediction: {str(error)[:200]}") from None
    raise ServingError("unexpected prediction: expected a classifier's 'probabilities' or a "
                       f"segmenter's 'mask', got {item!r:.200}")


def _parse_classification(item: dict) -> dict:
    shown = f"{item['probabilities']!r:.200}"
    probabilities = np.asarray(item["probabilities"], np.float64)
    if probabilities.ndim != 1 or probabilities.size < 2:
        raise ServingError(f"unexpected probabilities (not a list of 2 or more numbers): {shown}")
    if not np.all(np.isfinite(probabilities)):
        raise ServingError(f"unexpected probabilities (not finite numbers): {shown}")
    if probabilities.min() < -_PROBABILITY_SLACK or probabilities.max() > 1 + _PROBABILITY_SLACK \
            or abs(probabilities.sum() - 1.0) > _PROBABILITY_SLACK:
        raise ServingError(f"unexpected probabilities (not between 0 and 1 with a sum of 1): {shown}")
    class_id = item.get("class_id", int(probabilities.argmax()))
    if isinstance(class_id, bool) or not isinstance(class_id, int | np.integer) \
            or not 0 <= class_id < probabilities.size:
        raise ServingError(f"unexpected class_id {class_id!r:.40} for {probabilities.size} "
                           "probabilities")
    row = {"task": "classification", "probabilities": np.clip(probabilities, 0, 1).astype(np.float32),
           "class_id": int(class_id), "class_name": str(item.get("class_name", class_id))[:200]}
    if "ood_score" in item:  # a guarded classifier (models.guard)
        score, inside = item["ood_score"], item.get("in_distribution", True)
        if isinstance(score, bool) or not isinstance(score, int | float) or not isinstance(inside, bool):
            raise ServingError(f"unexpected ood_score {score!r:.40} / in_distribution {inside!r:.40}")
        row["ood_score"], row["in_distribution"] = float(score), inside
    return row


def _parse_segmentation(item: dict) -> dict:
    raw_mask = np.asarray(item["mask"], np.float64)
    probability = np.asarray(item.get("mask_probability", raw_mask), np.float32)
    if raw_mask.shape != probability.shape:
        raise ServingError(f"unexpected mask_probability: shape {probability.shape}, mask "
                           f"{raw_mask.shape}")
    if not np.all(np.isfinite(probability)):
        raise ServingError("unexpected mask_probability: not finite numbers")
    if probability.size and (probability.min() < 0 or probability.max() > 1):
        raise ServingError("unexpected mask_probability: not between 0 and 1")
    if not np.all((raw_mask == 0) | (raw_mask == 1)):
        raise ServingError("unexpected mask: values other than 0 and 1")
    mask = raw_mask.astype(np.uint8)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask, probability = mask[..., 0], probability[..., 0]
    if mask.ndim != 2 or min(mask.shape) == 0:
        raise ServingError(f"unexpected mask: expected [H, W, 1], got shape {mask.shape}")
    return {"task": "segmentation", "mask": mask, "mask_probability": probability}


def _predict_one(server, model_name, data: bytes, kwargs) -> dict:
    try:
        return predict_encoded(server, model_name, [data], **kwargs)[0]
    except ServerUnavailable:
        raise
    except ServingError as error:
        return {"error": str(error)}


def _read_local(path: str | os.PathLike) -> bytes:
    """A regular file's bytes, refused unread when larger than ``max_file_bytes()``: a FIFO, a
    device (/dev/zero) or a 3 GB sparse file named .jpg costs nothing. The open does not block
    (O_NONBLOCK) and the opened file is the one checked (fstat)."""
    limit = max_file_bytes()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device, socket or folder); "
                                        "not read", os.fspath(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, over the {limit}-byte limit "
                                       f"({MAX_FILE_BYTES_VARIABLE}); not read", os.fspath(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise OSError(errno.EFBIG, f"over the {limit}-byte limit ({MAX_FILE_BYTES_VARIABLE}); "
                                   "not read", os.fspath(path))
    return data


def needs_conversion(data: bytes) -> bool:
    """False for what the SavedModel decodes as the Python loaders do (JPEG, BMP, GIF, 8-bit
    PNG); True for the rest (DICOM, TIFF, 16-bit PNG, WebP, ...), which TF Serving answers with
    HTTP 400 or decodes differently."""
    if data.startswith(_SENT_AS_IS):
        return False
    if data.startswith(_PNG_SIGNATURE):
        return data[24:25] == b"\x10"  # IHDR bit depth
    return True


def servable_bytes(data: bytes, name: str = "<bytes>") -> bytes:
    """``data`` as TF Serving should get it: unchanged when the model decodes it itself, else
    decoded by the package's own loader (braintumor_tf.data.decode: DICOM, TIFF, 16-bit stretch)
    and sent as an 8-bit PNG. ValueError (data.decode.DecodeError) for a file that loader cannot
    read. Without the package (this file copied alone) the bytes go as they are."""
    if not needs_conversion(data):
        return data
    try:
        from braintumor_tf.data.decode import encode_png8
    except ImportError:
        return data
    return encode_png8(data, name)


def predict_files(
    server: str,
    model_name: str,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 16,
    read_file: Callable[[str | os.PathLike], bytes] | None = None,
    convert: Callable[[bytes, str], bytes] | None = servable_bytes,
    **kwargs,
) -> list[dict]:
    """One result per path, in order: a prediction, or ``{"error": ...}`` for that file only.
    ``read_file`` (default: the local file's bytes, regular files up to ``max_file_bytes()``) may
    fetch from elsewhere; an OSError it raises is that file's error. ``convert`` turns each file's
    bytes into what is sent (default ``servable_bytes``; None sends them as read); a ValueError it
    raises is that file's error. Files are read one request at a time, not all up front.

    A failed batch is retried one file at a time, so a single broken upload costs its own
    prediction and nothing else. The first file goes alone: if the model answers with a mask
    (a segmenter), the rest go one per request too, as masks of different sizes cannot share one.
    A classifier answer with another number of classes than the first one is that file's error.
    """
    predict_url(server, model_name)  # a URL that cannot work fails before any file is read
    results: list[dict | None] = [None] * len(paths)
    classes: int | None = None
    start = 0
    while start < len(paths):
        count = 1 if start == 0 else batch_size
        chunk: list[tuple[int, bytes]] = []
        while start < len(paths) and len(chunk) < count:
            index, start = start, start + 1
            try:
                data = (read_file or _read_local)(paths[index])
                chunk.append((index, data if convert is None else
                              convert(data, os.fspath(paths[index]))))
            except OSError as error:
                results[index] = {"error": f"cannot read file: {error.strerror or error}"}
            except ValueError as error:
                results[index] = {"error": str(error)[:500]}
        if not chunk:
            continue
        try:
            outputs = predict_encoded(server, model_name, [data for _, data in chunk], **kwargs)
        except ServerUnavailable:
            raise
        except ServingError as error:
            outputs = [{"error": str(error)}] if len(chunk) == 1 else \
                [_predict_one(server, model_name, data, kwargs) for _, data in chunk]
        for (index, _), output in zip(chunk, outputs, strict=True):
            if output.get("task") == "classification":
                found = len(output["probabilities"])
                classes = found if classes is None else classes
                if found != classes:
                    output = {"error": f"unexpected probabilities: {found} classes, where the "
                                       f"model's other answers have {classes}"}
            results[index] = output
        if any(output.get("task") == "segmentation" for output in outputs):
            batch_size = 1
    return results  # type: ignore[return-value]
