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
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Sequence

import numpy as np


class ServingError(RuntimeError):
    """One request failed: a bad image, a malformed or late answer. Other requests may work."""


class ServerUnavailable(ServingError, ConnectionError):
    """No request can work: the server cannot be reached, or it does not serve this model.
    (A ConnectionError too, so the CLI reports it in one line like other environment errors.)"""


def predict_url(server: str, model_name: str, version: int | None = None) -> str:
    base = server.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    suffix = f"/versions/{int(version)}" if version is not None else ""
    return f"{base}/v1/models/{model_name}{suffix}:predict"


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
        status, reason, raw = response.status, response.reason, response.read()
    except ServerUnavailable:
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
    segmenter rows ``{"task": "segmentation", "mask": uint8 [H, W], "mask_probability": [H, W]}``."""
    if isinstance(item, dict) and "probabilities" in item:
        probabilities = np.asarray(item["probabilities"], np.float32)
        if probabilities.ndim != 1 or not np.all(np.isfinite(probabilities)):
            raise ServingError("unexpected probabilities (not finite numbers): "
                               f"{item['probabilities']!r:.200}")
        class_id = int(item.get("class_id", int(probabilities.argmax())))
        row = {"task": "classification", "probabilities": probabilities, "class_id": class_id,
               "class_name": str(item.get("class_name", class_id))}
        if "ood_score" in item:  # a guarded classifier (models.guard)
            row["ood_score"] = float(item["ood_score"])
            row["in_distribution"] = bool(item.get("in_distribution", True))
        return row
    if isinstance(item, dict) and "mask" in item:
        mask = np.asarray(item["mask"], np.uint8)
        probability = np.asarray(item.get("mask_probability", mask), np.float32)
        if not np.all(np.isfinite(probability)):
            raise ServingError("unexpected mask_probability: not finite numbers")
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask, probability = mask[..., 0], probability[..., 0]
        if mask.ndim != 2:
            raise ServingError(f"unexpected mask: expected [H, W, 1], got shape {mask.shape}")
        return {"task": "segmentation", "mask": mask, "mask_probability": probability}
    raise ServingError("unexpected prediction: expected a classifier's 'probabilities' or a "
                       f"segmenter's 'mask', got {item!r:.200}")


def _predict_one(server, model_name, data: bytes, kwargs) -> dict:
    try:
        return predict_encoded(server, model_name, [data], **kwargs)[0]
    except ServerUnavailable:
        raise
    except ServingError as error:
        return {"error": str(error)}


def _read_local(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def predict_files(
    server: str,
    model_name: str,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 16,
    read_file: Callable[[str | os.PathLike], bytes] | None = None,
    **kwargs,
) -> list[dict]:
    """One result per path, in order: a prediction, or ``{"error": ...}`` for that file only.
    ``read_file`` (default: the local file's bytes) may fetch from elsewhere; an OSError it
    raises is that file's error.

    A failed batch is retried one file at a time, so a single broken upload costs its own
    prediction and nothing else. The first file goes alone: if the model answers with a mask
    (a segmenter), the rest go one per request too, as masks of different sizes cannot share one.
    """
    results: list[dict | None] = [None] * len(paths)
    blobs: list[tuple[int, bytes]] = []
    for index, path in enumerate(paths):
        try:
            blobs.append((index, (read_file or _read_local)(path)))
        except OSError as error:
            results[index] = {"error": f"cannot read file: {error.strerror or error}"}
    start = 0
    while start < len(blobs):
        chunk = blobs[start:start + (1 if start == 0 else batch_size)]
        start += len(chunk)
        try:
            outputs = predict_encoded(server, model_name, [data for _, data in chunk], **kwargs)
        except ServerUnavailable:
            raise
        except ServingError as error:
            outputs = [{"error": str(error)}] if len(chunk) == 1 else \
                [_predict_one(server, model_name, data, kwargs) for _, data in chunk]
        for (index, _), output in zip(chunk, outputs, strict=True):
            results[index] = output
        if any(output.get("task") == "segmentation" for output in outputs):
            batch_size = 1
    return results  # type: ignore[return-value]
